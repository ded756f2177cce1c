"""A dataset root's file listing as a digest, so that changed files rerun `index_dataset`.

Names, sizes and modification times of every file (symlinked directories are not
followed, as the readers do not follow them): adding, removing, renaming or rewriting a
file changes the digest; reading the files' contents is not needed. Imports nothing heavy:
the Snakefile calls it when it builds the DAG.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def listing_digest(root: str | Path) -> str:
    """sha256 over (relative path, size, mtime in ns) of every file under `root`."""
    digest = hashlib.sha256()
    _walk(os.fspath(root), "", digest)
    return digest.hexdigest()


def _walk(folder: str, prefix: str, digest) -> None:
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        rel = prefix + entry.name
        if entry.is_dir(follow_symlinks=False):
            _walk(entry.path, rel + "/", digest)
            continue
        try:
            stat = entry.stat()
        except OSError:  # a dangling link: listed, without size
            digest.update(f"{rel}\0-\n".encode())
            continue
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
