import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import dafusion.stages.classifier as clf
from dafusion.data.images import encode_png
from dafusion.data.manifest import manifest
from dafusion.data.shards import read_images, write_shard
from dafusion.jobs.io import write_parquet
from dafusion.settings import ClassifierSettings
from dafusion.stages.mixing import MixingDataset, kept_variants
from dafusion.stages.synthetic import INDEX_SCHEMA

# Real image i is (10 i, 0, 0); its variant j is (10 i, 50 + 50 j, 0): a pixel names the image.
REAL = 6
M = 2  # the run reads j < 2 of the 3 variants written


def _colour(i: int, j: int | None = None) -> tuple[int, int, int]:
    return (10 * i, 0 if j is None else 50 + 50 * j, 0)


def _image(colour) -> Image.Image:
    return Image.new("RGB", (5, 3), colour)


@pytest.fixture
def mixed(tmp_path):
    """A split of 6 real images (files and bytes), 2 classes; image 5 has no variant,
    image 2's variant 1 was dropped by the safety checker."""
    rows = []
    for i in range(REAL):
        row = {"key": f"r{i}", "label": i % 2, "class_name": "ab"[i % 2], "split": "train"}
        if i % 2:
            row["image"] = encode_png(_image(_colour(i)))
        else:
            row["path"] = str(tmp_path / f"r{i}.png")
            _image(_colour(i)).save(row["path"])
        rows.append(row)
    split = manifest(rows)
    meta = {
        "label": 0, "class_name": "a", "set": "s", "strength": 0.5, "prompt": "p",
        "guidance_scale": 7.5, "scheduler": "ddim", "steps": 5, "seed": 0, "model_id": "tiny",
        "token_hash": "", "erasure": "",
    }  # fmt: skip
    written = [(i, j) for i in range(REAL - 1) for j in range(3) if (i, j) != (2, 1)]
    samples = [
        {
            "key": f"r{i}-{j:03d}",
            "image": encode_png(_image(_colour(i, j))),
            "label": i % 2,
            "meta": {**meta, "source_key": f"r{i}", "j": j},
        }
        for i, j in written
    ]
    index = [
        {**r, "dropped": False} for r in write_shard(tmp_path, "shard-000000.tar", samples, "png")
    ]
    index.append(
        {"key": "r2-001", **meta, "source_key": "r2", "j": 1, "shard": None, "dropped": True}
    )
    write_parquet(pd.DataFrame(index).sort_values("key"), tmp_path / "index.parquet", INDEX_SCHEMA)
    return split, tmp_path / "index.parquet"


def _stage_draws(split, index_path, monkeypatch, steps, batch_size, alpha, seed):
    """The (real, synthetic) draws of a classifier stage run, step by step."""
    drawn, draw = [], clf.draw_batch

    def spy(*args):
        drawn.append(draw(*args))
        return drawn[-1]

    monkeypatch.setattr(clf, "draw_batch", spy)
    settings = ClassifierSettings(
        backbone="small-cnn", image_size=8, steps=steps, batch_size=batch_size,
        eval_interval=steps, augmentation="none", synthetic_probability=alpha,
    )  # fmt: skip
    index = kept_variants(pd.read_parquet(index_path), M)
    clf.train_classifier(
        split, split, ["a", "b"], index, read_images(index_path), settings, seed=seed,
        device=torch.device("cpu"), progress=False,
    )  # fmt: skip
    return drawn


def _pixel(image: Image.Image) -> torch.Tensor:
    """The image as a tensor, and that it is one colour."""
    array = np.asarray(image)
    assert (array == array[0, 0]).all() and image.mode == "RGB"
    return torch.as_tensor(array[0, 0].astype(np.int64))


def test_its_draws_are_the_classifier_stages_in_every_epoch(mixed, monkeypatch):
    """Index by index: epoch e is steps e*S..(e+1)*S-1 of the stage's run of the same seed."""
    split, index_path = mixed
    stage = _stage_draws(split, index_path, monkeypatch, steps=6, batch_size=5, alpha=0.7, seed=3)
    data = MixingDataset(split, index_path, 0.7, batch_size=5, steps=3, seed=3, num_synthetic=M)
    for epoch in (0, 1):
        data.set_epoch(epoch)
        steps = stage[3 * epoch : 3 * epoch + 3]
        for (real, syn), (stage_real, stage_syn) in zip(data.draws(), steps, strict=True):
            assert torch.equal(real, stage_real) and torch.equal(syn, stage_syn)
    assert len(stage) == 6 and any((syn >= 0).any() for _, syn in stage)


@pytest.mark.parametrize("workers", [0, 2])
def test_it_yields_the_drawn_real_and_synthetic_images(mixed, workers):
    """Through a DataLoader with any number of workers: per step, the images of that step's
    draws in order, read from files, manifest bytes and shards; never a dropped variant or
    one beyond M; the real image's label."""
    split, index_path = mixed
    data = MixingDataset(
        split, index_path, 0.8, batch_size=4, steps=5, seed=1, num_synthetic=M, transform=_pixel
    )
    loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=workers)
    batches = list(loader)
    assert len(batches) == len(loader) == 5
    index = kept_variants(pd.read_parquet(index_path), M)
    seen = set()
    for (pixels, labels, synthetic), (real, syn) in zip(batches, data.draws(), strict=True):
        for b in range(4):
            i, s = real[b].item(), syn[b].item()
            j = None
            if s >= 0:
                j = int(index["j"][s])
                assert index["source_key"][s] == f"r{i}"
            assert pixels[b].tolist() == list(_colour(i, j)) and labels[b] == i % 2
            assert synthetic[b].item() == (s >= 0)
            seen.add((i, j))
    assert (2, 1) not in seen and all(j is None or j < M for _, j in seen)
    assert {j is None for _, j in seen} == {True, False}
