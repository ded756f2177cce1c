"""Files that come with the package: the tiny-digits miniature and the reference digit
classifier. Paths and digests only, no torch: the workflow reads them while it builds its DAG.

Jobs never read these paths. The rule `place_shipped` copies each asset under the results
folder (`paths.SHIPPED`), and the jobs read that copy: a job's recorded inputs then name no
path of the checkout or the installed package, so a project copied, renamed or re-cloned
elsewhere, or a package reinstalled elsewhere, reruns nothing. The copy's job carries the
asset's digest as a param: a release that changes the asset reruns it and what reads it.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
MINIATURE = ASSETS / "tiny-digits"
REFERENCE_CLASSIFIER = ASSETS / "reference-digits.safetensors"
MINIATURE_RESOLUTION = 16  # the size tiny-digits was trained at (dafusion.training.miniature)

# Each shipped asset by the name of its folder under the results (`paths.SHIPPED`).
SHIPPED = {"tiny-digits": MINIATURE, "reference-digits": REFERENCE_CLASSIFIER}


def _digest(source: Path) -> str:
    """sha256 over the names (relative to a folder) and the bytes of a file or a folder's
    files: a single file and a folder holding just it give the same digest."""
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(source).as_posix() if source.is_dir() else path.name
        digest.update(f"{name}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.cache
def shipped_digest(name: str) -> str:
    """The digest of a shipped asset, once per process."""
    return _digest(SHIPPED[name])


def place_shipped(name: str, output: str | Path) -> None:
    """Copy an asset into the folder `output`: a folder's files, or the one file under its
    own name. Stops if the copy differs from what is shipped."""
    source, output = SHIPPED[name], Path(output)
    if source.is_dir():
        shutil.copytree(source, output)
    else:
        output.mkdir(parents=True)
        shutil.copyfile(source, output / source.name)
    if _digest(output) != _digest(source):
        raise RuntimeError(f"the copy of {source} in '{output}' differs from it; rerun the job")


def placed_file(name: str, folder: str | Path) -> Path:
    """The file a placed single-file asset is read from, in its folder under the results."""
    return Path(folder) / SHIPPED[name].name
