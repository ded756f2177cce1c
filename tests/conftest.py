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
