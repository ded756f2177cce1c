"""The `change` scorer: how far each synthetic image moved from its source image.

The mean absolute difference of the two images' pixels, both converted to RGB and resized
(bilinear) to `CHANGE_SIZE` pixels square, as fractions of 255: 0 for an unchanged copy, 1
for black against white. The source image is the real image of the row's `source_key` in
the few-shot split the set was made from; the scorer reads no other real image. ALIA's
"too easy" filter drops the edits that change too little to teach anything.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ...data.images import load_image
from ...data.manifest import read_manifest
from . import CHANGE_SIZE, read_set, write_scores


def pixels(image: Image.Image, size: int = CHANGE_SIZE) -> np.ndarray:
    """[size, size, 3] floats in [0, 1]: the image as the scorer compares it."""
    resized = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float64) / 255.0


def score(index_path: str | Path, split: pd.DataFrame | str | Path) -> pd.DataFrame:
    """`key` and `change` of every image of the set of `index_path`; `split`: the few-shot
    split manifest (or its parquet file) the set was made from."""
    if not isinstance(split, pd.DataFrame):
        split = read_manifest(split)
    rows, images = read_set(index_path)
    sources: dict[str, Mapping] = {}
    wanted = set(rows["source_key"])
    for row in split.to_dict("records"):
        if row["key"] in wanted:
            sources[str(row["key"])] = row
    unknown = sorted(wanted - set(sources))
    if unknown:
        raise ValueError(
            f"the set {index_path} holds variants of images that are not in its split "
            f"('{unknown[0]}', {len(unknown)} in all): score it with the split it was made from"
        )
    change = []
    current, reference = None, None  # a source's variants follow each other in key order
    for source, data in zip(rows["source_key"], images, strict=True):
        if source != current:
            current, reference = source, pixels(load_image(sources[source]))
        variant = pixels(Image.open(io.BytesIO(data)))
        change.append(float(np.abs(variant - reference).mean()))
    return pd.DataFrame({"key": rows["key"], "change": change})


def write(
    index_path: str | Path, split: pd.DataFrame | str | Path, output: str | Path
) -> pd.DataFrame:
    """Score the set and write `scores-change.parquet` atomically."""
    frame = score(index_path, split)
    write_scores(frame, output, "change", {"size": CHANGE_SIZE})
    return frame
