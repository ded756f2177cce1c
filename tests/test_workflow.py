"""The whole workflow on a reduced config, in a temporary directory, through the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import webdataset as wds
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]

REDUCED = {
    "results": "results",
    "datasets": {"digits": {"kind": "digits", "image_size": 32, "val_per_class": 4}},
    "seeds": [0],
    "examples_per_class": [1, 2],
    "model": {"pretrained": "tiny", "resolution": 32},
    "inversion": {"steps": 2, "batch_size": 2},
    "methods": {
        "baseline": {"kind": "baseline"},
        "real-guidance": {"kind": "sdedit", "prompt": "a photo of a {name}", "strengths": [0.5]},
        "da-fusion": {
            "kind": "sdedit",
            "prompt": "a photo of a {token}",
            "strengths": [0.25, 0.5, 0.75, 1.0],
        },
    },
    "generation": {"num_synthetic": 2, "num_inference_steps": 4, "batch_size": 8},
    "classifier": {
        "backbone": "small-cnn",
        "image_size": 32,
        "steps": 10,
        "eval_interval": 5,
        "lr": 0.001,
    },
}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run, without its total."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.fullmatch(r"(\S+)\s+(\d+)", line.strip())
        if not match or match.group(1) == "total":
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def write_config(workdir: Path, name: str, config: dict) -> str:
    path = workdir / "config" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return f"config/{name}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    write_config(workdir, "config.yaml", REDUCED)
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


def test_outputs_at_the_contract_paths(workdir):
    results = workdir / "results"
    split = pd.read_parquet(results / "digits/splits/seed0-shots2.parquet")
    assert {"key", "image", "label", "class_name", "split"} <= set(split.columns)
    assert (split.groupby("label").size() == 2).all()
    synthetic = results / "digits/synthetic/da-fusion/seed0-shots2"
    index = pd.read_parquet(synthetic / "index.parquet")
    assert len(index) == len(split) * 2
    assert set(index["source_key"]) == set(split["key"])
    assert set(index["strength"]) <= {0.25, 0.5, 0.75, 1.0}
    assert index["token_hash"].str.len().eq(64).all()
    shards = sorted(str(p) for p in synthetic.glob("shard-*.tar"))
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode("pil"))
    assert sorted(s["__key__"] for s in samples) == sorted(index["key"])
    assert samples[0]["png"].size == (32, 32)
    assert samples[0]["json"]["method"] == "da-fusion"
    rg = pd.read_parquet(results / "digits/synthetic/real-guidance/seed0-shots1/index.parquet")
    assert set(rg["strength"]) == {0.5}
    assert rg["prompt"].iloc[0].startswith("a photo of a ")
    run = pd.read_parquet(results / "digits/runs/da-fusion/seed0-shots1.parquet")
    assert list(run.columns) == [
        "dataset",
        "method",
        "seed",
        "shots",
        "step",
        "split",
        "metric",
        "value",
    ]
    assert sorted(run["step"].unique()) == [5, 10]
    assert "accuracy/seven" in set(run["metric"])
    summary = pd.read_csv(results / "tables/summary.csv")
    assert len(summary) == 3 * 2
    assert (results / "figures/accuracy.png").stat().st_size > 10_000
    tokens = results / "digits/tokens"
    exported = sorted(p.name for p in (tokens / "seed0-shots1").glob("*.safetensors"))
    assert len(exported) == 10 and exported[:2] == ["eight.safetensors", "five.safetensors"]
    curves = pd.read_parquet(tokens / "seed0-shots1-loss.parquet")
    assert len(curves) == 2 * 10  # steps x classes
    assert not list(tokens.glob(".*checkpoint*"))
    for log in ("logs/aggregate.log", "logs/digits/invert/seed0-shots1.log"):
        assert (results / log).exists()
    assert (results / "benchmarks/digits/generate/da-fusion/seed0-shots1.tsv").exists()


def test_rerun_only_what_a_setting_affects(workdir):
    result = snakemake(workdir, "-n", "--cores", "2")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr

    lr = write_config(workdir, "lr.yaml", {"classifier": {"lr": 0.01}})
    result = snakemake(workdir, "-n", "--cores", "2", "--configfile", "config/config.yaml", lr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert job_counts(result.stdout) == {"aggregate": 1, "all": 1, "train": 6}

    more = write_config(workdir, "m.yaml", {"generation": {"num_synthetic": 3}})
    result = snakemake(workdir, "-n", "--cores", "2", "--configfile", "config/config.yaml", more)
    assert result.returncode == 0, result.stdout + result.stderr
    assert job_counts(result.stdout) == {"aggregate": 1, "all": 1, "generate": 4, "train": 4}


def test_synthetic_and_tokens_targets(workdir):
    result = snakemake(workdir, "-n", "--cores", "2", "synthetic", "tokens")
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"datasets": {"digits": {"kind": "mnist"}}}, "config key 'datasets.digits.kind'"),
        ({"examples_per_class": [-1]}, "config key 'examples_per_class.0'"),
        (
            {"datasets": {"mine": {"kind": "imagefolder", "root": "no/such/dir"}}},
            "config key 'datasets.mine.root'",
        ),
    ],
)
def test_bad_config_stops_before_any_job(tmp_path, change, message):
    config = {**REDUCED, **change}
    write_config(tmp_path, "config.yaml", config)
    result = snakemake(tmp_path, "--cores", "1")
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()
