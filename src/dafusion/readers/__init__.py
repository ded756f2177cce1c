"""One reader per dataset kind: a dataset in its own on-disk format -> one manifest table.

A reader takes the `datasets:` entry and the directory its `root` is relative to, and returns
rows with `split` set to "train", "val" (the dataset's own evaluation split, if it has one) or
"test", labels in the dataset's own class order, and optionally a `mask` column (a function
returning the row's object mask). `dafusion.datasets.read_dataset` does the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

from .fine_grained import read_fgvc_aircraft, read_flowers102, read_stanford_cars
from .folders import read_caltech101, read_digits, read_imagefolder
from .imagenet import read_imagenet
from .segmentation import read_coco, read_pascal
from .spurge import read_leafy_spurge

READERS: dict[str, Callable[[Mapping, Path], pd.DataFrame]] = {
    "digits": read_digits,
    "imagefolder": read_imagefolder,
    "pascal": read_pascal,
    "coco": read_coco,
    "caltech101": read_caltech101,
    "flowers102": read_flowers102,
    "fgvc_aircraft": read_fgvc_aircraft,
    "stanford_cars": read_stanford_cars,
    "leafy_spurge": read_leafy_spurge,
    "imagenet": read_imagenet,
}
