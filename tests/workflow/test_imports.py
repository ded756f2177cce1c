"""One process per job: each job imports only what its step uses, since every job pays its
own imports (torch alone costs seconds of CPU; diffusers and transformers more)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

HEAVY = ("torch", "torchvision", "diffusers", "transformers", "matplotlib")


def _imported_after(code: str) -> set[str]:
    """The heavy packages a fresh interpreter holds after running `code`."""
    probe = (
        f"{code}\nimport sys, json\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> dict[str, str]:
    from dafusion.data.datasets import few_shot, read_dataset
    from dafusion.settings import DatasetSettings

    folder = tmp_path_factory.mktemp("manifests")
    pool, val, _ = read_dataset(DatasetSettings(kind="digits", image_size=16, val_per_class=2))
    paths = {"pool": str(folder / "pool.parquet"), "val": str(folder / "val.parquet")}
    pool.to_parquet(paths["pool"])
    val.to_parquet(paths["val"])
    few_shot(pool, seed=0, shots=1).to_parquet(folder / "split.parquet")
    paths["split"] = str(folder / "split.parquet")
    paths["out"] = str(folder / "out")
    return paths


@pytest.mark.workflow  # a train job in a fresh interpreter
@pytest.mark.parametrize("backbone", ["small-cnn", "resnet50"])
def test_a_train_job_imports_no_diffusion_library(manifests, backbone):
    code = (
        "from dafusion import pipeline\n"
        "from dafusion.settings import ClassifierSettings\n"
        f"s = ClassifierSettings(backbone={backbone!r}, pretrained=False, image_size=16, "
        "steps=1, batch_size=2, eval_interval=1, device='cpu')\n"
        f"pipeline.train({manifests['split']!r}, {manifests['val']!r}, s, 'digits', 'baseline', "
        f"0, 1, {manifests['out'] + backbone + '.parquet'!r})\n"
    )
    imported = _imported_after(code)
    assert "torch" in imported  # it did train
    assert not imported & {"diffusers", "transformers", "matplotlib"}


def test_a_split_job_imports_no_torch(manifests):
    code = (
        "from dafusion import pipeline\n"
        f"pipeline.few_shot_split({manifests['pool']!r}, 0, 2, {manifests['out'] + '.p'!r})\n"
    )
    assert _imported_after(code) == set()


def test_a_gather_job_imports_no_torch(manifests, tmp_path):
    """gather_synthetic is the light job of every synthetic set: no model library."""
    from dafusion.stages.synthetic import variant_plan

    split = manifests["split"]
    keys = variant_plan(pd.read_parquet(split), 0, 1, [0.5])["key"].tolist()
    part = tmp_path / "part-0-of-1.json"
    meta = {"source_key": "s", "j": 0, "label": 0, "class_name": "zero", "set": "m"}
    meta |= {"strength": 0.5, "prompt": "p", "guidance_scale": 7.5, "scheduler": "DDIM"}
    meta |= {"steps": 2, "seed": 0, "model_id": "tiny", "token_hash": "", "erasure": ""}
    rows = [{"key": key, **meta, "shard": None, "dropped": True} for key in keys]
    part.write_text(json.dumps({"fingerprint": "job", "rows": rows}))
    index = tmp_path / "set" / "index.parquet"
    index.parent.mkdir()
    code = (
        "from dafusion import pipeline\n"
        "from dafusion.settings import GenerationSettings, MethodSettings\n"
        "pipeline.gather_synthetic(\n"
        f"    {split!r}, {{}}, MethodSettings(kind='sdedit', strengths=[0.5]),\n"
        f"    GenerationSettings(num_synthetic=1), 0, [{str(part)!r}], {str(index)!r})\n"
    )
    assert _imported_after(code) == set()
    assert len(pd.read_parquet(index)) == len(keys)
