"""WebDataset shards of synthetic images, plus the `index.parquet` that lists them.

Keys contain no dots (the WebDataset reader splits extensions at the first dot). Tars are
written with a fixed mtime, so the same inputs give the same bytes, with members of mode 0644
(`tar x` gives ordinary writable files), and each shard appears under its final name only
once complete.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from .io import atomic_path

SHARD_PATTERN = "shard-{:06d}.tar"
FIXED_MTIME = 0.0


def write_shard(out_dir: Path, name: str, samples: Iterable[Mapping], image_ext: str) -> list[dict]:
    """Write one tar atomically from samples (`key`, `image` bytes, `label`, `meta`).

    Returns the shard's index rows.
    """
    import webdataset as wds  # it imports torch: only jobs that run a model load it

    rows = []
    with (
        atomic_path(out_dir / name) as tmp,
        open(tmp, "wb") as f,
        wds.TarWriter(f, mtime=FIXED_MTIME, mode=0o644) as sink,
    ):
        for sample in samples:
            if "." in sample["key"]:
                raise ValueError(f"WebDataset key '{sample['key']}' contains a dot")
            sink.write(
                {
                    "__key__": sample["key"],
                    image_ext: sample["image"],
                    "cls": int(sample["label"]),
                    "json": dict(sample["meta"]),
                }
            )
            rows.append({"key": sample["key"], **sample["meta"], "shard": name})
    return rows


def read_images(index_path: str | Path) -> dict[str, tuple[bytes, int]]:
    """Read every sample of a synthetic set with webdataset: key -> (image bytes, label)."""
    index_path = Path(index_path)
    index = pd.read_parquet(index_path)
    index = index[index["shard"].notna()]
    if index.empty:
        return {}
    import webdataset as wds

    urls = [str(index_path.parent / s) for s in sorted(index["shard"].unique())]
    out = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        ext = next(e for e in ("png", "webp", "jpg") if e in sample)
        out[sample["__key__"]] = (sample[ext], int(sample["cls"]))
    return out


def encode_image(image, fmt: str) -> bytes:
    """Lossless PNG or WebP by default; JPEG at quality 95 when asked for."""
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG")
    elif fmt == "webp":
        image.save(buf, format="WEBP", lossless=True)
    else:
        image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()
