"""Atomic writes, per-job logging and job fingerprints."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TextIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import provenance


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary name beside `path`; rename it into place only if the block succeeds.

    A killed job leaves at most a hidden temporary, never a file that looks complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        # Some writers (safetensors) create 0600 files; results get the usual permissions,
        # readable by the group on a shared cluster as the umask allows.
        tmp.chmod(0o666 & ~_umask())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


@functools.cache
def _umask() -> int:
    """The process umask (read by setting it, so once, then restored)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_parquet(
    frame: pd.DataFrame,
    path: str | Path,
    schema: pa.Schema | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a table atomically; with `schema`, in exactly its columns, order and types, and
    with `metadata` added to the file's schema metadata.

    Types inferred from the values would depend on them: a column of only nulls, or a table
    without rows, would be written as type null and differ between datasets.
    """
    with atomic_path(path) as tmp:
        if schema is None:
            frame.to_parquet(tmp, index=False)
        else:
            table = _to_arrow(frame, schema, path)
            if metadata:
                table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
            pq.write_table(table, tmp)


def _to_arrow(frame: pd.DataFrame, schema: pa.Schema, path: str | Path) -> pa.Table:
    """`frame` as a table of `schema`, or an error naming the file and the column that does
    not fit (pyarrow's own errors do not always name it)."""
    missing = [name for name in schema.names if name not in frame.columns]
    unknown = [str(name) for name in frame.columns if name not in schema.names]
    if missing or unknown:
        problems = [f"column '{name}' is missing" for name in missing]
        problems += [f"column '{name}' is not in its schema" for name in unknown]
        raise ValueError(
            f"cannot write {path}: {'; '.join(problems)} (its columns: {', '.join(schema.names)})"
        )
    try:
        return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    except (pa.ArrowException, ValueError) as exc:
        for field in schema:
            try:
                pa.Table.from_pandas(
                    frame[[field.name]], schema=pa.schema([field]), preserve_index=False
                )
            except (pa.ArrowException, ValueError) as column_exc:
                kind = f"{field.type}{'' if field.nullable else ' not null'}"
                raise ValueError(
                    f"cannot write {path}: column '{field.name}' does not fit its type "
                    f"({kind}): {column_exc}"
                ) from exc
        raise


def seconds_since_start() -> float | None:
    """Wall seconds since this process started (Linux's /proc; None elsewhere): what the
    interpreter, Snakemake's script preamble and the script's imports took before now."""
    try:
        with open("/proc/self/stat") as stat:
            started = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: start time
        with open("/proc/uptime") as uptime:
            now = float(uptime.read().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return now - started / os.sysconf("SC_CLK_TCK")


def setup_job(log_path: str | Path | None, threads: int | None = None) -> None:
    """Prepare a workflow job: its log file, and torch limited to the job's threads.

    Logging, warnings, progress bars and what native code writes to stderr (file descriptor
    2: CUDA and library messages, a crash's traceback) go to the log file. Without the thread
    cap, every job would use all cores and parallel jobs would oversubscribe them. The log
    starts with the library's location and content hash, so a log shows which code ran, and
    with the seconds the job took to start (`benchmarks/workflow.py` reads them). An uncaught
    exception ends the log, or the job's original stderr when the log cannot be written.
    """
    if threads:
        # Through the environment, so a job that never needs torch does not pay its import
        # (torch reads these when it starts); a torch already imported is told directly.
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        # The job's own stderr, kept for when the log cannot take why the job failed.
        fallback = os.fdopen(os.dup(2), "w")
        sys.stderr = open(log_path, "w", buffering=1)  # noqa: SIM115 - lives as long as the job
        os.dup2(sys.stderr.fileno(), 2)
        sys.excepthook = functools.partial(_report_failure, str(log_path), fallback)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.captureWarnings(True)
    log = logging.getLogger("dafusion")
    log.info("dafusion from %s (sha256 %s)", provenance.ROOT, provenance.library_hash()[:16])
    started = seconds_since_start()
    if started is not None:
        log.info("job started %.2f s ago (interpreter, script preamble and imports)", started)


def _report_failure(
    log_path: str,
    fallback: TextIO,
    kind: type[BaseException],
    value: BaseException,
    tb: TracebackType | None,
) -> None:
    """A job's `sys.excepthook`: why it failed goes to its log, or, when the log cannot be
    written (a full disk), to the job's original stderr, which Snakemake prints and a
    cluster keeps; otherwise a full disk would leave an empty log and no cause anywhere."""
    text = "".join(traceback.format_exception(kind, value, tb))
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError) as exc:  # ValueError: the log was closed
        fallback.write(f"cannot write the job's log {log_path} ({exc}); the job failed:\n{text}")
        fallback.flush()


def resume_key(**parts: object) -> str:
    """A stable hash of everything that determines a job's result (not the code fingerprint
    of `dafusion.provenance`, which decides what Snakemake reruns).

    Stored beside resumable progress (inversion checkpoints, finished shards) so that a rerun
    only picks up progress made by the same job.
    """

    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
