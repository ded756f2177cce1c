"""Atomic writes and per-job logging."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd


def write_parquet(frame: pd.DataFrame, path: str | Path) -> None:
    """Write to a temporary name, then rename: a killed job leaves nothing that looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)


def setup_job(log_path: str | Path | None, threads: int | None = None) -> None:
    """Prepare a workflow job: its log file, and torch limited to the job's threads.

    Logging, warnings and progress bars (stderr) go to the log file. Without the thread
    cap, every job would use all cores and parallel jobs would oversubscribe them.
    """
    if threads:
        import torch

        torch.set_num_threads(threads)
    path = log_path
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(path, "w", buffering=1)  # noqa: SIM115 - lives as long as the job
        sys.stderr = stream
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.captureWarnings(True)


def fingerprint(**parts) -> str:
    """A stable hash of everything that determines a job's result.

    Stored beside resumable progress (inversion checkpoints, finished shards) so that a rerun
    only picks up progress made by the same job.
    """

    def default(o):
        return asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)

    blob = json.dumps(parts, sort_keys=True, default=default)
    return hashlib.sha256(blob.encode()).hexdigest()
