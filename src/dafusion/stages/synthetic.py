"""A synthetic set on disk: resumable WebDataset shards plus `index.parquet`.

The plan (every synthetic image, in key order) is cut into shards of `shard_size`. Each
finished shard is renamed into place and gets a small sidecar recording the job's
fingerprint and the shard's index rows, so a rerun after a kill reuses finished shards and
regenerates only the rest; outputs do not depend on where the job stopped. Images are
encoded in worker threads while the generator computes the next batches.

A set is made by N >= 1 jobs (`generation.parts`): each writes a contiguous run of whole
shards (`shard_ranges`, `write_shards`) and its rows (`write_part`), and one light job
writes the index from them (`read_parts`, `write_index`), recording N in it
(`recorded_parts`). A shard's bytes depend only on its images, whose seeds derive from the
image keys, so the set is the same for any N.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..data.shards import SHARD_PATTERN, encode_image, write_shard
from ..jobs.integrity import mismatch, sidecar
from ..jobs.io import atomic_path, write_parquet
from ..jobs.seeds import derive_seed

if TYPE_CHECKING:
    from .generation import Engine

log = logging.getLogger(__name__)


def draw_strength(variant: int, strengths: Sequence[float]) -> float:
    """t0 drawn uniformly from `strengths`, from the variant's own seed."""
    return float(strengths[int(np.random.default_rng(variant).integers(len(strengths)))])


def variant_plan(
    manifest: pd.DataFrame, seed: int, num_synthetic: int, strengths: Sequence[float]
) -> pd.DataFrame:
    """One row per synthetic image, in key order: source row, j, its seed and its t0."""
    rows = []
    for i, key in enumerate(manifest["key"]):
        for j in range(num_synthetic):
            variant = derive_seed(seed, key, j)
            rows.append(
                {
                    "row": i,
                    "j": j,
                    "key": f"{key}-{j:03d}",
                    "variant_seed": variant,
                    "strength": draw_strength(variant, strengths),
                }
            )
    return pd.DataFrame(rows)


# The index's columns: the key, the `meta` of each image (its shard json), its shard with
# the shard's sha256 and size as written (readers check them, `shards.verify_shards`), and
# whether the safety checker dropped it (then without a shard). Explicit types keep an
# index with no rows, or with every image dropped, typed like any other.
INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source_key", pa.string(), nullable=False),
        pa.field("j", pa.int64(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("set", pa.string(), nullable=False),
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
        pa.field("shard_sha256", pa.string()),
        pa.field("shard_bytes", pa.int64()),
        pa.field("dropped", pa.bool_(), nullable=False),
    ]
)


# The index's schema metadata: how many jobs made the set (the workflow reads it to list
# the jobs a finished set came from: `generation.parts` may have changed since, a knob), and
# the set's identity as JSON (what determines its images, `SyntheticSets.identity`).
PARTS_KEY = "dafusion.parts"
IDENTITY_KEY = "dafusion.set"
# The temporary rows of each `generate` job, beside the shards (`paths.PART`).
PART_PATTERN = "part-*-of-*.json"


def recorded_parts(index_path: str | Path) -> int | None:
    """How many jobs made the set of `index_path`; None for an index that does not record
    it."""
    metadata = pq.read_schema(index_path).metadata or {}
    value = metadata.get(PARTS_KEY.encode())
    return int(value) if value is not None else None


def _sidecar(out_dir: Path, name: str) -> Path:
    return out_dir / f".{name}.json"


def _finished(out_dir: Path, name: str, fingerprint: str) -> list[dict] | None:
    """The index rows of a finished shard of this same job, or None. A shard that no longer
    has the size and sha256 it was written with (or whose rows, of an earlier version, do
    not record them) is made again rather than passed on to the index."""
    progress = _sidecar(out_dir, name)
    if not (progress.exists() and (out_dir / name).exists()):
        return None
    record = json.loads(progress.read_text())
    if record.get("fingerprint") != fingerprint:
        return None
    rows = record["rows"]
    shard = next((row for row in rows if row["shard"]), None)
    if shard is not None and (
        "shard_sha256" not in shard
        or mismatch(out_dir / name, shard["shard_sha256"], shard["shard_bytes"])
    ):
        log.warning("%s is not the shard its job wrote: making it again", out_dir / name)
        return None
    return rows


def shard_ranges(num_shards: int, parts: int) -> list[range]:
    """The shards each of `parts` jobs writes: contiguous runs, as even as possible (the
    first ones one shard longer); a part gets none when there are fewer shards than parts."""
    if parts < 1:
        raise ValueError(f"generation.parts must be at least 1, not {parts}")
    size, extra = divmod(num_shards, parts)
    starts = [p * size + min(p, extra) for p in range(parts + 1)]
    return [range(starts[p], starts[p + 1]) for p in range(parts)]


def num_shards(num_images: int, shard_size: int) -> int:
    return -(-num_images // shard_size)


def write_shards(
    engine: Engine,
    work: Sequence[Mapping],
    out_dir: str | Path,
    *,
    seed: int,
    shard_size: int,
    image_format: str,
    fingerprint: str,
    meta: Callable[[Mapping], dict],
    shards: range | None = None,
    workers: int = 2,
    progress: bool = True,
) -> list[dict]:
    """Generate (or reuse) the shards `shards` of `work` (default: all) and return their
    index rows. Each finished shard keeps its sidecar until the index is written
    (`write_index`), so that a killed job, or another part of the set, can reuse it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if shards is None:
        shards = range(num_shards(len(work), shard_size))
    rows: list[dict] = []
    reused = 0
    images = sum(len(work[n * shard_size : (n + 1) * shard_size]) for n in shards)
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=images, desc="SDEdit", unit="img", disable=not progress) as bar,
    ):
        for n in shards:
            name = SHARD_PATTERN.format(n)
            shard = list(work[n * shard_size : (n + 1) * shard_size])
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
    return rows


def write_part(path: str | Path, rows: Sequence[Mapping], fingerprint: str) -> None:
    """A `generate` job's index rows, for `read_parts`, with the fingerprint of the job
    that wrote them ("" for a part with no shards)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "rows": rows}))


def read_parts(parts: Sequence[str], planned: pd.Series, plan: str) -> list[dict]:
    """The rows of a set's parts (`write_part`), checked to be those of one job's settings
    and to hold exactly the images `planned` (the keys of the plan of `plan`, a split)."""
    records = [json.loads(Path(part).read_text()) for part in parts]
    fingerprints = {r["fingerprint"] for r in records if r["rows"]}
    if len(fingerprints) > 1:
        raise ValueError(
            f"the parts {', '.join(parts)} were written by jobs with different settings: "
            "delete them and rerun"
        )
    rows = [row for record in records for row in record["rows"]]
    keys = [row["key"] for row in rows]
    if sorted(keys) != sorted(planned):
        raise ValueError(
            f"the parts {', '.join(parts)} hold {len(keys)} images, not the {len(planned)} "
            f"planned for {plan}: delete them and rerun"
        )
    return rows


def write_index(
    rows: Sequence[Mapping],
    out_dir: str | Path,
    index_path: str | Path,
    *,
    shard_size: int,
    parts: int,
    identity: Mapping,
) -> pd.DataFrame:
    """Write the index of every shard's rows atomically, recording the set's `identity` and
    that `parts` jobs made it, then delete the shards' sidecars, the digests of the
    temporary parts (`integrity.sidecar`: only this job reads them) and any shard beyond
    the set's (left by an earlier, larger set). Dropped rows have no shard, so no digest."""
    out_dir = Path(out_dir)
    index = pd.DataFrame(rows) if rows else pd.DataFrame(columns=INDEX_SCHEMA.names)
    for column in ("shard_sha256", "shard_bytes"):
        if column not in index:
            index[column] = None
    index = index.sort_values("key").reset_index(drop=True)
    metadata = {PARTS_KEY: str(parts), IDENTITY_KEY: json.dumps(identity, sort_keys=True)}
    write_parquet(index, index_path, INDEX_SCHEMA, metadata=metadata)
    names = {SHARD_PATTERN.format(n) for n in range(num_shards(len(rows), shard_size))}
    pattern = SHARD_PATTERN.replace("{:06d}", "*")
    for path in out_dir.glob(pattern):
        if path.name not in names:
            path.unlink()
    for name in (_sidecar(out_dir, pattern).name, sidecar(out_dir / PART_PATTERN).name):
        for path in out_dir.glob(name):
            path.unlink()
    return index
