"""Filters: which of a synthetic set's images a run draws, selected by their scores.

A filter is a read-time selection over a set's scores (`dafusion.stages.scoring`): a new
filter, or a changed threshold, reads the same set and the same scores, and changes only
the runs that draw from them. `FilterSettings` is a method's `filter:` entry:

- `by`: the scorer whose table is read, `classifier`, `clip` or `change`;
- thresholds, each kept image passing every one given: `min_confidence` and
  `max_confidence` (by classifier, its softmax probability of the image's label),
  `require_top1` (by classifier: its top-1 label is the image's label), `min_clip_score`
  (by clip), `min_change` and `max_change` (by change);
- `keep_top`: a fraction in (0, 1] of each class's candidate images, those of the highest
  score (confidence, CLIP score, or change: the images that moved farthest), ties broken by
  key; a class of n candidates keeps ceil(fraction * n). Per class, not over the whole set,
  so that no class loses all its synthetic images to a class the scorer favours.

The candidates are the images the run would draw without a filter (`mixing.kept_variants`:
its first M variants of each real image, less the safety checker's drops). An image is
kept when it passes every criterion; `keep_top` counts the class's candidates, not what
the thresholds leave. A NaN score passes no threshold and ranks last. A real image whose
candidates are all filtered out is drawn as real, as one without variants
(`Selection.emptied` lists them). The thresholds are meant to be chosen a priori (say 0.5
confidence), never tuned on validation accuracy.

`FilterSettings` and the criteria live in `dafusion.settings` (a method's `filter:` is
checked when the workflow starts); they are re-exported here.

Importing this module needs pandas and pyarrow only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..settings import FILTER_CRITERIA as CRITERIA
from ..settings import FILTER_THRESHOLDS as THRESHOLDS
from ..settings import FilterSettings
from .scoring import scorer

__all__ = ["CRITERIA", "THRESHOLDS", "FilterSettings", "Selection", "as_filter", "select"]


def as_filter(value: FilterSettings | Mapping[str, Any] | None) -> FilterSettings | None:
    """A filter from a `filter:` mapping (or one already made); None for no filter."""
    if value is None or isinstance(value, FilterSettings):
        return value
    known = {f.name for f in dataclasses.fields(FilterSettings)}
    unknown = sorted(set(value) - known)
    if unknown or "by" not in value:
        problem = f"unknown key {unknown[0]}" if unknown else "no key by"
        raise ValueError(f"filter {dict(value)}: {problem} (its keys: {', '.join(known)})")
    return FilterSettings(**value)


@dataclass(frozen=True)
class Selection:
    """What a filter keeps of a run's candidates: `rows`, the kept rows of the set's index
    renumbered from 0 (as `draw_batch`'s positions count them), and `candidates`, the rows
    before the filter (the same frame when there is no filter)."""

    rows: pd.DataFrame
    candidates: pd.DataFrame
    filter: FilterSettings | None = None

    @property
    def emptied(self) -> list[str]:
        """The real images (source keys) that had candidates and kept none: drawn as real."""
        before = set(self.candidates["source_key"])
        return sorted(before - set(self.rows["source_key"]))

    def per_class(self) -> pd.DataFrame:
        """Per class (label, class_name): candidates, kept, their ratio (`keep_rate`), and
        how many real images the filter emptied."""
        emptied = set(self.emptied)
        groups = self.candidates.groupby(["label", "class_name"], sort=True)
        frame = groups.agg(
            candidates=("key", "size"),
            emptied=("source_key", lambda s: len(set(s) & emptied)),
        ).reset_index()
        kept = self.rows.groupby("label").size()
        frame.insert(3, "kept", frame["label"].map(kept).fillna(0).astype("int64"))
        frame["keep_rate"] = frame["kept"] / frame["candidates"]
        return frame[["label", "class_name", "candidates", "kept", "keep_rate", "emptied"]]


def select(
    candidates: pd.DataFrame,
    scores: pd.DataFrame | None,
    spec: FilterSettings | Mapping[str, Any] | None,
    where: str = "the scores",
) -> Selection:
    """The rows of `candidates` (a run's rows of a set's index, `mixing.kept_variants`) that
    filter `spec` keeps, given the set's `scores` of `spec.by` (`key` plus its columns; at
    least every candidate). No filter keeps every candidate, the frame unchanged. `where`
    names the scores in errors (their file)."""
    spec = as_filter(spec)
    if spec is None:
        return Selection(candidates, candidates, None)
    if scores is None:
        raise ValueError(f"a filter by {spec.by} needs the set's {spec.by} scores")
    columns = list(scorer(spec.by).columns)
    missing = [c for c in ["key", *columns] if c not in scores.columns]
    if missing:
        raise ValueError(f"{where}: no column {', '.join(missing)} of the {spec.by} scores")
    if scores["key"].duplicated().any():
        raise ValueError(f"{where}: a key is scored twice")
    merged = candidates[["key", "label"]].merge(
        scores[["key", *columns]], on="key", how="left", indicator=True
    )
    unscored = merged.loc[merged["_merge"] != "both", "key"].tolist()
    if unscored:
        raise ValueError(
            f"{where} hold no score for {len(unscored)} of the set's images ('{unscored[0]}'): "
            "they are not the scores of this set; make them again"
        )
    keep = pd.Series(True, index=merged.index)
    for key, value in spec.criteria().items():
        if key in THRESHOLDS:
            column, lower, _ = THRESHOLDS[key]
            keep &= merged[column] >= value if lower else merged[column] <= value
        elif key == "require_top1":
            keep &= merged["top1"] == merged["label"]
    if spec.keep_top is not None:
        keep &= _top(merged, scorer(spec.by).rank_by, spec.keep_top)
    rows = candidates[keep.to_numpy()].reset_index(drop=True)
    return Selection(rows, candidates, spec)


def _top(frame: pd.DataFrame, column: str, fraction: float) -> pd.Series:
    """Whether each row is among the ceil(fraction * n) highest of its class (label) by
    `column`, ties by key, NaN last."""
    order = frame.sort_values([column, "key"], ascending=[False, True], na_position="last")
    rank = order.groupby("label").cumcount()
    size = order.groupby("label")["key"].transform("size")
    # ceil, less a rounding margin: 0.7 * 10 is 7.000000000000001 in floating point
    quota = (fraction * size - 1e-9).map(math.ceil)
    return (rank < quota).reindex(frame.index)
