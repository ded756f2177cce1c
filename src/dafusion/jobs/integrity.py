"""Digests of finished outputs, checked when a later job reads them.

Snakemake decides what to rerun from modification times, params and code, not content: an
intermediate edited or damaged after its job wrote it (a flipped byte, a truncated copy)
was read by the next jobs as it was, and a run exited 0 with results that silently moved.
So every workflow job runs inside `job`: it checks each input file against the digest
recorded when it was written, and records the sha256 of each output file it finished in a
hidden JSON sidecar beside it (`.{name}.sha256.json`, with the size and the rule).

A file without a sidecar (a dataset file, a model, an output of an earlier version) is read
as it is; directories (a model, exported tokens) get no digest. The shards of a synthetic
set are checked against the digests in its index instead (`shards.verify_shards`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .io import atomic_path, setup_job

log = logging.getLogger(__name__)

# Read in blocks of this size: any file hashes in constant memory.
CHUNK = 1 << 20


class IntegrityError(ValueError):
    """A file is not the one its job wrote: changed or damaged since."""


def file_digest(path: str | Path) -> tuple[str, int]:
    """The sha256 (hex) and size in bytes of a file, read in chunks."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    size = 0
    with open(path, "rb", buffering=0) as f:
        while read := f.readinto(buffer):
            digest.update(view[:read])
            size += read
    return digest.hexdigest(), size


def sidecar(path: str | Path) -> Path:
    """Where the digest of `path` is kept: a hidden file beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.sha256.json")


def record(path: str | Path, rule: str) -> bool:
    """Record the digest of the finished output `path`, written by workflow rule `rule`.

    Returns whether it did: a directory, or a file that is not there, gets none.
    """
    path = Path(path)
    if not path.is_file():
        return False
    sha256, size = file_digest(path)
    with atomic_path(sidecar(path)) as tmp:
        tmp.write_text(json.dumps({"sha256": sha256, "bytes": size, "rule": rule}) + "\n")
    return True


def rerun(path: str | Path) -> str:
    """The command that makes `path` again, and everything that read it."""
    return f"snakemake --cores all --forcerun {path}"


def mismatch(path: Path, sha256: str, size: int) -> str | None:
    """Why `path` is not the file of this sha256 and size, or None when it is. The size is
    compared first: a truncated file is told without reading it."""
    if not path.is_file():
        return "it is missing"
    actual = path.stat().st_size
    if actual != size:
        return f"it has {actual} bytes, not the {size} it was written with: cut or changed since"
    if file_digest(path)[0] != sha256:
        return "its sha256 is not the one recorded when it was written: changed or damaged since"
    return None


def verify(path: str | Path) -> bool:
    """Check the input `path` against the digest recorded when its job wrote it; an
    `IntegrityError` names the file, the rule that wrote it and how to make it again.

    Returns whether it checked: a directory or a file without a digest is accepted as is.
    """
    path = Path(path)
    side = sidecar(path)
    if not (path.is_file() and side.is_file()):
        return False
    try:
        recorded = json.loads(side.read_text())
        sha256, size, rule = recorded["sha256"], int(recorded["bytes"]), recorded["rule"]
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(
            f"cannot read '{side}', the digest of '{path}' ({exc!r}): delete it, and unless "
            f"you trust '{path}', rerun the job that makes it: {rerun(path)}"
        ) from exc
    problem = mismatch(path, sha256, size)
    if problem is not None:
        raise IntegrityError(
            f"'{path}' is not the file rule {rule} wrote ({problem}). Rerun the job that "
            f"makes it: {rerun(path)} (or, if you changed it on purpose, delete '{side}')"
        )
    return True


@contextlib.contextmanager
def job(snakemake: Any) -> Iterator[None]:
    """Run a workflow script's step as a job: `io.setup_job`, every input file checked
    (`verify`) before the step, every output file's digest recorded (`record`) once it
    succeeded. Every script runs its step inside it, so no rule can skip the checks.

    `snakemake` is the script's Snakemake object: `log`, `threads`, `input`, `output` and
    `rule` are read.
    """
    setup_job(snakemake.log[0], snakemake.threads)
    checked = sum(verify(path) for path in dict.fromkeys(snakemake.input))
    log.info("checked %d input file(s) against the digests recorded when written", checked)
    yield
    recorded = sum(record(path, snakemake.rule) for path in dict.fromkeys(snakemake.output))
    log.info("recorded the digests of %d output file(s)", recorded)
