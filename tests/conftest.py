"""Shared fixtures: one tiny model per test session, digits manifests, and each dataset kind's
files in their exact on-disk format (built by helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    CARS,
    CAT,
    DOG,
    PERSON,
    cars_annotations,
    coco_split,
    polygon,
    rle,
    voc_image,
    write_image,
)
from scipy.io import savemat

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread: the tiny model's tensors are too small to gain from a second, and an op whose
# second thread waits for a busy core takes several times as long (three 10-step img2img
# calls of the tiny model: 2.1-2.7 s with one thread, 12-14 s with two, on 2 shared cores).
torch.set_num_threads(1)


# The slow tiers (pyproject.toml's markers). Plain `pytest` runs the quick tier; a slow tier
# runs when asked for: `-m workflow` (any -m expression), a test file or test named on the
# command line, or DAFUSION_TEST_TIERS=all. CI asks for every tier (.ci/run).
SLOW_TIERS = ("workflow", "cluster", "browser", "first_run")


def _asked_for_slow_tiers(config: pytest.Config) -> bool:
    if config.option.markexpr or os.environ.get("DAFUSION_TEST_TIERS") == "all":
        return True
    return any(Path(arg.split("::")[0]).is_file() for arg in config.args)


def pytest_report_header(config: pytest.Config) -> str:
    if _asked_for_slow_tiers(config):
        return "tiers: as selected"
    return (
        f"tiers: quick only (the slow tiers, {', '.join(SLOW_TIERS)}: -m <tier>, or "
        "DAFUSION_TEST_TIERS=all)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _asked_for_slow_tiers(config):
        return
    slow = [item for item in items if any(item.get_closest_marker(t) for t in SLOW_TIERS)]
    if slow:
        config.hook.pytest_deselected(items=slow)
        chosen = set(map(id, slow))
        items[:] = [item for item in items if id(item) not in chosen]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from dafusion.stages.tiny import save_tiny_model

    path = tmp_path_factory.mktemp("model") / "tiny"
    save_tiny_model(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    """The tiny random SDXL (`model.pretrained: tiny-sdxl`) as a diffusers directory."""
    from dafusion.stages.tiny import save_tiny_model

    path = tmp_path_factory.mktemp("model") / "tiny-sdxl"
    save_tiny_model(path, family="sdxl")
    return str(path)


@pytest.fixture
def components(tiny_dir):
    """Fresh components per test: inversion and token loading modify the tokenizer."""
    from dafusion.stages.models import load_components

    return load_components(tiny_dir, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def digits():
    from dafusion.data.datasets import read_dataset
    from dafusion.settings import DatasetSettings

    pool, val, _ = read_dataset(DatasetSettings(kind="digits", image_size=32, val_fraction=0.2))
    return pool, val


@pytest.fixture
def backbone_cache(tmp_path_factory, monkeypatch):
    """A Hugging Face cache holding the default backbones' weight files (empty), as on a
    machine set up for the paper: start-up checks that the weights are there (config.py).
    Opt-in and for the asking test alone, for the tests of configs whose runs would load
    them (the paper's): a test that does not ask for it sees this machine's cache, as a
    user would. Tests that load weights bring their own. Snakemake's jobs inherit it
    through the environment."""
    from huggingface_hub import constants

    from dafusion.settings import BACKBONE_WEIGHTS

    cache = tmp_path_factory.mktemp("hf-cache")
    for repo in BACKBONE_WEIGHTS.values():
        root = cache / f"models--{repo.replace('/', '--')}"
        (root / "refs").mkdir(parents=True)
        (root / "refs/main").write_text("0" * 40)
        snapshot = root / "snapshots" / ("0" * 40)
        snapshot.mkdir(parents=True)
        (snapshot / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


# Dataset kinds, each a tiny fixture in its exact on-disk format
# (tests/unit/data/test_dataset_kinds.py;
# tests/workflow/test_paper.py points config/paper.yaml at them).


@pytest.fixture
def voc(tmp_path) -> Path:
    root = tmp_path / "VOCdevkit/VOC2012"
    big, small = (slice(2, 10), slice(2, 10)), (slice(12, 14), slice(12, 14))
    train = {
        # a small person and a large dog: dog. Void borders (255) outnumber small objects.
        "2007_000001": [(PERSON, *small), (DOG, *big)],
        "2007_000002": [(DOG, *big)],
        "2007_000003": [(DOG, *small)],
        "2007_000004": [(CAT, *big), (DOG, *small)],
        "2007_000005": [(CAT, *small)],
        "2007_000006": [(PERSON, *big)],
        "2007_000007": [(PERSON, *small)],
        "2007_000008": [],  # no object: left out
    }
    val = {
        "2008_000001": [(CAT, *big)],
        "2008_000002": [(PERSON, *small), (DOG, *big)],
        "2008_000003": [(PERSON, *big)],
    }
    for image_id, objects in {**train, **val}.items():
        voc_image(root, image_id, objects)
    sets = root / "ImageSets/Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(train) + "\n")
    (sets / "val.txt").write_text("\n".join(val) + "\n")
    return tmp_path


@pytest.fixture
def coco(tmp_path) -> Path:
    root = tmp_path / "coco"
    block = np.zeros((16, 16), bool)
    block[4:12, 3:11] = True
    large_rle = {
        "category_id": 18,
        "segmentation": rle(block),
        "area": 64.0,
        "bbox": [3, 4, 8, 8],
        "iscrowd": 1,
    }
    coco_split(
        root,
        "train2017",
        {
            1: [polygon(1, 0, 0, 3), large_rle],  # small person polygon, large dog RLE: dog
            2: [polygon(18, 2, 2, 6)],
            3: [polygon(17, 2, 2, 8), polygon(1, 0, 0, 2)],
            4: [polygon(17, 1, 1, 5)],
            5: [],  # no annotation: left out
        },
    )
    coco_split(
        root,
        "val2017",
        {
            10: [polygon(17, 2, 2, 6)],
            11: [polygon(18, 2, 2, 6), polygon(1, 0, 0, 9)],
            12: [polygon(18, 1, 1, 7)],
        },
    )
    return tmp_path


@pytest.fixture
def caltech(tmp_path) -> Path:
    root = tmp_path / "caltech101/101_ObjectCategories"
    for folder, count in (
        ("accordion", 6),
        ("Faces_easy", 5),
        ("Leopards", 4),
        ("BACKGROUND_Google", 3),
    ):
        for i in range(count):
            write_image(root / folder / f"image_{i + 1:04d}.jpg", (10 * i, 0, 0))
    return tmp_path


@pytest.fixture
def flowers(tmp_path) -> Path:
    root = tmp_path / "flowers-102"
    labels = [1, 1, 1, 1, 2, 2, 2, 2, 20, 20, 20, 20]
    for i in range(1, len(labels) + 1):
        write_image(root / "jpg" / f"image_{i:05d}.jpg", (20 * i, 0, 0))
    savemat(root / "imagelabels.mat", {"labels": np.array([labels])})
    savemat(
        root / "setid.mat",
        {
            "trnid": np.array([[1, 2, 5, 6, 9, 10]]),
            "valid": np.array([[3, 7, 11]]),
            "tstid": np.array([[4, 8, 12]]),
        },
    )
    return tmp_path


@pytest.fixture
def aircraft(tmp_path) -> Path:
    data = tmp_path / "fgvc-aircraft-2013b/data"
    hierarchy = {  # variant: (family, manufacturer)
        "707-320": ("Boeing 707", "Boeing"),
        "A300B4": ("A300", "Airbus"),
        "F/A-18": ("F/A-18", "McDonnell Douglas"),
    }
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(hierarchy) + "\n")
    (data / "families.txt").write_text("\n".join(f for f, _ in hierarchy.values()) + "\n")
    (data / "manufacturers.txt").write_text("\n".join(m for _, m in hierarchy.values()) + "\n")
    image_id = 1000000
    for split, per_class in (("train", 2), ("val", 1), ("test", 1)):
        lines = {"variant": [], "family": [], "manufacturer": []}
        for variant, (family, maker) in hierarchy.items():
            for _ in range(per_class):
                image_id += 1
                write_image(data / "images" / f"{image_id}.jpg")
                for level, name in (
                    ("variant", variant),
                    ("family", family),
                    ("manufacturer", maker),
                ):
                    lines[level].append(f"{image_id} {name}")
        for level, rows in lines.items():
            (data / f"images_{level}_{split}.txt").write_text("\n".join(rows) + "\n")
    return tmp_path


@pytest.fixture
def cars(tmp_path) -> Path:
    root = tmp_path / "stanford_cars"
    (root / "devkit").mkdir(parents=True)
    savemat(root / "devkit/cars_meta.mat", {"class_names": np.array([CARS], dtype=object)})
    cars_annotations(root / "devkit/cars_train_annos.mat", root / "cars_train", [1, 2, 3] * 4)
    cars_annotations(root / "cars_test_annos_withlabels.mat", root / "cars_test", [3, 2, 1])
    return tmp_path


@pytest.fixture
def imagenet(tmp_path) -> Path:
    root = tmp_path / "imagenet"
    synsets = {
        "n01440764": "tench, Tinca tinca",
        "n01443537": "goldfish, Carassius auratus",
        "n02012849": "crane",
        "n03126707": "crane",
    }
    root.mkdir()
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{k} {v}\n" for k, v in synsets.items()))
    solution = ["ImageId,PredictionString"]
    for n, wnid in enumerate(synsets):
        for i in range(3):
            write_image(root / f"ILSVRC/Data/CLS-LOC/train/{wnid}/{wnid}_{i}.JPEG")
        image_id = f"ILSVRC2012_val_{n + 1:08d}"
        write_image(root / f"ILSVRC/Data/CLS-LOC/val/{image_id}.JPEG")
        solution.append(f"{image_id},{wnid} 1 2 10 12 {wnid} 0 0 5 5")
    (root / "LOC_val_solution.csv").write_text("\n".join(solution) + "\n")
    return tmp_path
