"""Shared fixtures: one tiny model per test session, digits manifests."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from dafusion.tiny import save_tiny_model

    path = tmp_path_factory.mktemp("model") / "tiny"
    save_tiny_model(path)
    return str(path)


@pytest.fixture
def components(tiny_dir):
    """Fresh components per test: inversion and token loading modify the tokenizer."""
    from dafusion.models import load_components

    return load_components(tiny_dir, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def digits():
    from dafusion.datasets import read_dataset
    from dafusion.settings import DatasetSettings

    pool, val, _ = read_dataset(DatasetSettings(kind="digits", image_size=32, val_fraction=0.2))
    return pool, val


@pytest.fixture(scope="session", autouse=True)
def backbone_cache(tmp_path_factory):
    """A Hugging Face cache holding the default backbones' weight files (empty), as on a
    machine set up for the paper: start-up checks that the weights are there (config.py);
    tests that load weights bring their own. Snakemake's jobs inherit it through the
    environment."""
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
    previous = os.environ.get("HF_HUB_CACHE"), constants.HF_HUB_CACHE
    os.environ["HF_HUB_CACHE"] = constants.HF_HUB_CACHE = str(cache)
    yield cache
    if previous[0] is None:
        os.environ.pop("HF_HUB_CACHE", None)
    else:
        os.environ["HF_HUB_CACHE"] = previous[0]
    constants.HF_HUB_CACHE = previous[1]
