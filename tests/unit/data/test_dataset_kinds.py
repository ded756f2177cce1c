"""Every dataset kind, read from a tiny fixture in its exact on-disk format."""

from __future__ import annotations

import json
import logging
import re
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import CARS, spurge_images, write_image
from PIL import Image

from dafusion import pipeline
from dafusion.data.datasets import few_shot, halve_per_seed, read_dataset
from dafusion.data.images import load_image
from dafusion.data.manifest import MANIFEST_COLUMNS, class_names, resolve_masks
from dafusion.data.readers.fine_grained import FLOWERS102_CLASSES
from dafusion.data.shards import encode_image, read_images, write_shard
from dafusion.settings import DatasetSettings

# pycocotools' own numpy-2 deprecation, raised inside its RLE decoder.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _read(spec: dict, root: Path, **kwargs):
    return read_dataset(DatasetSettings(**spec), root, mask_dir=root / "masks", **kwargs)


def _mask(row) -> np.ndarray:
    """A row's mask: `read_dataset` gives `mask_path` as a file to open."""
    return np.asarray(Image.open(row["mask_path"])) > 127


def _assert_nested(pool: pd.DataFrame, seed: int = 0) -> None:
    small, large = few_shot(pool, seed, 1), few_shot(pool, seed, 2)
    for label in pool["label"].unique():
        a = small[small["label"] == label]["key"].tolist()
        b = large[large["label"] == label]["key"].tolist()
        assert b[:1] == a and len(b) == 2


def _assert_deterministic(spec: dict, root: Path, first: tuple) -> None:
    for a, b in zip(first, _read(spec, root), strict=True):
        pd.testing.assert_frame_equal(a, b)


# PASCAL VOC ---------------------------------------------------------------------------


def test_pascal_labels_the_largest_instance_and_keeps_its_mask(voc):
    spec = {"kind": "pascal", "root": "VOCdevkit"}
    pool, val, test = _read(spec, voc)
    assert class_names(pool) == ["cat", "dog", "person"]  # VOC's own order
    assert pool.set_index("key")["class_name"].to_dict() == {
        "2007_000001": "dog",
        "2007_000002": "dog",
        "2007_000003": "dog",
        "2007_000004": "cat",
        "2007_000005": "cat",
        "2007_000006": "person",
        "2007_000007": "person",
    }  # 2007_000008 has no object
    assert val.set_index("key")["class_name"].to_dict() == {
        "2008_000001": "cat",
        "2008_000002": "dog",
        "2008_000003": "person",
    }
    assert test.empty and list(test.columns) == [*MANIFEST_COLUMNS, "mask_path"]
    row = pool.set_index("key").loc["2007_000001"].to_dict() | {"key": "2007_000001"}
    expected = np.zeros((16, 16), bool)
    expected[2:10, 2:10] = True
    np.testing.assert_array_equal(_mask(row), expected)
    assert row["mask_path"] == str(voc / "masks/2007_000001.png")
    assert load_image(row).size == (16, 16)
    _assert_nested(pool)
    _assert_deterministic(spec, voc, (pool, val, test))


def test_pascal_class_names_are_the_original_codes():
    """semantic_aug/datasets/pascal.py lines 28-31 of the original DA-Fusion code, in VOC's
    label order: the names its Real Guidance prompts and ESD erasures used."""
    from dafusion.data.readers.segmentation import VOC_CLASSES

    assert VOC_CLASSES == [
        "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
        "dining table", "dog", "horse", "motorcycle", "person", "potted plant", "sheep",
        "sofa", "train", "television",
    ]  # fmt: skip


def test_pascal_index_step_writes_every_manifest_and_the_masks(voc):
    out = voc / "results/voc/splits"
    paths = [out / f"{name}.parquet" for name in ("pool", "val", "test")]
    pipeline.index_dataset(
        DatasetSettings(kind="pascal", root="VOCdevkit"),
        *map(str, paths),
        str(out / "masks"),
        base_dir=str(voc),
    )
    pool, val, test = (pd.read_parquet(p) for p in paths)
    assert len(pool) == 7 and len(val) == 3 and test.empty
    assert list(test.columns) == list(pool.columns) == [*MANIFEST_COLUMNS, "mask_path"]
    assert sorted(p.stem for p in (out / "masks").iterdir()) == sorted([*pool["key"], *val["key"]])


def test_manifests_name_masks_relative_to_their_folder_so_results_can_move(voc):
    """No results location enters a manifest: two results folders get the same bytes, and
    the masks of a moved results folder still open (issue 30)."""
    written = []
    for results in ("results", "elsewhere/deeper"):
        out = voc / results / "voc/splits"
        paths = [str(out / f"{name}.parquet") for name in ("pool", "val", "test")]
        pipeline.index_dataset(
            DatasetSettings(kind="pascal", root="VOCdevkit"), *paths, str(out / "masks"),
            base_dir=str(voc),
        )  # fmt: skip
        written.append([Path(p).read_bytes() for p in paths])
    assert written[0] == written[1]
    shutil.move(voc / "results", voc / "moved")
    folder = voc / "moved/voc/splits"
    pool = resolve_masks(pd.read_parquet(folder / "pool.parquet"), folder)
    assert pool["mask_path"].map(lambda p: Path(p).is_file()).all()


# COCO ---------------------------------------------------------------------------------


def test_coco_labels_the_largest_annotation_polygon_or_rle(coco):
    spec = {"kind": "coco", "root": "coco"}
    pool, val, test = _read(spec, coco)
    assert class_names(pool) == ["cat", "dog"]  # no person is largest in train: dropped
    labels = pool.set_index("key")["class_name"].to_dict()
    assert labels == {
        "train2017-000000000001": "dog",
        "train2017-000000000002": "dog",
        "train2017-000000000003": "cat",
        "train2017-000000000004": "cat",
    }
    # val image 11's largest object is a person, a class with no training images
    assert val.set_index("key")["class_name"].to_dict() == {
        "val2017-000000000010": "cat",
        "val2017-000000000012": "dog",
    }
    assert test.empty
    rows = pool.set_index("key")
    expected = np.zeros((16, 16), bool)
    expected[4:12, 3:11] = True
    np.testing.assert_array_equal(_mask(rows.loc["train2017-000000000001"]), expected)
    polygon = _mask(rows.loc["train2017-000000000002"])
    assert polygon[3:8, 3:8].all() and not polygon[10:, :].any()
    _assert_nested(pool)
    _assert_deterministic(spec, coco, (pool, val, test))


# Caltech101 ---------------------------------------------------------------------------


def test_caltech101_names_and_held_out_split(caltech):
    spec = {"kind": "caltech101", "root": "caltech101"}
    pool, val, test = _read(spec, caltech)
    assert class_names(pool) == ["accordion", "faces easy", "leopards"]
    assert pd.concat([pool, val]).groupby("class_name").size().to_dict() == {
        "accordion": 6,
        "faces easy": 5,
        "leopards": 4,
    }
    assert val.groupby("class_name").size().to_dict() == {
        "accordion": 2,
        "faces easy": 1,
        "leopards": 1,
    }
    assert test.empty and "accordion_image_0001" in set(pool["key"]) | set(val["key"])
    _assert_nested(pool)
    _assert_deterministic(spec, caltech, (pool, val, test))


def test_original_code_split_halves_each_class_per_seed(caltech):
    spec = {
        "kind": "caltech101",
        "root": "caltech101/101_ObjectCategories",
        "split_protocol": "original-code",
    }
    everything, val, test = _read(spec, caltech)
    assert len(everything) == 15 and val.empty and test.empty
    train0, val0 = halve_per_seed(everything, seed=0)
    assert set(train0["key"]).isdisjoint(val0["key"]) and len(train0) + len(val0) == 15
    assert train0.groupby("class_name").size().to_dict() == {
        "accordion": 3,
        "faces easy": 3,
        "leopards": 2,
    }
    assert set(val0["split"]) == {"val"}
    # the original code: one generator, one permutation per class in label order, halves
    rng = np.random.default_rng(0)
    expected = []
    for _, group in everything.sort_values("key").groupby("label"):
        expected += (
            group["key"].to_numpy()[np.array_split(rng.permutation(len(group)), 2)[0]].tolist()
        )
    assert sorted(expected) == train0["key"].tolist()
    again = halve_per_seed(everything.sample(frac=1.0, random_state=1), seed=0)
    pd.testing.assert_frame_equal(again[1], val0)
    assert halve_per_seed(everything, seed=1)[1]["key"].tolist() != val0["key"].tolist()


def test_class_subsets_are_reindexed_in_name_order(caltech):
    spec = {"kind": "caltech101", "root": "caltech101", "classes": ["leopards", "accordion"]}
    pool, val, _ = _read(spec, caltech)
    assert class_names(pool) == ["accordion", "leopards"] and class_names(val) == class_names(pool)
    drawn = _read({**spec, "classes": 2}, caltech)[0]
    assert drawn["label"].nunique() == 2 and class_names(drawn) == sorted(class_names(drawn))
    pd.testing.assert_frame_equal(drawn, _read({**spec, "classes": 2}, caltech)[0])
    with pytest.raises(ValueError, match="more classes than the 3"):
        _read({**spec, "classes": 4}, caltech)


def test_unknown_class_is_named_with_the_available_ones(caltech):
    spec = {"kind": "caltech101", "root": "caltech101", "classes": ["accordion", "banjo"]}
    with pytest.raises(
        ValueError, match=r"'banjo'.*3 available classes: accordion, faces easy, leopards"
    ):
        _read(spec, caltech)


def test_too_few_images_is_an_error_unless_allowed(caltech, caplog):
    pool = _read({"kind": "caltech101", "root": "caltech101"}, caltech)[0]
    with pytest.raises(ValueError, match="class 'leopards' has 3 training images.*allow_fewer"):
        few_shot(pool, seed=0, shots=4)
    with caplog.at_level(logging.WARNING):
        subset = few_shot(pool, seed=0, shots=4, allow_fewer=True)
    assert subset.groupby("class_name").size().to_dict() == {
        "accordion": 4,
        "faces easy": 4,
        "leopards": 3,
    }
    assert "class 'leopards' has 3 training images" in caplog.text and "allow_fewer" in caplog.text
    assert few_shot(pool, seed=0, shots=2).groupby("label").size().eq(2).all()


def test_corrupt_image_is_named_or_skipped(caltech, caplog):
    bad = caltech / "caltech101/101_ObjectCategories/accordion/image_0003.jpg"
    bad.write_bytes(b"not a jpeg")
    spec = {"kind": "caltech101", "root": "caltech101"}
    with pytest.raises(ValueError, match=f"cannot read image '{bad}'.*skip_corrupt"):
        _read(spec, caltech)
    truncated = caltech / "caltech101/101_ObjectCategories/Leopards/image_0001.jpg"
    Image.new("RGB", (64, 64), "red").save(truncated, quality=100)
    truncated.write_bytes(truncated.read_bytes()[:400])
    bad.unlink()
    with pytest.raises(ValueError, match=f"cannot read image '{truncated}'.*[Tt]runcated"):
        _read(spec, caltech)  # a header check would pass it; training would fail on it
    bad.write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING):
        pool, val, _ = _read({**spec, "skip_corrupt": True}, caltech)
    keys = set(pool["key"]) | set(val["key"])
    assert (
        len(keys) == 13 and "accordion_image_0003" not in keys and "Leopards_image_0001" not in keys
    )
    assert str(bad) in caplog.text and str(truncated) in caplog.text


# Flowers102 ---------------------------------------------------------------------------


def test_flowers102_uses_setid_splits_and_the_oxford_names(flowers):
    assert len(FLOWERS102_CLASSES) == len(set(FLOWERS102_CLASSES)) == 102
    spec = {"kind": "flowers102", "root": "."}
    pool, val, test = _read(spec, flowers)
    assert class_names(pool) == [
        "pink primrose",
        "hard-leaved pocket orchid",
        "giant white arum lily",
    ]
    assert pool["key"].tolist() == [
        "image_00001",
        "image_00002",
        "image_00005",
        "image_00006",
        "image_00009",
        "image_00010",
    ]
    assert val["key"].tolist() == ["image_00003", "image_00007", "image_00011"]
    assert test["key"].tolist() == ["image_00004", "image_00008", "image_00012"]
    assert test.set_index("key").loc["image_00012", "class_name"] == "giant white arum lily"
    _assert_nested(pool)
    _assert_deterministic(spec, flowers, (pool, val, test))
    everything, val, test = _read({**spec, "split_protocol": "original-code"}, flowers)
    assert len(everything) == 12 and val.empty and test.empty


# FGVC Aircraft ------------------------------------------------------------------------


def test_fgvc_aircraft_levels_and_own_splits(aircraft):
    spec = {"kind": "fgvc_aircraft", "root": "fgvc-aircraft-2013b"}
    pool, val, test = _read(spec, aircraft)
    assert class_names(pool) == ["707-320", "A300B4", "F/A-18"]
    assert (len(pool), len(val), len(test)) == (6, 3, 3)
    assert set(test["split"]) == {"test"} and not pool["key"].str.contains(r"\.").any()
    _assert_nested(pool)
    _assert_deterministic(spec, aircraft, (pool, val, test))
    makers = _read({**spec, "label_level": "manufacturer"}, aircraft)[0]
    assert class_names(makers) == ["Boeing", "Airbus", "McDonnell Douglas"]
    assert makers["key"].tolist() == pool["key"].tolist()


# Stanford Cars ------------------------------------------------------------------------


def test_stanford_cars_torchvision_layout(cars):
    spec = {"kind": "stanford_cars", "root": "."}
    pool, val, test = _read(spec, cars)
    assert class_names(pool) == CARS
    assert (len(pool), len(val), len(test)) == (9, 3, 3)
    assert test.set_index("key")["class_name"].to_dict() == {
        "cars_test-00001": CARS[2],
        "cars_test-00002": CARS[1],
        "cars_test-00003": CARS[0],
    }
    assert pool.set_index("key").loc["cars_train-00002", "class_name"] == CARS[1]
    _assert_nested(pool)
    _assert_deterministic(spec, cars, (pool, val, test))


# Leafy Spurge -------------------------------------------------------------------------


def test_leafy_spurge_from_folders(tmp_path):
    spurge_images(tmp_path / "spurge", {"absent": 6, "apparent": 4})
    spec = {"kind": "leafy_spurge", "root": "spurge"}
    pool, val, test = _read(spec, tmp_path)
    assert class_names(pool) == ["no spurge", "leafy spurge"]
    assert len(pool) + len(val) == 10 and test.empty
    _assert_nested(pool)
    _assert_deterministic(spec, tmp_path, (pool, val, test))
    everything = _read({**spec, "split_protocol": "original-code"}, tmp_path)[0]
    train, val = halve_per_seed(everything, seed=3)
    assert train.groupby("class_name").size().to_dict() == {"leafy spurge": 2, "no spurge": 3}


def test_leafy_spurge_from_a_saved_hugging_face_dataset(tmp_path):
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["absent", "present"])}
    )
    splits = {}
    for split, count in (("train", 4), ("test", 2)):
        images = [Image.new("RGB", (16, 16), (0, 30 * i, 0)) for i in range(2 * count)]
        labels = [0] * count + [1] * count
        splits[split] = datasets.Dataset.from_dict(
            {"image": images, "label": labels}, features=features
        )
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    spec = {"kind": "leafy_spurge", "root": "saved"}
    pool, val, test = _read(spec, tmp_path)
    assert class_names(pool) == ["no spurge", "leafy spurge"]
    assert (len(pool), len(val), len(test)) == (6, 2, 4)
    assert test.groupby("class_name").size().to_dict() == {"leafy spurge": 2, "no spurge": 2}
    assert pool["path"].isna().all() and load_image(pool.iloc[0].to_dict()).size == (16, 16)
    _assert_nested(pool)
    _assert_deterministic(spec, tmp_path, (pool, val, test))


def test_leafy_spurge_from_the_datasets_cache(tmp_path):
    """The cache `load_dataset('mpg-ranch/leafy_spurge', 'crop')` leaves, read offline."""
    import datasets

    spurge_images(
        tmp_path / "files",
        {"train/absent": 3, "train/present": 3, "test/absent": 1, "test/present": 1},
    )
    built = datasets.load_dataset(
        "imagefolder", data_dir=str(tmp_path / "files"), cache_dir=str(tmp_path / "build")
    )
    source = Path(built["train"].cache_files[0]["filename"]).parent
    cached = (
        tmp_path / "hf-cache/mpg-ranch___leafy_spurge/crop" / source.relative_to(source.parents[1])
    )
    shutil.copytree(source, cached, ignore=shutil.ignore_patterns("*.lock"))
    for arrow in cached.glob("imagefolder-*.arrow"):
        arrow.rename(cached / arrow.name.replace("imagefolder", "leafy_spurge"))
    info = json.loads((cached / "dataset_info.json").read_text())
    (cached / "dataset_info.json").write_text(json.dumps(info | {"config_name": "crop"}))
    pool, val, test = _read({"kind": "leafy_spurge", "root": "hf-cache"}, tmp_path)
    assert (len(pool) + len(val), len(test)) == (6, 2)
    assert "test-present_0" in set(test["key"])


# ImageNet -----------------------------------------------------------------------------


def test_imagenet_names_ids_and_val_solution(imagenet):
    spec = {"kind": "imagenet", "root": "imagenet"}
    pool, val, test = _read(spec, imagenet)
    assert class_names(pool) == ["tench", "goldfish", "crane (n02012849)", "crane (n03126707)"]
    assert val.set_index("key").loc["ILSVRC2012_val_00000002", "class_name"] == "goldfish"
    assert (len(pool), len(val)) == (12, 4) and test.empty
    subset = _read({**spec, "classes": ["tench", "n03126707"]}, imagenet)
    assert class_names(subset[0]) == ["crane (n03126707)", "tench"]
    assert subset[1]["key"].tolist() == ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000004"]
    _assert_nested(subset[0])
    _assert_deterministic(spec, imagenet, (pool, val, test))
    with pytest.raises(ValueError, match="'n99999999'.*4 available classes"):
        _read({**spec, "classes": ["n99999999"]}, imagenet)


# Shared rules -------------------------------------------------------------------------


def test_keys_that_collide_are_an_error(tmp_path):
    write_image(tmp_path / "photos/cat/a.b.jpg")
    write_image(tmp_path / "photos/cat/a_b.jpg")
    write_image(tmp_path / "photos/dog/c.jpg")
    with pytest.raises(ValueError, match="same key 'cat_a_b'"):
        _read({"kind": "imagefolder", "root": "photos"}, tmp_path)


def test_keys_of_paths_in_other_scripts_are_unique_and_ascii_keys_are_kept(tmp_path):
    """猫/0.jpg and 犬/0.jpg gave one key; the keys go into parquet and WebDataset shards."""
    files = ["猫/0.jpg", "犬/0.jpg", "قطة/0.jpg", "🐶/0.jpg", "café/img.0.jpg", "cat/a.b.jpg"]
    files += ["red_fox/img.0.jpg"]
    for name in files:
        write_image(tmp_path / "photos" / name)
    pool = _read({"kind": "imagefolder", "root": "photos", "val_fraction": 0}, tmp_path)[0]
    root = (tmp_path / "photos").resolve()
    keys = {str(Path(row.path).relative_to(root)): row.key for row in pool.itertuples()}
    assert len(set(keys.values())) == len(files)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", key) for key in keys.values())
    assert keys["cat/a.b.jpg"] == "cat_a_b"
    assert keys["red_fox/img.0.jpg"] == "red_fox_img_0"
    assert keys["café/img.0.jpg"] == "cafe_img_0-b8977c0a0dcd0ccc"
    assert keys["猫/0.jpg"] == "0-90c34542666e88a9"
    image = encode_image(Image.new("RGB", (4, 4)), "png")
    samples = [{"key": k, "image": image, "label": 0, "meta": {}} for k in keys.values()]
    write_shard(tmp_path, "shard-000000.tar", samples, "png")
    index = pd.DataFrame({"key": list(keys.values()), "shard": "shard-000000.tar"})
    index.to_parquet(tmp_path / "index.parquet")
    assert sorted(read_images(tmp_path / "index.parquet")) == sorted(keys.values())


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (("a.jpg", "a.jpg"), r"map to the same key 'cafe_a-[0-9a-f]{16}': their paths are one"),
        (("a.jpg", "b.jpg"), r"give the same class token '<cafe-850f7dc4>': they are one text"),
    ],
)
def test_a_name_in_two_unicode_forms_is_named_as_such(tmp_path, files, message):
    """Folders 'café' composed and decomposed look the same: the error says how they differ."""
    for form, file in zip(("NFC", "NFD"), files, strict=True):
        write_image(tmp_path / "photos" / unicodedata.normalize(form, "café") / file)
    if len(list((tmp_path / "photos").iterdir())) < 2:
        pytest.skip("this file system stores one Unicode form of a name")
    with pytest.raises(ValueError, match=message) as error:
        _read({"kind": "imagefolder", "root": "photos", "val_fraction": 0}, tmp_path)
    assert "in two Unicode forms" in str(error.value)
    assert "caf\\xe9" in str(error.value) and "cafe\\u0301" in str(error.value)


def test_val_per_class_caps_a_datasets_own_val_split(aircraft):
    spec = {"kind": "fgvc_aircraft", "root": "fgvc-aircraft-2013b", "val_per_class": 1}
    assert len(_read(spec, aircraft)[1]) == 3
    with pytest.raises(ValueError, match="'original-code' applies to"):
        _read({**spec, "split_protocol": "original-code"}, aircraft)


def test_missing_layout_names_what_was_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="'imagelabels.mat' not found in"):
        _read({"kind": "flowers102", "root": "empty"}, tmp_path)
