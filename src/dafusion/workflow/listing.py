"""A dataset root's file listing as a digest, so that changed files rerun `index_dataset`.

Names, sizes and modification times of every file (symlinked directories are not
followed, as the readers do not follow them): adding, removing, renaming or rewriting a
file changes the digest; reading the files' contents is not needed. Imports nothing heavy:
the Snakefile calls it when it builds the DAG.

The digest reaches index_dataset's jobs as an entry of their `code` param (`files_entry`),
so Snakemake's params rerun trigger reruns the job when the files change, and nothing is
written when the workflow is parsed (a dry run leaves the results folder as it is). With
`track_files: false` the root is not listed and the entry keeps the value Snakemake recorded
when the outputs were made, so switching it reruns nothing.

"""

from __future__ import annotations

import ast
import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

# The listing of a dataset entry that is not listed (`track_files: false`) and has none
# recorded.
UNTRACKED = "untracked"


def listing_digest(root: str | Path) -> str:
    """sha256 over (relative path, size, mtime in ns) of every file under `root`."""
    digest = hashlib.sha256()
    _walk(os.fspath(root), "", digest)
    return digest.hexdigest()


def _walk(folder: str, prefix: str, digest: hashlib._Hash) -> None:
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


def listing_key(root: str) -> str:
    """The entry's key in index_dataset's `code` param: every file under the root."""
    return f"{root.rstrip('/')}/**"


def recorded_listing(params: Iterable[str] | None, root: str) -> str | None:
    """The listing among the params Snakemake recorded for index_dataset's outputs (each
    param's repr), or None when they hold none for this root."""
    key = listing_key(root)
    for text in params or ():
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict) and isinstance(value.get(key), str):
            return value[key]
    return None


def files_entry(
    root: str | None,
    track_files: bool,
    *,
    recorded: Callable[[], Iterable[str] | None],
    lister: Callable[[Path], str] = listing_digest,
) -> dict[str, str]:
    """The entry index_dataset's `code` param carries for a dataset's files: {key: listing}.

    `recorded()`: the params Snakemake recorded for the job's outputs (read only with
    `track_files: false`). No entry for a dataset without a root (nothing to list)."""
    if not root:
        return {}
    if track_files:
        listing = lister(Path(root).expanduser())
    else:
        listing = recorded_listing(recorded(), root) or UNTRACKED
    return {listing_key(root): listing}
