"""WebDataset shards of synthetic images, plus the `index.parquet` that lists them.

Keys contain no dots (the WebDataset reader splits extensions at the first dot). Tars are
written with a fixed mtime, so the same inputs give the same bytes, and each shard appears
under its final name only once complete.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
import webdataset as wds

SHARD_PATTERN = "shard-{:06d}.tar"
FIXED_MTIME = 0.0


def write_shard(out_dir: Path, name: str, samples: Iterable[Mapping], image_ext: str) -> list[dict]:
    """Write one tar atomically from samples (`key`, `image` bytes, `label`, `meta`)."""
    tmp = out_dir / f".{name}.tmp"
    rows = []
    with open(tmp, "wb") as f, wds.TarWriter(f, mtime=FIXED_MTIME) as sink:
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
    tmp.replace(out_dir / name)
    return rows


def write_shards(
    out_dir: str | Path, samples: Iterable[Mapping], shard_size: int, image_ext: str
) -> pd.DataFrame:
    """Write samples in order into tars of `shard_size`; return the index."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = list(samples)
    rows: list[dict] = []
    for number, start in enumerate(range(0, len(samples), shard_size)):
        chunk = samples[start : start + shard_size]
        rows += write_shard(out_dir, SHARD_PATTERN.format(number), chunk, image_ext)
    return pd.DataFrame(rows)


def write_index(index: pd.DataFrame, path: str | Path) -> None:
    """Write index.parquet atomically: it marks the synthetic set complete."""
    path = Path(path)
    tmp = path.with_name("." + path.name + ".tmp")
    index.to_parquet(tmp, index=False)
    tmp.replace(path)


def read_images(index_path: str | Path) -> dict[str, tuple[bytes, int]]:
    """Read every sample of a synthetic set with webdataset: key -> (image bytes, label)."""
    index_path = Path(index_path)
    index = pd.read_parquet(index_path)
    index = index[index["shard"].notna()]
    if index.empty:
        return {}
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
