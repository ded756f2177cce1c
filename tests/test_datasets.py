import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dafusion.datasets import class_names, few_shot, load_image, read_dataset


def test_digits_pool_and_val_are_disjoint_and_cover_all_classes(digits):
    pool, val = digits
    assert set(pool["key"]).isdisjoint(val["key"])
    assert len(pool) + len(val) == 1797
    assert sorted(pool["label"].unique()) == list(range(10))
    assert sorted(val["label"].unique()) == list(range(10))
    assert class_names(pool)[3] == "three"
    assert not pool["key"].str.contains(r"\.").any()
    image = load_image(pool.iloc[0].to_dict())
    assert image.mode == "RGB" and image.size == (32, 32)
    # 20% of each class held out, rounded up.
    counts = pd.concat([pool, val]).groupby("label").size()
    assert (val.groupby("label").size() == np.ceil(0.2 * counts)).all()


def test_reading_is_deterministic(digits):
    pool, val = read_dataset({"kind": "digits", "image_size": 32, "val_fraction": 0.2})
    pd.testing.assert_frame_equal(pool, digits[0])
    pd.testing.assert_frame_equal(val, digits[1])


def test_val_per_class_caps_the_evaluation_split():
    _, val = read_dataset({"kind": "digits", "image_size": 16, "val_per_class": 3})
    assert (val.groupby("label").size() == 3).all()


def test_few_shot_subsets_are_nested_and_seeded(digits):
    pool, _ = digits
    subsets = {k: few_shot(pool, seed=0, shots=k) for k in (1, 2, 4, 8)}
    for k, subset in subsets.items():
        assert (subset.groupby("label").size() == k).all()
    for small, large in [(1, 2), (2, 4), (4, 8)]:
        for label in range(10):
            a = subsets[small][subsets[small]["label"] == label]["key"].tolist()
            b = subsets[large][subsets[large]["label"] == label]["key"].tolist()
            assert b[:small] == a
    again = few_shot(pool.sample(frac=1.0, random_state=3), seed=0, shots=4)
    pd.testing.assert_frame_equal(again, subsets[4])
    assert set(few_shot(pool, seed=1, shots=4)["key"]) != set(subsets[4]["key"])


def test_too_few_images_names_the_class(digits):
    pool, _ = digits
    small = pool[(pool["label"] != 7) | pool.index.isin(pool.index[pool["label"] == 7][:2])]
    with pytest.raises(ValueError, match="class 'seven' has 2 training images"):
        few_shot(small, seed=0, shots=3)


def _write_images(folder, count, color):
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (20, 12), color).save(folder / f"img.{i}.jpg")


def test_imagefolder_with_held_out_split(tmp_path):
    _write_images(tmp_path / "data/red_fox", 10, (200, 0, 0))
    _write_images(tmp_path / "data/blue_jay", 5, (0, 0, 200))
    pool, val = read_dataset({"kind": "imagefolder", "root": "data", "val_fraction": 0.2}, tmp_path)
    assert class_names(pool) == ["blue jay", "red fox"]
    assert val.groupby("class_name").size().to_dict() == {"blue jay": 1, "red fox": 2}
    assert len(pool) == 12
    assert not pd.concat([pool, val])["key"].str.contains(r"\.").any()
    assert load_image(val.iloc[0].to_dict()).size == (20, 12)


def test_imagefolder_with_own_val_split(tmp_path):
    for split, n in (("train", 4), ("val", 2)):
        _write_images(tmp_path / f"data/{split}/cat", n, (1, 2, 3))
        _write_images(tmp_path / f"data/{split}/dog", n, (3, 2, 1))
    pool, val = read_dataset({"kind": "imagefolder", "root": "data"}, tmp_path)
    assert len(pool) == 8 and len(val) == 4
    assert set(val["split"]) == {"val"}
    assert val["key"].str.startswith("val_").all()


def test_imagefolder_without_class_folders_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders with images under"):
        read_dataset({"kind": "imagefolder", "root": "empty"}, tmp_path)
