"""ImageNet (ILSVRC 2012 CLS-LOC, the layout of the Kaggle download)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pandas as pd

from ...settings import DatasetSettings
from ..manifest import manifest, unknown_classes_error
from .common import dataset_root, list_images, locate, read_lines


def _synsets(mapping: Path) -> dict[str, str]:
    """WordNet id -> class name: the first synonym, with the id appended where two synsets
    share it (e.g. the bird and the machine named "crane")."""
    first = {}
    for line in read_lines(mapping):
        wnid, _, synonyms = line.partition(" ")
        first[wnid] = synonyms.split(",")[0].strip()
    counts = Counter(first.values())
    return {wnid: name if counts[name] == 1 else f"{name} ({wnid})" for wnid, name in first.items()}


def read_imagenet(spec: DatasetSettings, base_dir: Path) -> pd.DataFrame:
    """`ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG`, the val images labelled by
    `LOC_val_solution.csv`, class names from `LOC_synset_mapping.txt`.

    A `classes:` list may name classes or WordNet ids; only those folders are listed, which
    keeps indexing a small subset fast.
    """
    root = locate(dataset_root(spec, base_dir), "LOC_synset_mapping.txt", ["imagenet"], "imagenet")
    names = _synsets(root / "LOC_synset_mapping.txt")
    aliases = dict(names)
    wnids = list(names)
    requested = spec.classes
    if isinstance(requested, list):
        by_name = {name: wnid for wnid, name in names.items()}
        unknown = [c for c in requested if c not in names and c not in by_name]
        if unknown:
            raise unknown_classes_error(unknown, sorted(names.values()))
        wanted = {c if c in names else by_name[c] for c in requested}
        wnids = [wnid for wnid in wnids if wnid in wanted]
    label_of = {wnid: i for i, wnid in enumerate(names)}
    data = root / "ILSVRC/Data/CLS-LOC"
    rows = []
    for wnid in wnids:
        folder = data / "train" / wnid
        if not folder.is_dir():
            raise FileNotFoundError(
                f"missing training folder '{folder}'; the download is incomplete"
            )
        rows += [
            {
                "key": path.stem,
                "path": str(path),
                "label": label_of[wnid],
                "class_name": names[wnid],
                "split": "train",
            }
            for path in list_images(folder)
        ]
    solution = root / "LOC_val_solution.csv"
    if not solution.is_file():
        raise FileNotFoundError(f"missing '{solution}', which labels the val images")
    kept = set(wnids)
    with open(solution, newline="") as f:
        for record in csv.DictReader(f):
            wnid = record["PredictionString"].split()[0]
            if wnid in kept:
                rows.append(
                    {
                        "key": record["ImageId"],
                        "path": str(data / "val" / f"{record['ImageId']}.JPEG"),
                        "label": label_of[wnid],
                        "class_name": names[wnid],
                        "split": "val",
                    }
                )
    frame = manifest(rows)
    frame.attrs["class_aliases"] = aliases
    return frame
