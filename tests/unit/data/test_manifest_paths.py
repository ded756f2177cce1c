"""Where a manifest's files are found, and what files class names give.

Manifests hold image paths relative to the dataset's root, which each records: a moved
project reads its moved images, a copied one its own. File names made from class names are
bounded, so a long class name still gives a file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from helpers import write_image
from safetensors.torch import load_file

from dafusion import pipeline
from dafusion.data.datasets import few_shot
from dafusion.data.images import load_image
from dafusion.data.manifest import ROOT_KEY, file_stem, manifest, read_manifest, write_manifest
from dafusion.settings import DatasetSettings, InversionSettings, ModelSettings
from dafusion.stages.deltas import delta_path, save_delta

BLUE, RED = (0, 0, 200), (200, 0, 0)
SPLITS = Path("results/photos/splits")


def _photos(project: Path) -> None:
    for i in range(3):
        write_image(project / f"data/photos/bird/{i}.png", BLUE)
        write_image(project / f"data/photos/cat/{i}.png", RED)


def _index(root: str = "data/photos") -> list[str]:
    """index_dataset as the workflow runs it, from the project folder: the pool, val and
    test manifests."""
    paths = [str(SPLITS / f"{name}.parquet") for name in ("pool", "val", "test")]
    spec = DatasetSettings(kind="imagefolder", root=root, val_fraction=0.2)
    pipeline.index_dataset(spec, *paths, str(SPLITS / "masks"))
    return paths


def _colors(path: str) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(color read, color of its class) of each image of a manifest read from here."""
    frame = read_manifest(path)
    expected = {"bird": BLUE, "cat": RED}
    return [
        (load_image(row).getpixel((0, 0)), expected[row["class_name"]])
        for row in frame.to_dict("records")
    ]


def test_a_moved_project_reads_its_moved_images(tmp_path, monkeypatch):
    old, new = tmp_path / "project", tmp_path / "elsewhere/project"
    _photos(old)
    monkeypatch.chdir(old)
    pool, val, _ = _index()
    split = str(SPLITS / "seed0-shots1.parquet")
    pipeline.few_shot_split(pool, seed=0, shots=1, output=split)
    halves = [str(SPLITS / f"seed0-{name}.parquet") for name in ("pool", "val")]
    pipeline.seed_split(pool, 0, *halves)
    for path in (pool, val, split, *halves):
        assert pd.read_parquet(path)["path"].str.fullmatch(r"(bird|cat)/[0-2]\.png").all()
        assert pq.read_schema(path).metadata[ROOT_KEY.encode()] == b"data/photos"
    new.parent.mkdir()
    shutil.move(old, new)
    monkeypatch.chdir(new)
    for path in (pool, val, split, *halves):
        assert read_manifest(path)["path"].str.startswith("data/photos/").all()
        colors = _colors(path)
        assert colors and all(got == want for got, want in colors)


def test_a_copied_project_reads_its_own_images(tmp_path, monkeypatch):
    original, copy = tmp_path / "original", tmp_path / "copy"
    _photos(original)
    monkeypatch.chdir(original)
    pool = _index()[0]
    shutil.copytree(original, copy)
    for image in (original / "data/photos").rglob("*.png"):
        write_image(image, (0, 255, 0))  # the original's images change; the copy's do not
    monkeypatch.chdir(copy)
    colors = _colors(pool)
    assert len(colors) == 4 and all(got == want for got, want in colors)


def test_files_outside_the_root_keep_absolute_paths_and_a_root_outside_stays(tmp_path):
    inside = tmp_path / "data/photos/cat/0.png"
    outside = tmp_path / "hf-cache/blobs/1.png"
    for path in (inside, outside):
        write_image(path)
    rows = [
        {"key": f"k{i}", "path": str(p), "label": 0, "class_name": "cat", "split": "train"}
        for i, p in enumerate((inside, outside))
    ]
    frame = manifest(rows)
    frame.attrs[ROOT_KEY] = str(tmp_path / "data/photos")  # a root written absolute
    write_manifest(frame, tmp_path / "m.parquet")
    assert pd.read_parquet(tmp_path / "m.parquet")["path"].tolist() == ["cat/0.png", str(outside)]
    assert read_manifest(tmp_path / "m.parquet")["path"].tolist() == [str(inside), str(outside)]


def test_a_moved_dataset_with_masks_reads_images_and_masks(voc, tmp_path, monkeypatch):
    monkeypatch.chdir(voc)
    out = Path("results/voc/splits")
    paths = [str(out / f"{name}.parquet") for name in ("pool", "val", "test")]
    spec = DatasetSettings(kind="pascal", root="VOCdevkit")
    pipeline.index_dataset(spec, *paths, str(out / "masks"))
    split = str(out / "seed0-shots1.parquet")
    pipeline.few_shot_split(paths[0], seed=0, shots=1, output=split)
    stored = pd.read_parquet(split)
    assert stored["path"].str.fullmatch(r"VOC2012/JPEGImages/\d{4}_\d{6}\.jpg").all()
    assert (stored["mask_path"] == "masks/" + stored["key"] + ".png").all()
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    shutil.move(voc, moved)
    monkeypatch.chdir(moved)
    frame = read_manifest(split)
    assert len(frame) == 3
    for row in frame.to_dict("records"):
        assert load_image(row).size == (16, 16)
        assert Path(row["mask_path"]).is_file()


# File names made from class names ---------------------------------------------------------

LONG = "a" * 250
SAME_START = "a" * 200 + "b" * 50  # shares LONG's first 200 characters
ACCENTED = "crème brûlée " * 20  # multi-byte characters


def test_long_class_names_give_bounded_distinct_delta_files(tmp_path):
    paths = [delta_path(tmp_path, name) for name in (LONG, SAME_START, ACCENTED)]
    for path in paths:
        save_delta(path, {"w": torch.ones(1)}, torch.float32, {})
        assert path.is_file() and len(path.name.encode()) <= 255
    assert len(set(paths)) == 3
    # Short names keep their files, so existing results keep their paths.
    assert delta_path(tmp_path, "giant white arum lily").name == "giant-white-arum-lily.safetensors"
    assert delta_path(tmp_path, "café").name == "cafe-850f7dc4.safetensors"
    assert delta_path(tmp_path, None).name == "joint.safetensors"


def test_a_file_stem_is_bounded_in_bytes_on_a_character_boundary():
    name = "猫" * 100 + "x"  # 301 bytes in UTF-8
    stem = file_stem(name)
    assert len(stem.encode()) <= 100 and stem.startswith("猫" * 27)
    assert stem == file_stem(name) != file_stem("猫" * 100 + "y")
    assert file_stem("猫" * 33) == "猫" * 33  # 99 bytes: fits


@pytest.mark.parametrize("names", [(LONG, SAME_START)])
def test_tokens_of_long_class_names_export_to_bounded_files(tiny_dir, digits, tmp_path, names):
    pool = digits[0]
    split = few_shot(pool[pool["label"] < 2], seed=0, shots=1)
    split = split.assign(class_name=split["label"].map(dict(enumerate(names))))
    split.to_parquet(tmp_path / "split.parquet")
    pipeline.invert(
        str(tmp_path / "split.parquet"),
        ModelSettings(pretrained="tiny", resolution=32, device="cpu"),
        InversionSettings(steps=1, batch_size=1),
        seed=0,
        output=str(tmp_path / "tokens.safetensors"),
        model_dir=tiny_dir,
        export_dir=str(tmp_path / "export"),
    )
    files = sorted((tmp_path / "export").iterdir())
    assert len(files) == 2 and all(len(f.name.encode()) <= 255 for f in files)
    tokens = load_file(str(tmp_path / "tokens.safetensors"))
    for file in files:
        ((token, tensor),) = load_file(str(file)).items()
        torch.testing.assert_close(tensor, tokens[token])
