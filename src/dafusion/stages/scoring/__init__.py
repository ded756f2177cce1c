"""Per-image scores of a synthetic set, kept beside it: `scores-{scorer}.parquet`.

A scorer reads one set (its `index.parquet` and shards) and gives one row per image the set
holds: `key` (the image's key in the index) plus the scorer's columns (`SCORERS`). An image
the safety checker dropped has no shard, so it has no row: no run ever draws it
(`mixing.kept_variants`), and a filter never needs its score. The scores cover every
variant the set holds; a run of M' < M variants reads the rows of its own.

One module per scorer, each with a `score(index_path, ...)` that returns the table, which
`write_scores` writes atomically:

- `classifier`: the baseline run of the same dataset, seed and shots (trained on the real
  few-shot split only, its final step) scores each image: `confidence`, its softmax
  probability of the image's label, and `top1`, the label it predicts;
- `clip`: the cosine similarity of the image's and the class prompt's CLIP embeddings,
  under a CLIP model the user names: `clip_score`, in [-1, 1];
- `change`: the mean absolute pixel difference in [0, 1] between the image and its source
  image, both resized to `CHANGE_SIZE` pixels square: `change`.

No leakage: a scorer reads only the set, the real few-shot split the set was made from,
what the run of the baseline method learned from that split, and a CLIP model the user
names; never a validation or test image, nor the reference digit classifier.

This module imports no torch and none of the scorers (a job imports the one it runs, so
that its code fingerprint holds that scorer alone). What the scorers read besides a set
is `dafusion.settings.ScoringSettings`, the config's `scoring:` section.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from ...jobs.io import write_parquet

# A set's scores, beside its index (`paths.SYNTHETIC`): scores-{scorer}.parquet.
SCORES_PATTERN = "scores-{scorer}.parquet"
# The scores file's schema metadata: the scorer and what its values depend on, as JSON.
SCORES_KEY = "dafusion.scores"
# `change` compares images at this size (pixels, square), whatever the set's resolution.
CHANGE_SIZE = 64


@dataclass(frozen=True)
class Scorer:
    """A scorer's name, its columns (besides `key`) with their arrow types, and the column a
    filter's `keep_top` ranks by (highest first)."""

    name: str
    columns: Mapping[str, pa.DataType]
    rank_by: str
    description: str

    def schema(self) -> pa.Schema:
        fields = [pa.field("key", pa.string(), nullable=False)]
        fields += [pa.field(name, kind, nullable=False) for name, kind in self.columns.items()]
        return pa.schema(fields)


# The scorers, in the order of `dafusion.settings.SCORER_NAMES` (tested).
SCORERS: dict[str, Scorer] = {
    scorer.name: scorer
    for scorer in (
        Scorer(
            "classifier",
            {"confidence": pa.float64(), "top1": pa.int64()},
            "confidence",
            "the baseline run's softmax probability of the image's label, and its top-1 label",
        ),
        Scorer(
            "clip",
            {"clip_score": pa.float64()},
            "clip_score",
            "cosine similarity of the image and its class prompt under a CLIP model",
        ),
        Scorer(
            "change",
            {"change": pa.float64()},
            "change",
            f"mean absolute pixel difference from the source image at {CHANGE_SIZE} px, in [0, 1]",
        ),
    )
}


def scorer(name: str) -> Scorer:
    """The scorer called `name`, or an error that lists the scorers."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer '{name}': one of {', '.join(SCORERS)}")
    return SCORERS[name]


def scores_path(index_path: str | Path, name: str) -> Path:
    """Where the scores of `name` lie for the set of `index_path`: beside it."""
    return Path(index_path).parent / SCORES_PATTERN.format(scorer=scorer(name).name)


def write_scores(
    frame: pd.DataFrame, path: str | Path, name: str, recipe: Mapping | None = None
) -> None:
    """Write a scorer's table atomically, in key order, in exactly its schema, recording
    the scorer and `recipe` (what its values depend on) in the file's metadata."""
    spec = scorer(name)
    frame = frame.sort_values("key").reset_index(drop=True)
    if frame["key"].duplicated().any():
        raise ValueError(f"cannot write {path}: a key is scored twice")
    metadata = {SCORES_KEY: json.dumps({"scorer": name, **(recipe or {})}, sort_keys=True)}
    write_parquet(frame, path, spec.schema(), metadata=metadata)


def read_scores(path: str | Path, name: str) -> pd.DataFrame:
    """A scores table, checked to hold the columns of scorer `name`."""
    frame = pd.read_parquet(path)
    missing = [c for c in ["key", *scorer(name).columns] if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path} is not a table of {name} scores (no column {', '.join(missing)}): "
            "delete it and make the scores again"
        )
    return frame


def read_set(index_path: str | Path) -> tuple[pd.DataFrame, list[bytes]]:
    """The rows of a set's index that have an image (the safety checker's drops have none),
    in key order, and their encoded images, read from the set's shards (each checked)."""
    from ...data.shards import read_images

    index = pd.read_parquet(index_path)
    rows = index[~index["dropped"]].sort_values("key").reset_index(drop=True)
    images = read_images(index_path)
    missing = [key for key in rows["key"] if key not in images]
    if missing:
        raise ValueError(f"{index_path}: the shards hold no image '{missing[0]}' the index lists")
    return rows, [images[key][0] for key in rows["key"]]
