"""Resumable shards, safety-checker re-draws and out-of-memory halving."""

import json
from hashlib import sha256
from pathlib import Path

import pandas as pd
import pytest
import torch

from dafusion.data.datasets import few_shot
from dafusion.data.shards import read_images
from dafusion.jobs.integrity import record, sidecar
from dafusion.jobs.seeds import derive_seed
from dafusion.settings import GenerationSettings
from dafusion.stages.generation import Engine
from dafusion.stages.synthetic import (
    recorded_parts,
    shard_ranges,
    variant_plan,
    write_index,
    write_shards,
)


@pytest.fixture(scope="module")
def manifest(digits):
    return few_shot(digits[0], seed=0, shots=1).iloc[:4].reset_index(drop=True)


def _engine(components, manifest, checker=None, batch_size=4, cls=Engine):
    settings = GenerationSettings(
        num_synthetic=2,
        num_inference_steps=4,
        guidance_scale=7.5,
        batch_size=batch_size,
        safety_retries=2,
    )
    prompts = {int(c): f"a photo of a {c}" for c in manifest["label"]}
    return cls(components, components.scheduler, manifest, prompts, 32, settings, checker)


def _meta(item):
    return {
        "source_key": item["key"][:-4],
        "j": int(item["j"]),
        "label": 0,
        "class_name": "zero",
        "set": "m",
        "strength": item["strength"],
        "prompt": "a photo of a 0",
        "guidance_scale": 7.5,
        "scheduler": "DDIMScheduler",
        "steps": 4,
        "seed": int(item["seed"]),
        "model_id": "tiny",
        "token_hash": "",
        "erasure": "",
    }


def _build(engine, manifest, out, fingerprint="job"):
    """A set made by one job: every shard, then the index."""
    work = variant_plan(manifest, 0, 2, [0.25, 0.5, 0.75, 1.0]).to_dict("records")
    rows = write_shards(
        engine, work, out, seed=0, shard_size=3, image_format="png", fingerprint=fingerprint,
        meta=_meta, workers=2, progress=False,
    )  # fmt: skip
    return write_index(rows, out, out / "index.parquet", shard_size=3, parts=1, identity={})


def test_shard_ranges_are_contiguous_and_even():
    assert shard_ranges(3, 1) == [range(0, 3)]
    assert shard_ranges(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]
    assert shard_ranges(2, 4) == [range(0, 1), range(1, 2), range(2, 2), range(2, 2)]
    with pytest.raises(ValueError, match="generation.parts"):
        shard_ranges(3, 0)


@pytest.mark.parametrize("parts", [3, 5])
def test_a_set_in_parts_is_the_same_bytes_as_in_one_job(components, manifest, tmp_path, parts):
    """Each part in its own engine (its own job), in reverse order; 5 parts of 3 shards
    leaves two parts without shards. A part never deletes shards; the index step does."""
    whole = tmp_path / "whole"
    _build(_engine(components, manifest), manifest, whole)
    out = tmp_path / "parts"
    out.mkdir()
    (out / "shard-000009.tar").write_bytes(b"left by an earlier, larger set")
    work = variant_plan(manifest, 0, 2, [0.25, 0.5, 0.75, 1.0]).to_dict("records")
    rows = []
    for shards in reversed(shard_ranges(3, parts)):
        rows += write_shards(
            _engine(components, manifest), work, out, seed=0, shard_size=3,
            image_format="png", fingerprint="job", meta=_meta, shards=shards, workers=1,
            progress=False,
        )  # fmt: skip
        assert (out / "shard-000009.tar").exists()
    write_index(rows, out, out / "index.parquet", shard_size=3, parts=parts, identity={})
    shards = ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert sorted(p.name for p in whole.iterdir()) == ["index.parquet", *shards]
    assert sorted(p.name for p in out.iterdir()) == ["index.parquet", *shards]  # no sidecar
    for name in shards:
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    # The index holds the same rows and records how many jobs made the set
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "index.parquet"), pd.read_parquet(whole / "index.parquet")
    )
    assert (recorded_parts(whole / "index.parquet"), recorded_parts(out / "index.parquet")) == (
        1,
        parts,
    )


class Counting(Engine):
    """Counts the shards it is asked to generate."""

    shards = 0

    def run(self, work, seed, bar=None):
        self.shards += 1
        yield from super().run(work, seed, bar)


def test_killed_run_reuses_finished_shards(components, manifest, tmp_path):
    whole = _build(_engine(components, manifest), manifest, tmp_path / "whole")
    assert sorted(p.name for p in (tmp_path / "whole").glob("shard-*")) == [
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]

    class Killed(Exception):
        pass

    class Dies(Engine):
        calls = 0

        def run(self, work, seed, bar=None):
            Dies.calls += 1
            if Dies.calls == 2:
                raise Killed
            yield from super().run(work, seed, bar)

    out = tmp_path / "killed"
    dies = _engine(components, manifest, cls=Dies)
    with pytest.raises(Killed):
        _build(dies, manifest, out)
    assert (out / "shard-000000.tar").exists() and not (out / "index.parquet").exists()
    first = (out / "shard-000000.tar").stat().st_mtime_ns

    counts = _engine(components, manifest, cls=Counting)
    resumed = _build(counts, manifest, out)
    assert counts.shards == 2  # the finished shard was not generated again
    assert (out / "shard-000000.tar").stat().st_mtime_ns == first
    pd.testing.assert_frame_equal(resumed, whole)
    for name in ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    assert not list(out.glob(".*"))  # sidecars and temporaries are gone


def test_a_damaged_finished_shard_is_made_again_not_indexed(components, manifest, tmp_path):
    """A killed job's finished shard truncated since (a full disk, a bad copy) is not passed on
    to the index with its recorded digest: the resumed job makes it again."""
    whole = _build(_engine(components, manifest), manifest, tmp_path / "whole")
    out = tmp_path / "killed"
    work = variant_plan(manifest, 0, 2, [0.25, 0.5, 0.75, 1.0]).to_dict("records")
    write_shards(  # killed before the index: the shards keep their sidecars
        _engine(components, manifest), work, out, seed=0, shard_size=3, image_format="png",
        fingerprint="job", meta=_meta, progress=False,
    )  # fmt: skip
    shard = out / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1024])

    counts = _engine(components, manifest, cls=Counting)
    resumed = _build(counts, manifest, out)
    assert counts.shards == 1  # the damaged one only
    pd.testing.assert_frame_equal(resumed, whole)
    assert shard.read_bytes() == (tmp_path / "whole" / shard.name).read_bytes()


def test_the_index_records_each_shards_digest_and_drops_the_parts_digests(
    components, manifest, tmp_path
):
    out = tmp_path / "set"
    out.mkdir()
    part = out / "part-0-of-1.json"
    part.write_text("{}")
    record(part, "generate")  # the generate job's temporary rows: only the gather reads them
    index = _build(_engine(components, manifest), manifest, out)
    assert not sidecar(part).exists()
    for name, rows in index.groupby("shard"):
        assert set(rows["shard_sha256"]) == {sha256((out / name).read_bytes()).hexdigest()}
        assert set(rows["shard_bytes"]) == {(out / name).stat().st_size}


def test_images_are_encoded_in_the_same_batches_whichever_shard_asks_first(
    components, manifest, monkeypatch
):
    """Batch composition changes a latent's last bits (and so, at times, a pixel), so the VAE
    sees fixed blocks of rows: a resumed job's shards are then a whole run's."""
    from dafusion.stages import generation

    batches = []

    def spy(c, images, resolution, batch_size):
        batches.append(len(images))
        return encode(c, images, resolution, batch_size)

    encode = generation.encode_images
    monkeypatch.setattr(generation, "encode_images", spy)
    first = _engine(components, manifest, batch_size=2)  # 4 rows: blocks {0, 1} and {2, 3}
    first._encode([3])
    first._encode([0, 1, 2])
    second = _engine(components, manifest, batch_size=2)
    second._encode([0, 1, 2, 3])
    assert batches == [2, 2, 2, 2]
    for row in range(4):
        assert torch.equal(first.latents[row][0], second.latents[row][0])
        assert torch.equal(first.latents[row][1], second.latents[row][1])


def test_a_different_job_does_not_reuse_shards(components, manifest, tmp_path):
    out = tmp_path / "set"
    _build(_engine(components, manifest), manifest, out)
    (out / "index.parquet").unlink()

    counts = _engine(components, manifest, cls=Counting)
    _build(counts, manifest, out, fingerprint="other settings")
    assert counts.shards == 3


def test_flagged_images_are_redrawn_then_dropped(components, manifest):
    calls = []

    def checker(images):
        calls.append(len(images))
        return [True] * len(images)  # flags everything: must end, not loop

    work = variant_plan(manifest.iloc[:1], 0, 2, [0.5]).to_dict("records")
    engine = _engine(components, manifest.iloc[:1], checker=checker)
    out = list(engine.run(work, seed=0))
    assert [image for _, image in out] == [None, None]
    assert sum(calls) == 2 * 3  # first draw + 2 retries for each image
    assert sorted(item["attempt"] for item, _ in out) == [2, 2]

    flips = {"n": 0}

    def once(images):  # flags only the very first image it sees
        flips["n"] += len(images)
        return [flips["n"] - len(images) + i == 0 for i in range(len(images))]

    engine = _engine(components, manifest.iloc[:1], checker=once)
    out = {item["key"]: item for item, image in engine.run(work, seed=0) if image is not None}
    assert len(out) == 2
    redrawn = [item for item in out.values() if item["attempt"] == 1]
    assert len(redrawn) == 1 and redrawn[0]["seed"] != redrawn[0]["variant_seed"]
    # The re-draw seed derives from (seed, key, attempt), as computed by earlier versions.
    retry = {"digits-1493-000": 9011958049035519590, "digits-1493-001": 7494986074093991533}
    assert redrawn[0]["seed"] == retry[redrawn[0]["key"]]
    assert redrawn[0]["seed"] == derive_seed(0, redrawn[0]["key"], "retry1", 0)


def test_out_of_memory_halves_the_batch(components, manifest, monkeypatch):
    """A chunk that runs out of memory is generated again in halved sub-batches."""
    work = variant_plan(manifest, 0, 2, [0.5]).to_dict("records")
    reference = {
        i["key"]: torch.tensor(list(im.tobytes()))
        for i, im in _engine(components, manifest, batch_size=8).run(work, 0)
    }
    engine = _engine(components, manifest, batch_size=8)
    original, sizes = Engine._batch, []

    def small_memory(self, chunk, size):
        sizes.append((len(chunk), size))
        if len(chunk) > 2:
            raise torch.cuda.OutOfMemoryError("fake")
        return original(self, chunk, size)

    monkeypatch.setattr(Engine, "_batch", small_memory)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    out = {i["key"]: torch.tensor(list(im.tobytes())) for i, im in engine.run(work, 0)}
    assert engine.batch_size == 2
    # Halved twice, then kept for the rest of the chunk; `size` is what a compiled UNet's
    # batches are padded to.
    assert sizes == [(8, 8), (4, 4), (2, 2), (2, 2), (2, 2), (2, 2)]
    assert out.keys() == reference.keys()
    for key in out:
        assert (out[key] - reference[key]).abs().max() <= 1


def test_a_part_beyond_the_shards_writes_no_rows_and_loads_no_model(manifest, tmp_path, caplog):
    """generation.parts above the set's shards: the extra part says so and loads nothing (the
    model named here does not exist)."""
    from dafusion import pipeline
    from dafusion.settings import MethodSettings, ModelSettings

    split = tmp_path / "split.parquet"
    manifest.to_parquet(split)  # 4 images x M 2 = 8 images: 3 shards of 3
    output = tmp_path / "set" / "part-3-of-4.json"
    output.parent.mkdir()
    with caplog.at_level("INFO", logger="dafusion"):
        pipeline.generate(
            str(split), model=ModelSettings(pretrained=str(tmp_path / "no-model")),
            set_name="m", method=MethodSettings(kind="sdedit", strengths=[0.5]),
            settings=GenerationSettings(num_synthetic=2, shard_size=3), seed=0, part=3,
            parts=4, output=str(output),
        )  # fmt: skip
    assert json.loads(output.read_text()) == {"fingerprint": "", "rows": []}
    assert "part 4 of 4 has nothing to do: the set has 3 shard(s)" in caplog.text


def test_a_shared_set_gives_each_m_the_images_and_draws_of_its_own_set(tiny_dir, digits, tmp_path):
    """Figure 11's sharing: a set of M 4 read at M 2 is a set of M 2 made alone (the same
    images for the same per-image seeds), and a run reading either draws the same batches.
    Batches of one image make the images bitwise equal: batch composition alone moves a
    pixel by at most 1 (test_generation.py), which would blur the runs' comparison."""
    from helpers import make_set

    from dafusion import pipeline
    from dafusion.settings import ClassifierSettings, MethodSettings, ModelSettings

    split = tmp_path / "split.parquet"
    few_shot(digits[0], seed=0, shots=1).to_parquet(split)  # every class, for training
    model = ModelSettings(pretrained="tiny", resolution=32)
    method = MethodSettings(kind="sdedit", prompt="a photo of a {name}", strengths=[0.5, 1.0])

    def made(m: int) -> Path:
        settings = GenerationSettings(num_synthetic=m, num_inference_steps=4, batch_size=1)
        return make_set(str(split), tmp_path / f"m{m}", model, method, settings, model_dir=tiny_dir)

    shared, alone = made(4), made(2)
    images = {m: read_images(path) for m, path in (("shared", shared), ("alone", alone))}
    first = pd.read_parquet(shared).query("j < 2").reset_index(drop=True)
    shard = ["shard", "shard_sha256", "shard_bytes"]  # shards of other images
    pd.testing.assert_frame_equal(
        first.drop(columns=shard), pd.read_parquet(alone).drop(columns=shard)
    )
    assert {k: images["shared"][k] for k in first["key"]} == images["alone"]

    val = tmp_path / "val.parquet"
    digits[1].groupby("label").head(1).to_parquet(val)
    settings = ClassifierSettings(
        backbone="small-cnn", pretrained=False, image_size=32, steps=4, batch_size=4,
        eval_interval=2, device="cpu",
    )  # fmt: skip
    runs = []
    for name, index in (("shared", shared), ("alone", alone)):
        out = tmp_path / f"run-{name}.parquet"
        pipeline.train(
            str(split), str(val), settings, "digits", "daf", 0, 1, str(out),
            synthetic_index=str(index), num_synthetic=2,
        )  # fmt: skip
        runs.append(pd.read_parquet(out))
    pd.testing.assert_frame_equal(*runs)
