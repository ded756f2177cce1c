"""WebDataset shards of synthetic images, plus the `index.parquet` that lists them.

Keys contain no dots (the WebDataset reader splits extensions at the first dot). Tars are
written with a fixed mtime, so the same inputs give the same bytes, with members of mode 0644
(`tar x` gives ordinary writable files), and each shard appears under its final name only
once complete. Each shard's sha256 and size go into its index rows when it is written, and
every reader checks a shard against them before opening it (`verify_shards`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow.parquet as pq

from ..jobs.integrity import IntegrityError, file_digest, mismatch, rerun
from ..jobs.io import atomic_path

if TYPE_CHECKING:
    from PIL import Image

SHARD_PATTERN = "shard-{:06d}.tar"
# A set's index, beside its shards (`paths.SYNTHETIC`).
INDEX = "index.parquet"
FIXED_MTIME = 0.0


def write_shard(out_dir: Path, name: str, samples: Iterable[Mapping], image_ext: str) -> list[dict]:
    """Write one tar atomically from samples (`key`, `image` bytes, `label`, `meta`).

    Returns the shard's index rows, with the sha256 and size of the shard as written.
    """
    import webdataset as wds  # it imports torch: only jobs that run a model load it

    rows = []
    with atomic_path(out_dir / name) as tmp:
        with open(tmp, "wb") as f, wds.TarWriter(f, mtime=FIXED_MTIME, mode=0o644) as sink:
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
        sha256, size = file_digest(tmp)  # just written: read back from the page cache
    return [{**row, "shard_sha256": sha256, "shard_bytes": size} for row in rows]


def verify_shards(index_path: str | Path, shards: Iterable[str]) -> None:
    """Check each of `shards` (names in the folder of `index_path`) before it is read: it
    must be there, with the size and sha256 the set's index recorded when it was written
    (size first: a truncated shard is told without reading it). A damaged shard would
    otherwise fail deep in a tar reader, or feed other images to a classifier. Shards of an
    index without digests (of an earlier version) are checked for being there only.
    """
    index_path = Path(index_path)
    recorded: dict[str, tuple[str, int]] = {}
    if "shard_sha256" in pq.read_schema(index_path).names:
        digests = pd.read_parquet(index_path, columns=["shard", "shard_sha256", "shard_bytes"])
        for row in digests.dropna().drop_duplicates("shard").itertuples(index=False):
            recorded[row.shard] = (row.shard_sha256, int(row.shard_bytes))
    for name in sorted(set(shards)):
        path = index_path.parent / name
        if name in recorded:
            problem = mismatch(path, *recorded[name])
        else:
            problem = None if path.is_file() else "it is missing"
        if problem is not None:
            raise IntegrityError(
                f"shard '{path}' is not the one its set's index '{index_path}' lists ({problem}). "
                f"Make the set again: {rerun(index_path)}"
            )


def read_images(index_path: str | Path) -> dict[str, tuple[bytes, int]]:
    """Read every sample of a synthetic set with webdataset: key -> (image bytes, label),
    each shard checked first (`verify_shards`)."""
    index_path = Path(index_path)
    index = pd.read_parquet(index_path)
    index = index[index["shard"].notna()]
    if index.empty:
        return {}
    import webdataset as wds

    verify_shards(index_path, index["shard"])
    urls = [str(index_path.parent / s) for s in sorted(index["shard"].unique())]
    out = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        ext = next(e for e in ("png", "webp", "jpg") if e in sample)
        out[sample["__key__"]] = (sample[ext], int(sample["cls"]))
    return out


def encode_image(image: Image.Image, fmt: str) -> bytes:
    """Lossless PNG or WebP by default; JPEG at quality 95 when asked for."""
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG")
    elif fmt == "webp":
        image.save(buf, format="WEBP", lossless=True)
    else:
        image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()
