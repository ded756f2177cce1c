"""One reader per dataset kind: a dataset in its own on-disk format -> one manifest table.

A reader takes the `datasets:` entry and the directory its `root` is relative to, and returns
rows with `split` set to "train", "val" (the dataset's own evaluation split, if it has one) or
"test", labels in the dataset's own class order, and optionally a `mask` column (a function
returning the row's object mask). `dafusion.data.datasets.read_dataset` does the rest.

`KINDS` is the one registry of dataset kinds: the config checks and `read_dataset` both read
what a kind needs and supports from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ...settings import DatasetSettings
from .fine_grained import read_fgvc_aircraft, read_flowers102, read_stanford_cars
from .folders import read_caltech101, read_digits, read_imagefolder
from .imagenet import read_imagenet
from .segmentation import read_coco, read_pascal
from .spurge import has_folders, read_leafy_spurge


@dataclass(frozen=True)
class DatasetKind:
    """A dataset kind: its reader and what its `datasets:` entries may and must set."""

    read: Callable[[DatasetSettings, Path], pd.DataFrame]
    needs_root: bool = True  # every kind but digits reads a directory
    original_split: bool = False  # supports split_protocol: original-code
    masks: bool = False  # gives object masks (methods' mask: object or background)
    keys: tuple[str, ...] = ()  # DatasetSettings fields only this kind reads
    # A module outside the default install that the reader imports, installed by the pip
    # extra named after the kind (pyproject.toml), and whether a given root needs it.
    package: str | None = None
    needs_package: Callable[[Path], bool] = lambda root: True


KINDS: dict[str, DatasetKind] = {
    "digits": DatasetKind(read_digits, needs_root=False, keys=("image_size",)),
    "imagefolder": DatasetKind(read_imagefolder),
    "pascal": DatasetKind(read_pascal, masks=True),
    "coco": DatasetKind(read_coco, masks=True, package="pycocotools"),
    "caltech101": DatasetKind(read_caltech101, original_split=True),
    "flowers102": DatasetKind(read_flowers102, original_split=True),
    "fgvc_aircraft": DatasetKind(read_fgvc_aircraft, keys=("label_level",)),
    "stanford_cars": DatasetKind(read_stanford_cars),
    "leafy_spurge": DatasetKind(
        read_leafy_spurge,
        original_split=True,
        keys=("hf_config",),
        package="datasets",  # for the Hugging Face copy; plain folders need nothing more
        needs_package=lambda root: not has_folders(root),
    ),
    "imagenet": DatasetKind(read_imagenet),
}


def missing_package(kind: str, root: Path | None) -> str | None:
    """The pip extra to install when reading `root` as `kind` needs a module that is absent."""
    import importlib.util

    spec = KINDS[kind]
    if spec.package is None or importlib.util.find_spec(spec.package) is not None:
        return None
    return kind if root is None or spec.needs_package(root) else None


def mask_kinds() -> list[str]:
    """The kinds that give object masks, for messages."""
    return sorted(name for name, kind in KINDS.items() if kind.masks)


def original_split_kinds() -> list[str]:
    """The kinds that support `split_protocol: original-code`, for messages."""
    return sorted(name for name, kind in KINDS.items() if kind.original_split)


def index_keys(spec: DatasetSettings) -> list[str]:
    """The DatasetSettings fields that reading this kind depends on (for index_dataset's params):
    every field except allow_fewer (read only when drawing few-shot subsets) and the keys that
    only *other* kinds read, so changing either does not reread the dataset."""
    own = KINDS[spec.kind].keys
    others = {key for kind in KINDS.values() for key in kind.keys if key not in own}
    return [
        key for key in DatasetSettings.result_keys() if key != "allow_fewer" and key not in others
    ]
