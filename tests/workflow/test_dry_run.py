"""Parsing the workflow writes nothing: a dry run leaves the results folder as it is, on a
fresh and on a finished workdir, also after the dataset's files changed (which reruns
index_dataset through its params, tests/unit/workflow/test_plan.py and test_workflow.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import (
    REDUCED,
    SNAKEMAKE,
    copy_workflow,
    dry_run_jobs,
    scheduled,
    snakemake,
    write_config,
)
from PIL import Image

pytestmark = pytest.mark.workflow  # runs Snakemake on the workflow


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root`: (size, mtime in ns); empty when there is none."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in [root, *root.rglob("*")]
    }


@pytest.fixture(scope="module")
def photos_workdir(tmp_path_factory) -> Path:
    """A fresh workdir of a dataset with a root (the one kind of entry that is listed)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("dry") / "dafusion")
    for name, color in (("cat", (200, 0, 0)), ("dog", (0, 0, 200))):
        (workdir / "photos" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), color).save(workdir / "photos" / name / f"{i}.png")
    config = {
        **REDUCED,
        "datasets": {"photos": {"kind": "imagefolder", "root": "photos", "val_fraction": 0.5}},
        "examples_per_class": [1],
        "methods": {"baseline": {"kind": "baseline"}},
        "erasure": {"enabled": False},
    }
    write_config(workdir, "config.yaml", config)
    return workdir


def dry_run(workdir: Path) -> set[tuple[str, str]]:
    return scheduled(workdir, "--cores", "1")


def test_a_dry_run_writes_nothing_on_a_fresh_then_a_finished_workdir(photos_workdir):
    workdir, results = photos_workdir, photos_workdir / "results"
    jobs = dry_run(workdir)
    assert ("index_dataset", "results/photos/splits/pool.parquet") in jobs
    assert not results.exists()

    finished = snakemake(workdir, "--cores", "2")
    assert finished.returncode == 0, finished.stderr[-5000:]
    assert not (results / "photos/splits/.files.sha256").exists()  # no listing file
    before = tree(results)
    assert dry_run(workdir) == set()
    assert tree(results) == before

    # A changed dataset: index_dataset (and all after it) would rerun; still nothing written
    Image.new("RGB", (16, 16), (0, 0, 150)).save(workdir / "photos/dog/new.png")
    assert ("index_dataset", "results/photos/splits/pool.parquet") in dry_run(workdir)
    assert tree(results) == before
    (workdir / "photos/dog/new.png").unlink()
    assert dry_run(workdir) == set()


def read_only(workdir: Path, *command: str) -> subprocess.CompletedProcess:
    """`command` run in `workdir` with results/ mounted read-only (a private mount namespace:
    also read-only for root)."""
    mount = 'mount --bind results results && mount -o remount,bind,ro results && exec "$@"'
    return subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c", mount, "sh", *command],
        cwd=workdir, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=900,
    )  # fmt: skip


def test_a_read_only_results_folder_parses_for_a_dry_run(photos_workdir):
    finished = snakemake(photos_workdir, "--cores", "2")  # (done by the test before)
    assert finished.returncode == 0, finished.stderr[-5000:]
    probe = read_only(photos_workdir, "touch", "results/probe")
    if shutil.which("unshare") is None or "Read-only file system" not in probe.stderr:
        pytest.skip(f"no read-only mount here: {probe.stderr.strip()[-300:]}")
    result = read_only(photos_workdir, *SNAKEMAKE, "-n", "--cores", "1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr
    # Also when the dataset's files changed (0.1.0 wrote their listing at parse time then)
    added = photos_workdir / "photos/cat/added.png"
    Image.new("RGB", (16, 16), (90, 0, 0)).save(added)
    try:
        result = read_only(photos_workdir, *SNAKEMAKE, "-n", "--cores", "1")
    finally:
        added.unlink()
    # The dataset changed, so index_dataset and what follows would rewrite outputs they
    # cannot: Snakemake says so, naming a rule (no traceback from the workflow's parsing).
    assert result.returncode != 0
    assert "Write-protected output files for rule " in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_config_values_on_the_command_line_take_the_schemas_types(tmp_path):
    """Snakemake hands `--config` values nested in a YAML mapping (and a top-level `false`)
    over as strings; the workflow reads them as the schema's types (issue 27)."""
    workdir = copy_workflow(tmp_path / "dafusion")
    write_config(workdir, "config.yaml", REDUCED)
    jobs = scheduled(
        workdir, "--cores", "1", "synthetic", "--configfile", "config/config.yaml",
        "--config", "model={resolution: 16}", "generation={parts: 3, guidance_scale: 7.5}",
        "inversion={flip: FALSE}", "examples_per_class=[1]",
    )  # fmt: skip
    assert ("build_tiny_model", "results/model/tiny-16px") in jobs  # 16 px, an integer
    parts = {output.rsplit("/", 1)[-1] for rule, output in jobs if rule == "generate"}
    assert parts == {f"part-{i}-of-3.json" for i in range(3)}
    assert not (workdir / "results").exists()


def test_scoring_jobs_read_no_evaluation_image_and_no_reference_classifier(tmp_path):
    """No leakage (issue 41), from the jobs Snakemake would run: a scoring job reads its set,
    the few-shot split (change) and the classifier_method's head (classifier), never a
    validation or test manifest or the reference digit classifier; only a filtered
    method's train jobs read scores, each its own filter's."""
    workdir = copy_workflow(tmp_path / "dafusion")
    clip = workdir / "clip"  # start-up looks for the files only
    clip.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        (clip / name).write_text("{}")
    daf = REDUCED["methods"]["da-fusion"]
    filters = {
        "da-fusion-classifier": {"by": "classifier", "min_confidence": 0.5},
        "da-fusion-clip": {"by": "clip", "keep_top": 0.7},
        "da-fusion-change": {"by": "change", "min_change": 0.02},
    }
    config = {
        **REDUCED,
        "methods": {
            **REDUCED["methods"],
            **{name: {**daf, "filter": spec} for name, spec in filters.items()},
        },
        "scoring": {"clip_model": "clip"},
    }
    write_config(workdir, "config.yaml", config)
    jobs = dry_run_jobs(workdir, "--cores", "1")
    scoring = [job for job in jobs if job["rule"].startswith("score_")]
    # every scorer on each of the 3 sets (real-guidance, da-fusion, da-fusion-erased) x 2 shots
    assert len(scoring) == 3 * 3 * 2
    for job in scoring:
        for path in job["input"]:
            assert not re.search(r"splits/(val|test|pool)\.parquet|reference|seed\d+-val", path)
        heads = [path for path in job["input"] if path.endswith("-head.safetensors")]
        assert (job["rule"] == "score_classifier") == bool(heads)
        assert all("/runs/baseline/" in path for path in heads)
        splits = [path for path in job["input"] if "/splits/" in path]
        assert splits == (
            [f"results/digits/splits/seed0-shots{job['wildcards']['shots']}.parquet"]
            if job["rule"] == "score_change"
            else []
        )
    for job in jobs:
        if job["rule"] != "train":
            continue
        scores = [path for path in job["input"] if "/scores-" in path]
        method = job["wildcards"]["method"]
        expected = filters.get(method, {}).get("by")
        assert scores == ([] if expected is None else [scores[0]]), method
        assert expected is None or scores[0].endswith(f"/scores-{expected}.parquet")
