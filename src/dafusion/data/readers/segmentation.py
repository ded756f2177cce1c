"""Segmentation datasets as classification tasks: PASCAL VOC 2012 and COCO 2017.

As in the paper, an image is labelled with the class of its largest object, measured in
mask pixels, and that object's mask is kept; images without objects are left out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from ...settings import DatasetSettings
from ..manifest import manifest, sanitize_key
from .common import dataset_root, locate, read_lines

if TYPE_CHECKING:
    from pycocotools.coco import COCO

log = logging.getLogger(__name__)

# Index i + 1 in VOC's SegmentationClass PNGs, named as the original DA-Fusion code names
# them (semantic_aug/datasets/pascal.py, class_names): VOC's aeroplane, motorbike and
# tvmonitor are airplane, motorcycle and television there. The names reach Real Guidance's
# prompts, the erased prompts and the class tokens.
VOC_CLASSES = [
    "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorcycle", "person", "potted plant", "sheep", "sofa",
    "train", "television",
]  # fmt: skip
VOC_BACKGROUND, VOC_VOID = 0, 255


def _palette_indices(path: Path) -> np.ndarray:
    """A VOC annotation PNG's palette indices (its pixel values, not its colors)."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(
                f"'{path}' is a {image.mode} image; VOC annotations are palette PNGs whose "
                "indices are the labels. Use the files from the VOC2012 archive"
            )
        return np.asarray(image)


def _largest_instance(objects: np.ndarray, classes: np.ndarray) -> tuple[int, int] | None:
    """(instance index, VOC class index) of the largest object, or None without objects."""
    ids, counts = np.unique(objects, return_counts=True)
    keep = (ids != VOC_BACKGROUND) & (ids != VOC_VOID)
    if not keep.any():
        return None
    instance = int(ids[keep][counts[keep].argmax()])
    labels = classes[objects == instance]
    labels = labels[(labels != VOC_BACKGROUND) & (labels != VOC_VOID)]
    if labels.size == 0:
        return None
    return instance, int(np.bincount(labels).argmax())


def _voc_mask(object_png: Path, instance: int) -> np.ndarray:
    return _palette_indices(object_png) == instance


def read_pascal(spec: DatasetSettings, base_dir: Path) -> pd.DataFrame:
    """VOC2012's segmentation set: ImageSets/Segmentation/{train,val}.txt.

    Instances come from SegmentationObject (one palette index per object; 0 is background,
    255 the void border), each instance's class from SegmentationClass at its pixels.
    """
    root = locate(
        dataset_root(spec, base_dir),
        "ImageSets/Segmentation",
        ["VOC2012", "VOCdevkit/VOC2012"],
        "pascal",
    )
    rows = []
    for split in ("train", "val"):
        for image_id in read_lines(root / "ImageSets/Segmentation" / f"{split}.txt"):
            object_png = root / "SegmentationObject" / f"{image_id}.png"
            class_png = root / "SegmentationClass" / f"{image_id}.png"
            found = _largest_instance(_palette_indices(object_png), _palette_indices(class_png))
            if found is None:
                log.warning("skipped VOC image %s: no labelled object", image_id)
                continue
            instance, class_index = found
            if not 1 <= class_index <= len(VOC_CLASSES):
                raise ValueError(f"'{class_png}' has class index {class_index}, not 1..20")
            rows.append(
                {
                    "key": sanitize_key(image_id),
                    "path": str(root / "JPEGImages" / f"{image_id}.jpg"),
                    "label": class_index - 1,
                    "class_name": VOC_CLASSES[class_index - 1],
                    "split": split,
                    "mask": partial(_voc_mask, object_png, instance),
                }
            )
    return manifest(rows)


def read_coco(spec: DatasetSettings, base_dir: Path) -> pd.DataFrame:
    """COCO 2017: train2017/ and val2017/ with annotations/instances_{train,val}2017.json.

    The largest annotation is the one with the largest `area` (its mask's pixel count), crowd
    regions included, as in the original DA-Fusion code; its mask is decoded from its polygon
    or RLE segmentation.
    """
    from pycocotools.coco import COCO

    root = locate(dataset_root(spec, base_dir), "annotations", ["coco2017", "coco"], "coco")
    rows = []
    for split, name in (("train", "train2017"), ("val", "val2017")):
        annotations = root / "annotations" / f"instances_{name}.json"
        if not annotations.is_file():
            raise FileNotFoundError(f"missing '{annotations}'; unpack annotations_trainval2017")
        coco = COCO(str(annotations))
        label_of = {category: i for i, category in enumerate(sorted(coco.cats))}
        skipped = 0
        for image_id in sorted(coco.imgs):
            anns = coco.imgToAnns.get(image_id, [])
            if not anns:
                skipped += 1
                continue
            largest = max(anns, key=lambda ann: ann["area"])
            info = coco.imgs[image_id]
            rows.append(
                {
                    "key": sanitize_key(f"{name}-{Path(info['file_name']).stem}"),
                    "path": str(root / name / info["file_name"]),
                    "label": label_of[largest["category_id"]],
                    "class_name": coco.cats[largest["category_id"]]["name"],
                    "split": split,
                    "mask": partial(_coco_mask, coco, largest),
                }
            )
        log.info("%s: %d images without annotations left out", name, skipped)
    return manifest(rows)


def _coco_mask(coco: COCO, annotation: Mapping) -> np.ndarray:
    return coco.annToMask(annotation).astype(bool)
