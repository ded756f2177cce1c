import unicodedata

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dafusion.data.datasets import few_shot, read_dataset
from dafusion.data.images import load_image
from dafusion.data.manifest import MANIFEST_COLUMNS, class_names, class_token, sanitize_key
from dafusion.data.readers import index_keys
from dafusion.settings import DatasetSettings
from dafusion.stages.tokens import add_to_tokenizer, expand


def _read(spec: dict, base_dir=".") -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return read_dataset(DatasetSettings(**spec), base_dir)


def test_digits_pool_and_val_are_disjoint_and_cover_all_classes(digits):
    pool, val = digits[0], digits[1]
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
    pool, val, test = _read({"kind": "digits", "image_size": 32, "val_fraction": 0.2})
    pd.testing.assert_frame_equal(pool, digits[0])
    pd.testing.assert_frame_equal(val, digits[1])
    assert test.empty and list(test.columns) == MANIFEST_COLUMNS


def test_val_per_class_caps_the_evaluation_split():
    _, val, _ = _read({"kind": "digits", "image_size": 16, "val_per_class": 3})
    assert (val.groupby("label").size() == 3).all()


def test_few_shot_subsets_are_nested_and_seeded(digits):
    pool = digits[0]
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
    pool = digits[0]
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
    pool, val, _ = _read({"kind": "imagefolder", "root": "data", "val_fraction": 0.2}, tmp_path)
    assert class_names(pool) == ["blue jay", "red fox"]
    assert val.groupby("class_name").size().to_dict() == {"blue jay": 1, "red fox": 2}
    assert len(pool) == 12
    assert not pd.concat([pool, val])["key"].str.contains(r"\.").any()
    assert load_image(val.iloc[0].to_dict()).size == (20, 12)


def test_imagefolder_with_own_val_split(tmp_path):
    for split, n in (("train", 4), ("val", 2)):
        _write_images(tmp_path / f"data/{split}/cat", n, (1, 2, 3))
        _write_images(tmp_path / f"data/{split}/dog", n, (3, 2, 1))
    pool, val, _ = _read({"kind": "imagefolder", "root": "data"}, tmp_path)
    assert len(pool) == 8 and len(val) == 4
    assert set(val["split"]) == {"val"}
    assert val["key"].str.startswith("val_").all()


def test_imagefolder_without_class_folders_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders with images under"):
        _read({"kind": "imagefolder", "root": "empty"}, tmp_path)


def test_imagefolder_test_folder_becomes_the_test_split(tmp_path):
    for split, n in (("train", 3), ("test", 1)):
        _write_images(tmp_path / f"data/{split}/cat", n, (1, 2, 3))
        _write_images(tmp_path / f"data/{split}/dog", n, (3, 2, 1))
    pool, val, test = _read({"kind": "imagefolder", "root": "data"}, tmp_path)
    assert (len(pool), len(val), len(test)) == (4, 2, 2)
    assert set(test["split"]) == {"test"}


def _saved(tmp_path, image: Image.Image, fmt: str, **kwargs) -> dict:
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, format=fmt, **kwargs)
    return {"key": "k", "path": str(path), "image": None}


def test_load_image_converts_every_mode_to_rgb(tmp_path):
    gray = Image.new("L", (6, 4), 80)
    assert load_image(_saved(tmp_path, gray, "PNG")).getpixel((0, 0)) == (80, 80, 80)
    palette = Image.new("P", (6, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert load_image(_saved(tmp_path, palette, "PNG")).getpixel((0, 0)) == (10, 200, 30)
    clear = Image.new("RGBA", (6, 4), (255, 0, 0, 0))  # transparent: white, not red
    assert load_image(_saved(tmp_path, clear, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (6, 4), (0, 255, 255, 0))
    red = load_image(_saved(tmp_path, cmyk, "TIFF")).getpixel((0, 0))
    assert red == (255, 0, 0)
    deep = Image.fromarray(np.full((4, 6), 32896, np.uint16))  # 16-bit gray, 50%
    assert load_image(_saved(tmp_path, deep, "PNG")).getpixel((0, 0)) == (128, 128, 128)


def test_load_image_applies_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    row = _saved(tmp_path, Image.new("RGB", (20, 10), "blue"), "JPEG", exif=exif)
    assert load_image(row).size == (10, 20)


def test_unreadable_image_is_named(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8 not really")
    with pytest.raises(OSError, match=f"cannot read image '{path}' \\(key 'k'\\)"):
        load_image({"key": "k", "path": str(path), "image": None})


def test_index_keys_leave_out_what_reading_does_not_depend_on():
    digits = index_keys(DatasetSettings(kind="digits"))
    assert "image_size" in digits and "kind" in digits
    assert not {"label_level", "hf_config", "allow_fewer"} & set(digits)
    assert "label_level" in index_keys(DatasetSettings(kind="fgvc_aircraft", root="data"))


def test_folders_with_the_same_class_name_are_an_error(tmp_path):
    _write_images(tmp_path / "data/red fox", 3, (200, 0, 0))
    _write_images(tmp_path / "data/red_fox", 3, (190, 0, 0))
    with pytest.raises(ValueError, match="'red fox', 'red_fox' .* same class name 'red fox'"):
        _read({"kind": "imagefolder", "root": "data"}, tmp_path)


def test_classes_with_the_same_token_are_an_error(tmp_path):
    _write_images(tmp_path / "data/Cat", 3, (200, 0, 0))
    _write_images(tmp_path / "data/cat", 3, (190, 0, 0))
    message = "'Cat', 'cat' give the same class token '<cat>' .*; rename one, or merge them"
    with pytest.raises(ValueError, match=message):
        _read({"kind": "imagefolder", "root": "data"}, tmp_path)


def test_class_tokens_of_ascii_names_are_kept_and_other_names_gain_a_hash():
    """ASCII names keep their tokens, and so their delta files and learned embeddings."""
    names = ["giant white arum lily", "Cat", "red-fox 2", "???", "café", "Ölbaum", "猫"]
    assert [class_token(name) for name in names] == [
        "<giant-white-arum-lily>",
        "<cat>",
        "<red-fox-2>",
        "<class>",
        "<cafe-850f7dc4>",
        "<olbaum-2d7f7b1a>",  # sha256("ölbaum"): case-folded
        "<class-a810bf84>",
    ]


# Cat and dog in Chinese, Japanese and Arabic, and as emoji.
OTHER_SCRIPTS = ["猫", "狗", "ねこ", "いぬ", "قطة", "كلب", "🐱", "🐶"]


def test_names_in_other_scripts_give_distinct_single_tokens(components):
    tokens = [class_token(name) for name in OTHER_SCRIPTS]
    assert len(set(tokens)) == len(tokens)
    tokenizer = components.tokenizer
    ids = add_to_tokenizer(tokenizer, tokens, num_vectors=2)
    for c, token in enumerate(tokens):
        prompt = expand(f"a photo of a {token}", token, 2)
        assert tokenizer(prompt, add_special_tokens=False).input_ids[-2:] == ids[2 * c : 2 * c + 2]


def test_a_name_gives_one_token_and_key_in_either_unicode_form():
    for text in ["café", "Ölbaum/Blätter 1", "がっこう"]:
        composed, decomposed = (unicodedata.normalize(form, text) for form in ("NFC", "NFD"))
        assert composed != decomposed
        assert class_token(decomposed) == class_token(composed)
        assert sanitize_key(decomposed) == sanitize_key(composed)


def test_accents_tell_names_outside_ascii_apart_and_case_does_not(tmp_path):
    for name in ("cafe", "café", "Ölbaum"):
        _write_images(tmp_path / "data" / name, 3, (200, 0, 0))
    pool, val, _ = _read({"kind": "imagefolder", "root": "data"}, tmp_path)
    names = class_names(pool)
    assert sorted(names) == ["cafe", "café", "Ölbaum"]
    assert len({class_token(name) for name in names}) == 3
    assert len(set(pd.concat([pool, val])["key"])) == 9
    # Case: as 'Cat' and 'cat', 'Café' and 'café' are one token, and index_dataset says so
    assert class_token("Café") == class_token("café") == class_token("CAFÉ")
    _write_images(tmp_path / "data" / "Café", 3, (0, 200, 0))
    with pytest.raises(ValueError, match=r"classes 'Café', 'café' give the same class token"):
        _read({"kind": "imagefolder", "root": "data"}, tmp_path)


def test_empty_and_symlinked_folders_are_skipped_by_name(tmp_path, caplog):
    _write_images(tmp_path / "data/cat", 3, (200, 0, 0))
    _write_images(tmp_path / "data/dog", 3, (0, 0, 200))
    (tmp_path / "data/empty").mkdir()
    (tmp_path / "data/everything").symlink_to(tmp_path / "data")
    pool, val, _ = _read({"kind": "imagefolder", "root": "data"}, tmp_path)
    assert class_names(pool) == ["cat", "dog"] and len(pool) + len(val) == 6
    assert "'empty': no images" in caplog.text.replace(str(tmp_path / "data") + "/", "'")
    assert "everything': a symlink (not followed)" in caplog.text


def test_a_class_left_without_readable_images_is_named(tmp_path):
    _write_images(tmp_path / "data/cat", 3, (200, 0, 0))
    (tmp_path / "data/dog").mkdir()
    for i in range(3):
        (tmp_path / f"data/dog/{i}.jpg").write_bytes(b"not a jpeg")
    spec = {"kind": "imagefolder", "root": "data", "skip_corrupt": True}
    with pytest.raises(ValueError, match="class 'dog' has no readable training images left"):
        _read(spec, tmp_path)


def test_a_one_image_class_is_not_told_to_lower_val_fraction(tmp_path):
    _write_images(tmp_path / "data/cat", 3, (200, 0, 0))
    _write_images(tmp_path / "data/dog", 1, (0, 0, 200))
    with pytest.raises(ValueError, match="'dog' has 1 image.*; add images, or give") as error:
        _read({"kind": "imagefolder", "root": "data"}, tmp_path)
    assert "val_fraction" not in str(error.value)


def test_an_evaluation_class_without_training_images_names_both_folders(tmp_path):
    _write_images(tmp_path / "data/train/cat", 3, (200, 0, 0))
    (tmp_path / "data/train/dog").mkdir()
    _write_images(tmp_path / "data/val/cat", 1, (200, 0, 0))
    _write_images(tmp_path / "data/val/dog", 1, (0, 0, 200))
    with pytest.raises(ValueError, match="training folder '.*train/dog' has no images"):
        _read({"kind": "imagefolder", "root": "data"}, tmp_path)


def _no_val_dog(tmp_path):
    _write_images(tmp_path / "data/train/cat", 3, (200, 0, 0))
    _write_images(tmp_path / "data/train/dog", 3, (0, 0, 200))
    _write_images(tmp_path / "data/train/owl", 3, (0, 200, 0))
    _write_images(tmp_path / "data/val/cat", 1, (200, 0, 0))
    _write_images(tmp_path / "data/val/owl", 1, (0, 200, 0))


def test_a_class_without_evaluation_images_stops_indexing_naming_it(tmp_path):
    _no_val_dog(tmp_path)
    with pytest.raises(ValueError, match="class 'dog' has no evaluation images.*unevaluated_"):
        _read({"kind": "imagefolder", "root": "data"}, tmp_path)


def test_unevaluated_classes_drop_leaves_the_class_out_with_a_warning(tmp_path, caplog):
    _no_val_dog(tmp_path)
    spec = {"kind": "imagefolder", "root": "data", "unevaluated_classes": "drop"}
    pool, val, _ = _read(spec, tmp_path)
    assert class_names(pool) == class_names(val) == ["cat", "owl"]
    assert sorted(pool["label"].unique()) == [0, 1]
    assert "dropped class 'dog': no evaluation images" in caplog.text


def test_skipped_images_are_as_if_they_never_existed(tmp_path, caplog):
    """skip_corrupt runs before the hold-out: the splits equal those of a dataset without
    the unreadable files, so no class loses its evaluation images to them."""
    for root, corrupt in ((tmp_path / "a", True), (tmp_path / "b", False)):
        _write_images(root / "data/cat", 6, (200, 0, 0))
        _write_images(root / "data/dog", 6, (0, 0, 200))
        for path in sorted((root / "data/dog").iterdir())[:3]:
            if corrupt:
                path.write_bytes(b"not an image")
            else:
                path.unlink()
    spec = {"kind": "imagefolder", "root": "data", "skip_corrupt": True, "val_fraction": 0.4}
    skipped = _read(spec, tmp_path / "a")
    assert "skipped unreadable" in caplog.text
    absent = _read(spec, tmp_path / "b")
    for got, expected in zip(skipped, absent, strict=True):
        assert got["key"].tolist() == expected["key"].tolist()


@pytest.mark.parametrize("junk", [".thumbs", ".ipynb_checkpoints", "__MACOSX", "@eaDir"])
def test_hidden_and_system_folders_and_files_are_no_data(tmp_path, junk, caplog):
    """What file managers, archivers and notebooks leave beside images is skipped, named in
    the log: as a class folder, inside a class folder, and as AppleDouble `._` files."""
    _write_images(tmp_path / "data/cat", 3, (1, 2, 3))
    _write_images(tmp_path / "data/dog", 3, (3, 2, 1))
    _write_images(tmp_path / "data" / junk, 2, (9, 9, 9))
    _write_images(tmp_path / "data/cat" / junk, 2, (9, 9, 9))
    (tmp_path / "data/dog/._img.0.jpg").write_bytes(b"\x00\x05\x16\x07 not an image")
    with caplog.at_level("WARNING"):
        pool, val, _ = _read(
            {"kind": "imagefolder", "root": "data", "val_fraction": 0.34}, tmp_path
        )
    assert class_names(pool) == ["cat", "dog"]
    assert len(pool) + len(val) == 6
    assert f"skipped folder '{tmp_path / 'data' / junk}': hidden or system" in caplog.text
    assert "skipped 2 hidden or system files under" in caplog.text
    assert "skipped 1 hidden or system files under" in caplog.text


def test_an_empty_test_folder_counts_as_absent(tmp_path, caplog):
    for split in ("train", "val"):
        _write_images(tmp_path / f"data/{split}/cat", 2, (1, 2, 3))
        _write_images(tmp_path / f"data/{split}/dog", 2, (3, 2, 1))
    (tmp_path / "data/test").mkdir()
    with caplog.at_level("WARNING"):
        pool, val, test = _read({"kind": "imagefolder", "root": "data"}, tmp_path)
    assert (len(pool), len(val), len(test)) == (4, 4, 0)
    assert f"'{tmp_path / 'data/test'}' holds no images: read as if it were absent" in caplog.text


def test_too_few_images_names_the_dataset_the_class_and_its_count(digits, tmp_path, caplog):
    """few_shot_split's check, the job that stops a cell short of images, names the
    `datasets:` entry as well as the class: a grid of datasets can share class names."""
    import re

    from dafusion import pipeline
    from dafusion.data.manifest import write_manifest

    pool = digits[0]
    pool = pool[(pool["label"] != 7) | pool.index.isin(pool.index[pool["label"] == 7][:2])]
    write_manifest(pool, tmp_path / "pool.parquet")
    split = dict(pool_path=str(tmp_path / "pool.parquet"), seed=0, shots=3, dataset="digits")
    out = tmp_path / "seed0-shots3.parquet"
    message = (
        "dataset 'digits': class 'seven' has 2 training images, fewer than "
        "examples_per_class=3; lower it, add images, or set allow_fewer: true in "
        "datasets.digits to keep what exists"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        pipeline.few_shot_split(**split, output=str(out))
    assert not out.exists()
    with caplog.at_level("WARNING"):
        pipeline.few_shot_split(**split, output=str(out), allow_fewer=True)
    assert "dataset 'digits': class 'seven' has 2 training images" in caplog.text
    assert len(pd.read_parquet(out)) == 9 * 3 + 2
