"""Atomic writes and per-job logging."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pandas as pd


def write_parquet(frame: pd.DataFrame, path: str | Path) -> None:
    """Write to a temporary name, then rename: a killed job leaves nothing that looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)


def setup_job_log(path: str | Path | None) -> None:
    """Send logging, warnings and progress bars (stderr) of a job to its log file."""
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
