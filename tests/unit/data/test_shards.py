import hashlib
import io

import pandas as pd
import pytest
import webdataset as wds
from PIL import Image

from dafusion.data.shards import SHARD_PATTERN, encode_image, read_images, write_shard
from dafusion.jobs.integrity import IntegrityError
from dafusion.jobs.io import write_parquet


def _samples(n):
    return [
        {
            "key": f"digits-{i:04d}-000",
            "image": encode_image(Image.new("RGB", (8, 8), (i * 20 % 256, 0, 0)), "png"),
            "label": i % 3,
            "meta": {"source_key": f"digits-{i:04d}", "strength": 0.5, "method": "da-fusion"},
        }
        for i in range(n)
    ]


def test_shards_read_back_with_webdataset(tmp_path):
    samples = _samples(5)
    rows = []
    for number, start in enumerate(range(0, 5, 2)):
        name = SHARD_PATTERN.format(number)
        rows += write_shard(tmp_path, name, samples[start : start + 2], "png")
    index = pd.DataFrame(rows)
    assert index["shard"].tolist() == ["shard-000000.tar"] * 2 + ["shard-000001.tar"] * 2 + [
        "shard-000002.tar"
    ]
    write_parquet(index, tmp_path / "index.parquet")
    urls = [str(p) for p in sorted(tmp_path.glob("shard-*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == [f"digits-{i:04d}-000" for i in range(5)]
    assert samples[3]["cls"] == 0 and samples[4]["json"]["source_key"] == "digits-0004"
    assert samples[1]["png"].getpixel((0, 0)) == (20, 0, 0)
    images = read_images(tmp_path / "index.parquet")
    assert Image.open(io.BytesIO(images["digits-0002-000"][0])).getpixel((0, 0)) == (40, 0, 0)
    assert not list(tmp_path.glob(".*tmp"))


def test_same_inputs_give_the_same_bytes(tmp_path):
    for folder in ("a", "b"):
        write_shard(tmp_path / folder, "shard-000000.tar", _samples(3), "png")
    assert (tmp_path / "a/shard-000000.tar").read_bytes() == (
        tmp_path / "b/shard-000000.tar"
    ).read_bytes()


def test_keys_with_dots_are_refused(tmp_path):
    bad = [{"key": "img.1-000", "image": b"", "label": 0, "meta": {}}]
    with pytest.raises(ValueError, match="contains a dot"):
        write_shard(tmp_path, "shard-000000.tar", bad, "png")
    assert not list(tmp_path.iterdir())  # no partial shard, no temporary


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_default_formats_are_lossless(fmt):
    image = Image.effect_noise((16, 16), 60).convert("RGB")
    decoded = Image.open(io.BytesIO(encode_image(image, fmt))).convert("RGB")
    assert decoded.tobytes() == image.tobytes()


def test_shard_members_extract_as_ordinary_files(tmp_path):
    import tarfile

    write_shard(tmp_path, "shard-000000.tar", _samples(2), "png")
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        members = tar.getmembers()
        assert {m.mode for m in members} == {0o644} and all(m.mtime == 0 for m in members)
        tar.extractall(tmp_path / "out", filter="data")
    extracted = list((tmp_path / "out").iterdir())
    assert len(extracted) == 6 and all(p.stat().st_mode & 0o200 for p in extracted)


def test_the_index_rows_record_each_shards_digest(tmp_path):
    rows = write_shard(tmp_path, "shard-000000.tar", _samples(2), "png")
    data = (tmp_path / "shard-000000.tar").read_bytes()
    assert {(r["shard_sha256"], r["shard_bytes"]) for r in rows} == {
        (hashlib.sha256(data).hexdigest(), len(data))
    }


def _truncate(path):
    path.write_bytes(path.read_bytes()[:700])


def _flip(path):
    """One bit of an image's bytes: the tar still reads, with another image in it."""
    import tarfile

    with tarfile.open(path) as tar:
        image = next(m for m in tar.getmembers() if m.name.endswith(".png"))
    data = bytearray(path.read_bytes())
    data[image.offset_data + image.size - 1] ^= 0x01
    path.write_bytes(data)


def _read_gallery(index_path):
    from dafusion.reporting.gallery import read_synthetic

    index = pd.read_parquet(index_path)
    return read_synthetic(index, index_path.parent, index["key"])


@pytest.mark.parametrize("reader", [read_images, _read_gallery], ids=["webdataset", "gallery"])
@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (_truncate, "it has 700 bytes"),
        (_flip, "its sha256 is not the one recorded"),
        (lambda path: path.unlink(), "it is missing"),
    ],
    ids=["truncated", "flipped", "missing"],
)
def test_a_damaged_shard_is_named_before_it_is_read(tmp_path, reader, damage, why):
    """Not `tarfile.ReadError: empty header` from deep in a reader, nor other images fed on."""
    samples, rows = _samples(4), []
    for number in range(2):
        rows += write_shard(
            tmp_path, SHARD_PATTERN.format(number), samples[2 * number :][:2], "png"
        )
    write_parquet(pd.DataFrame(rows).assign(dropped=False), tmp_path / "index.parquet")
    assert len(reader(tmp_path / "index.parquet")) == 4
    damage(tmp_path / "shard-000001.tar")
    with pytest.raises(IntegrityError) as error:
        reader(tmp_path / "index.parquet")
    message = str(error.value)
    assert f"shard '{tmp_path / 'shard-000001.tar'}' is not the one" in message
    assert why in message
    assert f"snakemake --cores all --forcerun {tmp_path / 'index.parquet'}" in message
