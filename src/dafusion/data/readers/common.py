"""Helpers the readers share: finding a dataset's files under `root`, listing images."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ...settings import DatasetSettings
from ..images import IMAGE_SUFFIXES, is_image_file

log = logging.getLogger(__name__)

# Folders and files that file managers, archivers and notebooks leave beside data: never a
# class or an image (besides any name starting with a dot, e.g. .ipynb_checkpoints, ._x.jpg).
SYSTEM_NAMES = frozenset({"__MACOSX", "@eaDir", "Thumbs.db", "desktop.ini", "$RECYCLE.BIN"})


def is_hidden(name: str) -> bool:
    """A hidden or system file or folder name, which no reader takes as data."""
    return name.startswith(".") or name in SYSTEM_NAMES


def dataset_root(spec: DatasetSettings, base_dir: Path) -> Path:
    """The entry's `root`, absolute (resolved once, so image paths need no per-file resolve)."""
    assert spec.root is not None  # the schema requires `root` of every kind that reads one
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


def _some(paths: Sequence[Path], folder: Path, shown: int = 5) -> str:
    """The first few of `paths` (relative to `folder`) and how many more, for a log line."""
    names = ", ".join(str(p.relative_to(folder)) for p in paths[:shown])
    return names + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in a folder, sorted by name.

    Hidden and system files and folders (`is_hidden`) are skipped, and so are files without
    an image suffix; each kind is named in one log line per folder. A folder with files but
    no image among them is an error naming it: read as empty, its class would vanish.
    """
    if recursive:
        files = [p for p in folder.rglob("*") if p.is_file()]
    else:
        files = [Path(e.path) for e in os.scandir(folder) if e.is_file()]
    hidden = sorted(p for p in files if any(map(is_hidden, p.relative_to(folder).parts)))
    if hidden:
        log.warning(
            "skipped %d hidden or system files under '%s': %s",
            len(hidden), folder, _some(hidden, folder),
        )  # fmt: skip
    visible = sorted(set(files) - set(hidden))
    images = [p for p in visible if is_image_file(p)]
    others = [p for p in visible if not is_image_file(p)]
    if others and not images:
        raise ValueError(
            f"folder '{folder}' holds {len(others)} files but no image: "
            f"{_some(others, folder)}. Images are read from files ending in "
            f"{', '.join(sorted(IMAGE_SUFFIXES))} (in any case); convert the files to one of "
            "these, or move them and the folder out of the dataset's root"
        )
    if others:
        log.warning(
            "skipped %d files under '%s' that are not images (by suffix): %s",
            len(others), folder, _some(others, folder),
        )  # fmt: skip
    return images


def class_folders(
    root: Path, exclude: Sequence[str] = (), allow_empty: bool = False
) -> dict[str, list[Path]]:
    """`root/<class>/...` image folders (recursive), by folder name, sorted.

    Empty folders (or ones holding only hidden files) are dropped, hidden and system folders
    (`.thumbs`, `__MACOSX`, `@eaDir`) are no classes, and symlinked folders are not followed
    (a link to the root would make a class of every image); each is logged by name. A folder
    with files but no image is an error (`list_images`). No class folder with images is an
    error, or with `allow_empty` an empty result.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"directory '{root}' does not exist; check root")
    classes = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in exclude):
        if is_hidden(folder.name):
            log.warning("skipped folder '%s': hidden or system, not a class", folder)
            continue
        if folder.is_symlink():
            log.warning("skipped class folder '%s': a symlink (not followed)", folder)
            continue
        files = list_images(folder, recursive=True)
        if files:
            classes[folder.name] = files
        else:
            log.warning("skipped class folder '%s': no images in it", folder)
    if not classes and not allow_empty:
        raise ValueError(
            f"no class folders with images under '{root}'; expected root/<class>/*.jpg"
        )
    return classes
