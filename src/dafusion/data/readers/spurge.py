"""Leafy Spurge: the paper's drone images of a weed no diffusion model has seen.

Read from the Hugging Face dataset `mpg-ranch/leafy_spurge` (a directory written by
`save_to_disk`, or the local `datasets` cache), or from plain `absent/` and `apparent/`
(or `present/`) folders as the original DA-Fusion code read them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from ...settings import DatasetSettings
from ..manifest import manifest, sanitize_key
from .common import dataset_root, list_images

HF_REPO = "mpg-ranch/leafy_spurge"
# The original code's labels: 0 = spurge absent, 1 = spurge apparent.
SPURGE_CLASSES = ["no spurge", "leafy spurge"]
LABEL_OF = {"absent": 0, "apparent": 1, "present": 1}
HF_SPLITS = {"train": "train", "validation": "val", "val": "val", "test": "test"}


def _row(key: str, label_name: str, split: str, **source: object) -> dict:
    if label_name not in LABEL_OF:
        raise ValueError(f"leafy_spurge: unknown label '{label_name}', expected {list(LABEL_OF)}")
    label = LABEL_OF[label_name]
    return {
        "key": sanitize_key(key),
        "label": label,
        "class_name": SPURGE_CLASSES[label],
        "split": split,
        **source,
    }


def has_folders(root: Path) -> bool:
    """Whether `root` has the plain folder layout (read without the `datasets` package)."""
    return any((root / name).is_dir() for name in (*LABEL_OF, "train", "test"))


def _folder_rows(root: Path) -> list[dict]:
    """`root/{absent,apparent}/*`, or `root/{train,test}/{absent,present}/*` (the layout of
    the Hugging Face repository's files)."""
    splits = [(root / s, s) for s in ("train", "test") if (root / s).is_dir()] or [(root, "train")]
    rows = []
    for folder, split in splits:
        for name in LABEL_OF:
            if (folder / name).is_dir():
                rows += [
                    _row(str(path.relative_to(root).with_suffix("")), name, split, path=str(path))
                    for path in list_images(folder / name)
                ]
    return rows


def _load_hf(root: Path, config_name: str) -> Any:
    """A saved Dataset/DatasetDict, or the `datasets` cache at `root`, never the network."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        return datasets.load_from_disk(str(root))
    try:
        return datasets.load_dataset(HF_REPO, config_name, cache_dir=str(root))
    except Exception as exc:
        raise FileNotFoundError(
            f"leafy_spurge: '{root}' holds neither absent/ and apparent/ folders, a dataset "
            f"saved with save_to_disk, nor a cached copy of {HF_REPO} ({config_name}): {exc}. "
            f"On a machine with internet: datasets.load_dataset('{HF_REPO}', "
            f"'{config_name}').save_to_disk(root)"
        ) from exc


def _hf_rows(root: Path, config_name: str) -> list[dict]:
    import datasets

    loaded = _load_hf(root, config_name)
    splits = {"train": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)
    rows = []
    for hf_split, data in splits.items():
        if hf_split not in HF_SPLITS:
            continue
        split = HF_SPLITS[hf_split]
        label_feature = data.features["label"]
        data = data.cast_column("image", datasets.Image(decode=False))
        for index, (image, label) in enumerate(zip(data["image"], data["label"], strict=True)):
            name = label_feature.int2str(label) if hasattr(label_feature, "int2str") else label
            stem = Path(image["path"]).stem if image.get("path") else f"{index:06d}"
            source = {"image": image["bytes"]} if image.get("bytes") else {"path": image["path"]}
            rows.append(_row(f"{split}-{stem}", name, split, **source))
    return rows


def read_leafy_spurge(spec: DatasetSettings, base_dir: Path) -> pd.DataFrame:
    """Labels "no spurge" (absent) and "leafy spurge" (apparent / present).

    The dataset's own test split, when it has one, becomes the test manifest; evaluation
    images are held out of the training images (or halved per seed with original-code).
    """
    root = dataset_root(spec, base_dir)
    rows = _folder_rows(root)
    if not rows:
        rows = _hf_rows(root, spec.hf_config)
    return manifest(rows)
