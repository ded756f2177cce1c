"""Helpers the readers share: finding a dataset's files under `root`, listing images."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..images import IMAGE_SUFFIXES
from ..settings import DatasetSettings

log = logging.getLogger(__name__)


def dataset_root(spec: DatasetSettings, base_dir: Path) -> Path:
    """The entry's `root`, absolute (resolved once, so image paths need no per-file resolve)."""
    return (Path(base_dir) / Path(spec.root).expanduser()).resolve()


def locate(root: Path, marker: str, subdirs: Sequence[str], kind: str) -> Path:
    """The directory holding `marker`: `root` itself or one of the usual `subdirs` below it
    (the archive's own top folder, torchvision's download folder)."""
    for sub in ("", *subdirs):
        if (root / sub / marker).exists():
            return root / sub
    looked = ", ".join(f"'{root / sub}'" for sub in ("", *subdirs))
    raise FileNotFoundError(
        f"dataset kind '{kind}': '{marker}' not found in {looked}; point root at the "
        "directory that holds it (see README, Datasets)"
    )


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a text file, stripped."""
    if not path.is_file():
        raise FileNotFoundError(f"missing file '{path}'; the dataset on disk is incomplete")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in a folder, sorted by name."""
    if recursive:
        files = (p for p in folder.rglob("*") if p.is_file())
    else:
        files = (Path(e.path) for e in os.scandir(folder) if e.is_file())
    return sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES)


def class_folders(root: Path, exclude: Sequence[str] = ()) -> dict[str, list[Path]]:
    """`root/<class>/...` image folders (recursive), by folder name, sorted.

    Empty folders are dropped and symlinked folders are not followed (a link to the root
    would make a class of every image); both are logged by name.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"directory '{root}' does not exist; check root")
    classes = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in exclude):
        if folder.is_symlink():
            log.warning("skipped class folder '%s': a symlink (not followed)", folder)
            continue
        files = list_images(folder, recursive=True)
        if files:
            classes[folder.name] = files
        else:
            log.warning("skipped class folder '%s': no images in it", folder)
    if not classes:
        raise ValueError(
            f"no class folders with images under '{root}'; expected root/<class>/*.jpg"
        )
    return classes
