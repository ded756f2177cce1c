"""A synthetic set on disk: resumable WebDataset shards plus `index.parquet`.

The plan (every synthetic image, in key order) is cut into shards of `shard_size`. Each
finished shard is renamed into place and gets a small sidecar recording the job's
fingerprint and the shard's index rows, so a rerun after a kill reuses finished shards and
regenerates only the rest; outputs do not depend on where the job stopped. Images are
encoded in worker threads while the generator computes the next batches.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from .generation import Engine
from .io import atomic_path, write_parquet
from .shards import SHARD_PATTERN, encode_image, write_shard

log = logging.getLogger(__name__)

# The index's columns: the key, the `meta` of each image (its shard json), its shard, and
# whether the safety checker dropped it (then without a shard). Explicit types keep an
# index with no rows, or with every image dropped, typed like any other.
INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source_key", pa.string(), nullable=False),
        pa.field("j", pa.int64(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("strength", pa.float64(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("guidance_scale", pa.float64(), nullable=False),
        pa.field("scheduler", pa.string(), nullable=False),
        pa.field("steps", pa.int64(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("token_hash", pa.string(), nullable=False),
        pa.field("erasure", pa.string(), nullable=False),
        pa.field("shard", pa.string()),
        pa.field("dropped", pa.bool_(), nullable=False),
    ]
)


def _sidecar(out_dir: Path, name: str) -> Path:
    return out_dir / f".{name}.json"


def _finished(out_dir: Path, name: str, fingerprint: str) -> list[dict] | None:
    """The index rows of a finished shard of this same job, or None."""
    sidecar = _sidecar(out_dir, name)
    if not (sidecar.exists() and (out_dir / name).exists()):
        return None
    record = json.loads(sidecar.read_text())
    return record["rows"] if record.get("fingerprint") == fingerprint else None


def build(
    engine: Engine,
    work: Sequence[Mapping],
    out_dir: str | Path,
    index_path: str | Path,
    *,
    seed: int,
    shard_size: int,
    image_format: str,
    fingerprint: str,
    meta: Callable[[Mapping], dict],
    workers: int = 2,
    progress: bool = True,
) -> pd.DataFrame:
    """Generate (or reuse) every shard of `work`, then write the index atomically.

    `meta(item)` is an image's shard json: the `INDEX_SCHEMA` columns other than `key`,
    `shard` and `dropped`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = [list(work[i : i + shard_size]) for i in range(0, len(work), shard_size)]
    names = [SHARD_PATTERN.format(n) for n in range(len(shards))]
    for stale in out_dir.glob(SHARD_PATTERN.replace("{:06d}", "*")):
        if stale.name not in names:
            stale.unlink()
            _sidecar(out_dir, stale.name).unlink(missing_ok=True)
    rows: list[dict] = []
    reused = 0
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=len(work), desc="SDEdit", unit="img", disable=not progress) as bar,
    ):
        for name, shard in zip(names, shards, strict=True):
            done = _finished(out_dir, name, fingerprint)
            if done is not None:
                rows += done
                reused += 1
                bar.update(len(shard))
                continue
            encoded, dropped = {}, []
            for item, image in engine.run(shard, seed, bar):
                if image is None:
                    dropped.append(
                        {"key": item["key"], **meta(item), "shard": None, "dropped": True}
                    )
                else:
                    encoded[item["key"]] = (item, pool.submit(encode_image, image, image_format))
            samples = [
                {
                    "key": key,
                    "image": future.result(),
                    "label": meta(item)["label"],
                    "meta": meta(item),
                }
                for key, (item, future) in sorted(encoded.items())
            ]
            shard_rows = [
                {**r, "dropped": False} for r in write_shard(out_dir, name, samples, image_format)
            ]
            shard_rows += dropped
            with atomic_path(_sidecar(out_dir, name)) as tmp:
                tmp.write_text(json.dumps({"fingerprint": fingerprint, "rows": shard_rows}))
            rows += shard_rows
    if reused:
        log.info("reused %d finished shard(s) of %d", reused, len(shards))
    index = pd.DataFrame(rows) if rows else pd.DataFrame(columns=INDEX_SCHEMA.names)
    index = index.sort_values("key").reset_index(drop=True)
    write_parquet(index, index_path, INDEX_SCHEMA)
    for name in names:
        _sidecar(out_dir, name).unlink(missing_ok=True)
    return index
