"""Parquet outputs have the same column types whatever their values, also without rows."""

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dafusion import pipeline
from dafusion.data.manifest import MANIFEST_SCHEMA, manifest, manifest_schema
from dafusion.jobs.io import write_parquet
from dafusion.settings import DatasetSettings
from dafusion.stages.synthetic import INDEX_SCHEMA, write_index, write_shards

MANIFEST_TYPES = {
    "key": pa.string(),
    "path": pa.string(),
    "image": pa.binary(),
    "label": pa.int64(),
    "class_name": pa.string(),
    "split": pa.string(),
}


def _index_step(spec: DatasetSettings, out: Path, base_dir: Path) -> list[Path]:
    """Run the index step; returns the pool, val and test manifests it wrote."""
    paths = [out / f"{name}.parquet" for name in ("pool", "val", "test")]
    pipeline.index_dataset(spec, *map(str, paths), str(out / "masks"), base_dir=str(base_dir))
    return paths


def _imagefolder(root: Path) -> None:
    for split, n in (("train", 3), ("val", 1)):
        for name in ("cat", "dog"):
            for i in range(n):
                (root / split / name).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (40 * i, 90, 30)).save(root / split / name / f"{i}.png")


def _schema(path: Path) -> pa.Schema:
    return pq.read_schema(path).remove_metadata()


def test_an_empty_test_manifest_has_the_manifest_schema(tmp_path):
    """digits has no test split: its test.parquet has no rows, yet every column is typed."""
    spec = DatasetSettings(kind="digits", image_size=8, classes=["zero", "one"])
    pool, _, test = _index_step(spec, tmp_path / "digits", tmp_path)
    assert pq.read_metadata(test).num_rows == 0
    schema = _schema(test)
    assert schema.equals(MANIFEST_SCHEMA)
    assert {field.name: field.type for field in schema} == MANIFEST_TYPES
    assert [field.name for field in schema if not field.nullable] == [
        "key",
        "label",
        "class_name",
        "split",
    ]
    assert _schema(pool).equals(schema)


def test_bytes_and_path_manifests_have_the_same_schema(tmp_path):
    """digits stores image bytes (`path` all null), an image folder files (`image` all null)."""
    digits = _index_step(
        DatasetSettings(kind="digits", image_size=8, classes=["zero", "one"]),
        tmp_path / "digits",
        tmp_path,
    )
    _imagefolder(tmp_path / "data")
    folder = _index_step(
        DatasetSettings(kind="imagefolder", root="data"), tmp_path / "folder", tmp_path
    )
    by_bytes, by_path = pd.read_parquet(digits[0]), pd.read_parquet(folder[0])
    assert by_bytes["path"].isna().all() and by_bytes["image"].map(type).eq(bytes).all()
    assert by_path["image"].isna().all() and by_path["path"].str.endswith(".png").all()
    for a, b in zip(digits, folder, strict=True):
        assert _schema(a).equals(_schema(b))
        assert _schema(a).equals(MANIFEST_SCHEMA)
    assert by_bytes.dtypes.to_dict() == by_path.dtypes.to_dict()


def test_few_shot_split_keeps_the_manifest_schema(tmp_path):
    _imagefolder(tmp_path / "data")
    pool, _, _ = _index_step(
        DatasetSettings(kind="imagefolder", root="data"), tmp_path / "folder", tmp_path
    )
    out = tmp_path / "seed0-shots1.parquet"
    pipeline.few_shot_split(str(pool), seed=0, shots=1, output=str(out))
    assert pq.read_metadata(out).num_rows == 2
    assert _schema(out).equals(MANIFEST_SCHEMA)


def _masked(rows: int) -> pd.DataFrame:
    frame = manifest(
        {"key": f"k{i}", "path": f"/d/k{i}.jpg", "label": 0, "class_name": "cat", "split": "test"}
        for i in range(rows)
    )
    return frame.assign(mask_path=[f"/d/masks/k{i}.png" for i in range(rows)])


@pytest.mark.parametrize("rows", [0, 2])
def test_mask_path_is_typed_where_a_dataset_has_masks(tmp_path, rows):
    frame = _masked(rows)
    write_parquet(frame, tmp_path / "m.parquet", manifest_schema(frame.columns))
    schema = _schema(tmp_path / "m.parquet")
    assert schema.names == [*MANIFEST_SCHEMA.names, "mask_path"]
    assert schema.field("mask_path").type == pa.string()
    assert schema.field("mask_path").nullable
    assert (
        pd.read_parquet(tmp_path / "m.parquet")["mask_path"].tolist() == frame["mask_path"].tolist()
    )
    plain = frame.drop(columns="mask_path")
    assert "mask_path" not in manifest_schema(plain.columns).names


def test_a_column_outside_the_schema_is_an_error(tmp_path):
    """A transient column (a reader's `mask` callable) must never reach a manifest file."""
    frame = _masked(1).assign(mask=[lambda: None])
    path = tmp_path / "m.parquet"
    with pytest.raises(ValueError, match=r"m\.parquet: column 'mask' is not in its schema"):
        write_parquet(frame, path, manifest_schema(frame.columns))
    short = frame.drop(columns=["mask", "split"])
    with pytest.raises(ValueError, match=r"m\.parquet: column 'split' is missing"):
        write_parquet(short, path, manifest_schema(short.columns))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("label", "cat", r"column 'label' does not fit its type \(int64 not null\)"),
        ("key", None, r"column 'key' does not fit its type \(string not null\)"),
        # an image not encoded to bytes
        ("image", Image.new("RGB", (2, 2)), r"column 'image' does not fit its type \(binary\)"),
    ],
)
def test_a_value_that_does_not_fit_names_the_file_and_column(tmp_path, column, value, message):
    frame = manifest([{"key": "k", "path": "/d/k.jpg", "label": 0, "class_name": "c"}])
    frame = frame.assign(split="train", **{column: [value]})
    path = tmp_path / "bad.parquet"
    with pytest.raises(ValueError, match=rf"cannot write .*bad\.parquet: {message}"):
        write_parquet(frame, path, MANIFEST_SCHEMA)
    assert not path.exists()


def _meta(item) -> dict:
    return {
        "source_key": item["key"][:-4],
        "j": item["j"],
        "label": 1,
        "class_name": "one",
        "set": "0123456789ab",
        "strength": 0.5,
        "prompt": "a photo of a <one>",
        "guidance_scale": 7.5,
        "scheduler": "DDIMScheduler",
        "steps": 4,
        "seed": 2**62 + item["j"],
        "model_id": "tiny",
        "token_hash": "",
        "erasure": "",
    }


class DropsAll:
    """An engine whose safety checker flags every image: each is dropped, none has a shard."""

    def run(self, work, seed, bar=None):
        for item in work:
            yield item, None


def _build(work, out: Path) -> pd.DataFrame:
    rows = write_shards(
        DropsAll(), work, out, seed=0, shard_size=2, image_format="png", fingerprint="job",
        meta=_meta, progress=False,
    )  # fmt: skip
    return write_index(rows, out, out / "index.parquet", shard_size=2, parts=1, identity={})


def test_an_empty_synthetic_index_has_every_column_typed(tmp_path):
    index = _build([], tmp_path)
    assert index.empty
    schema = _schema(tmp_path / "index.parquet")
    assert schema.equals(INDEX_SCHEMA)
    assert not [field.name for field in schema if pa.types.is_null(field.type)]
    assert schema.field("seed").type == pa.int64()
    assert schema.field("strength").type == pa.float64()
    assert schema.field("dropped").type == pa.bool_()
    assert list(pd.read_parquet(tmp_path / "index.parquet").columns) == INDEX_SCHEMA.names


def test_an_index_of_dropped_images_keeps_its_types(tmp_path):
    work = [{"key": f"digits-0001-{j:03d}", "j": j} for j in range(3)]
    _build(work, tmp_path)
    assert _schema(tmp_path / "index.parquet").equals(INDEX_SCHEMA)
    index = pd.read_parquet(tmp_path / "index.parquet")
    assert index["shard"].isna().all() and index["dropped"].all()
    assert index["seed"].tolist() == [2**62, 2**62 + 1, 2**62 + 2]
    assert index["j"].dtype == "int64" and index["strength"].dtype == "float64"
