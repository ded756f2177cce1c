"""Datasets stored as images (or arrays) per class: digits, imagefolder, caltech101."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ...settings import DatasetSettings
from ..images import encode_png
from ..manifest import manifest, sanitize_key
from .common import class_folders, dataset_root, locate

log = logging.getLogger(__name__)

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def read_digits(spec: DatasetSettings, base_dir: Path) -> pd.DataFrame:
    """scikit-learn's bundled 8x8 handwritten digits as RGB PNGs (ink dark on white)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    size = spec.image_size
    rows = []
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        gray = (255 - pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR)
        rows.append(
            {
                "key": f"digits-{index:04d}",
                "image": encode_png(image.convert("RGB")),
                "label": int(label),
                "class_name": DIGIT_NAMES[int(label)],
                "split": "train",
            }
        )
    return manifest(rows)


def _folder_rows(
    root: Path,
    classes: dict[str, list[Path]],
    labels: dict[str, int],
    names: dict[str, str],
    split: str,
) -> list[dict]:
    rows = []
    for folder, files in classes.items():
        if folder not in labels:
            train = root / "train" / folder
            problem = "has no images" if train.is_dir() else "does not exist"
            raise ValueError(
                f"class folder '{root / split / folder}' has images, but its training folder "
                f"'{train}' {problem}: a class needs training images; add some there, or "
                f"remove '{root / split / folder}'"
            )
        for path in files:
            rows.append(
                {
                    "key": sanitize_key(str(path.relative_to(root).with_suffix(""))),
                    "path": str(path),
                    "label": labels[folder],
                    "class_name": names[folder],
                    "split": split,
                }
            )
    return rows


def read_imagefolder(spec: DatasetSettings, base_dir: Path) -> pd.DataFrame:
    """Images in `root/<class>/*`, or `root/train/<class>/*` with optional `root/val/<class>/*`
    and `root/test/<class>/*`; class name = folder name with `_` as space."""
    root = dataset_root(spec, base_dir)
    has_splits = (root / "train").is_dir()
    train = class_folders(root / "train" if has_splits else root)
    labels = {folder: i for i, folder in enumerate(train)}
    names = {folder: folder.replace("_", " ") for folder in train}
    same = [f for f in train if [g for g in train if names[g] == names[f]] != [f]]
    if same:
        raise ValueError(
            f"class folders {', '.join(repr(f) for f in same)} under '{root}' give the same "
            f"class name '{names[same[0]]}' (an underscore reads as a space); merge them into "
            "one folder or rename one"
        )
    rows = _folder_rows(root, train, labels, names, "train")
    for split in ("val", "test"):
        if has_splits and (root / split).is_dir():
            folders = class_folders(root / split, allow_empty=True)
            if not folders:
                log.warning("'%s' holds no images: read as if it were absent", root / split)
            rows += _folder_rows(root, folders, labels, names, split)
    return manifest(rows)


def read_caltech101(spec: DatasetSettings, base_dir: Path) -> pd.DataFrame:
    """Caltech101's `101_ObjectCategories/<class>/*.jpg`.

    Class name = folder name, lower-case, `_` as space, in sorted order (as the original
    DA-Fusion code names them); BACKGROUND_Google, a clutter category, is left out.
    """
    root = dataset_root(spec, base_dir)
    if root.name != "101_ObjectCategories":
        root = locate(root, "101_ObjectCategories", ["caltech101"], "caltech101")
        root = root / "101_ObjectCategories"
    classes = class_folders(root, exclude=("BACKGROUND_Google",))
    names = {folder: folder.lower().replace("_", " ") for folder in classes}
    labels = {folder: i for i, folder in enumerate(sorted(classes, key=names.__getitem__))}
    return manifest(_folder_rows(root, classes, labels, names, "train"))
