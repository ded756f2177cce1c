"""The whole workflow on a reduced config, through the CLI, in a copy of the workflow.

The copy (Snakefile, workflow/, profiles/, src/) lets tests edit library code the way a
developer would and check which jobs Snakemake then schedules.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import webdataset as wds
import yaml
from helpers import (
    NO_CHROMIUM,
    REDUCED,
    REPO,
    SNAKEMAKE,
    chromium_path,
    copy_workflow,
    dry_run_jobs,
    label_sets,
    photo_folder,
    render,
    scheduled,
    set_labels,
    snakemake,
    tiny_clip,
    workflow_plan,
    write_config,
)
from PIL import Image
from safetensors import safe_open

from dafusion.data.manifest import class_token
from dafusion.data.readers.folders import DIGIT_NAMES
from dafusion.stages.synthetic import recorded_parts

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow") / "dafusion")
    write_config(workdir, "config.yaml", REDUCED)
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


def dry_run(workdir: Path, overlay: dict | None = None) -> set[tuple[str, str]]:
    """The jobs a dry run schedules, each synthetic set shown by its methods' names."""
    args = ["--cores", "2"]
    if overlay is not None:
        args += ["--configfile", "config/config.yaml", write_config(workdir, "o.yaml", overlay)]
    return label_sets(scheduled(workdir, *args), set_labels(REDUCED, overlay or {}))


def set_dir(results: Path, method: str, seed: int, shots: int, config: dict = REDUCED) -> Path:
    """The folder of the synthetic set a method of the digits reads."""
    index = workflow_plan(config).sets.method_index("digits", method, seed, shots)
    return results.parent / index.removesuffix("/index.parquet")


def test_outputs_at_the_contract_paths(workdir):
    results = workdir / "results"
    split = pd.read_parquet(results / "digits/splits/seed0-shots2.parquet")
    assert {"key", "image", "label", "class_name", "split"} <= set(split.columns)
    assert (split.groupby("label").size() == 2).all()
    synthetic = set_dir(results, "da-fusion", 0, 2)
    index = pd.read_parquet(synthetic / "index.parquet")
    assert len(index) == len(split) * 2
    assert set(index["source_key"]) == set(split["key"])
    assert set(index["strength"]) <= {0.25, 0.5, 0.75, 1.0}
    assert index["token_hash"].str.len().eq(64).all()
    shards = sorted(str(p) for p in synthetic.glob("shard-*.tar"))
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode("pil"))
    assert sorted(s["__key__"] for s in samples) == sorted(index["key"])
    assert samples[0]["png"].size == (32, 32)
    assert samples[0]["json"]["set"] == synthetic.parent.name
    rg = pd.read_parquet(set_dir(results, "real-guidance", 0, 1) / "index.parquet")
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
    assert len(summary) == 4 * 2
    # no novelty figure: the default's one bin would repeat the scores figure
    for name in ("accuracy", "scores", "paired", "gallery-digits"):
        assert (results / f"figures/{name}.png").stat().st_size > 10_000, name
        assert (results / f"figures/{name}.pdf").read_bytes()[:5] == b"%PDF-"
    for name in ("summary", "scores", "novelty", "paired", "areas"):
        assert len(pd.read_csv(results / f"tables/{name}.csv")) > 0, name
    assert (results / "tables/summary.md").read_text().startswith("| dataset | method |")
    tokens = results / "digits/tokens"
    exported = sorted(p.name for p in (tokens / "seed0-shots1").glob("*.safetensors"))
    assert len(exported) == 10 and exported[:2] == ["eight.safetensors", "five.safetensors"]
    curves = pd.read_parquet(tokens / "seed0-shots1-loss.parquet")
    assert len(curves) == 2 * 10  # steps x classes
    assert not list(tokens.glob(".*checkpoint*"))
    for log in ("logs/aggregate.log", "logs/digits/invert/seed0-shots1.log"):
        assert (results / log).exists()
    daf = set_dir(results, "da-fusion", 0, 1)
    assert (
        results / "benchmarks/digits/generate" / daf.parent.name / daf.name / "part-0-of-1.tsv"
    ).exists()
    assert not list((results / "digits/synthetic").rglob("part-*.json"))  # temporary


@pytest.mark.browser
def test_the_report_opens_in_a_browser_with_every_image_shown(workdir):
    if chromium_path() is None:
        pytest.skip(NO_CHROMIUM)
    selectors = {
        "banner": ".banner",
        "sections": "section > h2",
        "provenance": "#provenance",
        "per_class": "#per-class-accuracy table",
        "runs": "#runs table",
    }
    page = render(workdir / "results/report.html", selectors)
    # no novelty figure: its one bin (common) would repeat the scores figure
    figures = [
        "accuracy", "recognition-digits", "per-class", "validation", "scores",
        "paired", "gallery-digits", "inversion-loss-digits", "erasure-digits",
    ]  # fmt: skip
    assert [image["alt"] for image in page["images"]] == [
        "Accuracy against examples per class", "Recognized by the reference classifier: digits",
        "Accuracy per class", "Validation curves",
        "Overall normalized score", "Paired improvement over the baseline",
        "Gallery: digits", "Inversion loss: digits", "Erasure check: digits",
    ]  # fmt: skip
    assert len(page["images"]) == len(figures)
    assert all(image["natural_width"] > 0 for image in page["images"]), page["images"]
    assert page["console_errors"] == [] and page["page_errors"] == []
    texts = page["texts"]
    # the embedded default's tiny model has random weights: the page says so first
    (banner,) = texts["banner"]
    assert banner.startswith("The images of this report were made by a random-weight model")
    # no Ablations section: no method is labelled 11
    assert texts["sections"] == [
        "Verdict", "Accuracy", "Per-class accuracy", "Runs", "Normalized scores",
        "Improvement over the baseline", "Synthetic images", "Diagnostics", "Provenance",
    ]  # fmt: skip
    (provenance,) = texts["provenance"]
    config = (workdir / "results/config.yaml").read_text()
    assert yaml.safe_load(config)["model"] == {
        **REDUCED["model"],
        "dtype": "float32",
        "vae": "checkpoint",
    }
    assert config.strip() in provenance
    assert str(workdir) not in config
    assert "code fingerprint\t" in provenance and "torch\t" in provenance
    # one dataset and one seed: those columns are named once in the caption instead
    (per_class,) = texts["per_class"]
    header, *rows = per_class.splitlines()
    assert header.split("\t") == ["shots", "class_name", *sorted(METHODS)]
    assert len(rows) == 10 * len(SHOTS)  # every class at every shot count
    # the digits' own order (their labels), not alphabetical
    assert [row.split("\t")[1] for row in rows[:3]] == ["zero", "one", "two"]
    # every run, then the cells still improving at their last step (10 steps: some are)
    runs, *late = texts["runs"]
    header, *rows = runs.splitlines()
    assert header.split("\t") == ["method", "1 per class", "2 per class"]
    assert len(rows) == len(METHODS)
    html = (workdir / "results/report.html").read_text()
    assert len(late) == ("Still improving at the last step</b>" in html) <= 1
    assert "In every row: dataset: digits; seed: 0." in html
    assert "Time and memory per rule" in html


def test_snakemakes_own_report_holds_the_figures(workdir, tmp_path):
    result = snakemake(workdir, "--report", str(tmp_path / "report.html"))
    assert result.returncode == 0, result.stderr[-3000:]
    page = (tmp_path / "report.html").read_text()
    for name in (
        "accuracy.png", "per-class.png", "validation.png", "scores.png", "paired.png",
        "gallery-digits.png", "inversion-loss-digits.png", "erasure-digits.png",
        "recognition-digits.png", "summary.csv", "per_class.csv", "runs.csv", "validation.csv",
        "config.yaml",
    ):  # fmt: skip
        assert name in page, name
    assert CAPTION_VALUES in page


# The defaults report the original code's number (README, Where this workflow differs).
CAPTION_VALUES = (
    "Values: mean per-class accuracy (test where a dataset has one, else val), step best on "
    "the seed mean"
)


def test_tables_and_captions_name_the_metric_and_selection(workdir):
    results = workdir / "results"
    for name in ("summary", "scores", "novelty", "paired", "areas"):
        table = pd.read_csv(results / f"tables/{name}.csv")
        assert set(zip(table["split"], table["metric"], table["selection"], strict=True)) == {
            ("val", "mean_class_accuracy", "seed_mean")  # digits has no test split
        }, name
    html = (results / "report.html").read_text()
    assert "<dd>mean per-class accuracy (val), step best on the seed mean</dd>" in html
    assert CAPTION_VALUES in html


def test_an_erased_method_uses_the_shared_per_class_deltas(workdir):
    results = workdir / "results/digits"
    check = pd.read_parquet(results / "erasure/esd/check.parquet")
    assert len(check) == 10 * 10 and check["erased"].sum() == 10
    own = check[check["erased"]]
    assert (own["delta"] == own["class_name"]).all()
    assert sorted(p.name for p in (results / "erasure/esd").glob("*.safetensors")) == sorted(
        own["file"]
    )
    assert not list((results / "erasure/esd").glob(".*checkpoint*"))
    for shots in SHOTS:
        index = pd.read_parquet(
            set_dir(workdir / "results", "da-fusion-erased", 0, shots) / "index.parquet"
        )
        fingerprint = dict(zip(own["class_name"], own["fingerprint"], strict=True))
        assert (index["erasure"] == index["class_name"].map(fingerprint)).all()
        assert (results / f"tokens/esd/seed0-shots{shots}.safetensors").exists()
    plain = pd.read_parquet(set_dir(workdir / "results", "da-fusion", 0, 1) / "index.parquet")
    assert (plain["erasure"] == "").all()


SHOTS = (1, 2)
DA_FUSION = REDUCED["methods"]["da-fusion"]
SYNTHETIC = ("real-guidance", "da-fusion", "da-fusion-erased")
TOKENS = ["da-fusion", "da-fusion-erased"]
METHODS = ("baseline", *SYNTHETIC)
AGGREGATE = ("aggregate", "results/tables/summary.csv")
END = {AGGREGATE, ("report", "results/report.html"), ("all", "")}
GALLERY = {("gallery", "results/figures/gallery-digits.png")}
# The reference classifier's recognition rates: every split and synthetic set of the digits.
RECOGNITION = {("recognition", "results/tables/recognition-digits.csv")}
CURVES = {("inversion_curves", "results/figures/inversion-loss-digits.png")}
ERASE = {
    ("erase", "results/digits/erasure/esd/check.parquet"),
    ("erasure_check", "results/figures/erasure-digits.png"),
}


# Filters (issue 41): a method's filter, each scorer's jobs, the report's filtering job.
FILTER = {"by": "classifier", "min_confidence": 0.5}
FILTERING = {("filtering", "results/tables/filtering-digits.csv")}


def scores(scorer: str, methods, seed: int = 0) -> set[tuple[str, str]]:
    """The `score_<scorer>` jobs of the sets of `methods` for every shot count of one seed."""
    return {
        (
            f"score_{scorer}",
            f"results/digits/synthetic/{m}/seed{seed}-shots{k}/scores-{scorer}.parquet",
        )
        for k in SHOTS
        for m in methods
    }


def jobs(rule: str, methods=(None,), seed: int = 0) -> set[tuple[str, str]]:
    """The jobs of `rule` for every shot count (and method) of one seed of the digits; for
    `generate`, with the `gather_synthetic` job of each set."""
    patterns = {
        "few_shot_split": {rule: "splits/seed{seed}-shots{k}.parquet"},
        "invert": {rule: "tokens/seed{seed}-shots{k}.safetensors"},
        "invert_erased": {rule: "tokens/esd/seed{seed}-shots{k}.safetensors"},
        "lora": {rule: "lora/seed{seed}-shots{k}"},
        "generate": {
            "generate": "synthetic/{m}/seed{seed}-shots{k}/part-0-of-1.json",
            "gather_synthetic": "synthetic/{m}/seed{seed}-shots{k}/index.parquet",
        },
        "train": {rule: "runs/{m}/seed{seed}-shots{k}.parquet"},
    }[rule]
    return {
        (name, "results/digits/" + pattern.format(seed=seed, k=k, m=m))
        for name, pattern in patterns.items()
        for k in SHOTS
        for m in methods
    }


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ({"aggregate": {"report_split": "val"}}, END),
        ({"aggregate": {"metric": "accuracy"}}, END),
        ({"aggregate": {"selection": "run"}}, END),
        ({"classifier": {"lr": 0.01}}, jobs("train", METHODS) | END),
        ({"classifier": {"synthetic_probability": 0.3}}, jobs("train", SYNTHETIC) | END),
        ({"classifier": {"normalization": "backbone"}}, jobs("train", METHODS) | END),
        # A protocol is the keys it stands for (bn_mode and normalization): every run.
        ({"classifier": {"protocol": "clean"}}, jobs("train", METHODS) | END),
        ({"classifier": {"vertical_flip": True}}, jobs("train", METHODS) | END),
        # Every execution knob at once (and settings read only in a mode that is off).
        (
            {
                "model": {"device": "cpu"},
                "inversion": {
                    "checkpoint_every": 1, "classes_per_chunk": 3, "gradient_checkpointing": True,
                },
                "erasure": {"checkpoint_every": 1, "batch_size": 3},
                "generation": {
                    "batch_size": 3, "workers": 1, "compile": True, "parts": 2,
                    "vae_slicing": True,
                },
                "classifier": {"device": "cpu"},
                "scoring": {"device": "cpu", "batch_size": 3},
            },
            set(),
        ),
        # Settings read only in a mode that is off (UCE's lamb under ESD, the safety
        # checker's retries without it, CutMix's mode under standard augmentation): no result
        # changes, only the config the report records.
        (
            {
                "erasure": {"lamb": 0.1},
                "generation": {"safety_retries": 5},
                "classifier": {"cutmix_mode": "batch"},
            },
            {("report", "results/report.html"), ("all", "")},
        ),
        # An erasure setting: the shared erase job and the erased method's jobs only.
        (
            {"erasure": {"iterations": 3}},
            ERASE | jobs("invert_erased") | jobs("generate", ["da-fusion-erased"])
            | jobs("train", ["da-fusion-erased"]) | END | GALLERY | RECOGNITION | CURVES,
        ),
        (
            {"generation": {"num_synthetic": 3}},
            jobs("generate", SYNTHETIC) | jobs("train", SYNTHETIC) | END | GALLERY | RECOGNITION,
        ),
        (
            {"inversion": {"learning_rate": 0.01}},
            jobs("invert") | jobs("invert_erased") | jobs("generate", TOKENS)
            | jobs("train", TOKENS) | END | GALLERY | RECOGNITION | CURVES,
        ),
        (
            {"inversion": {"repeats": 10}},
            jobs("invert") | jobs("invert_erased") | jobs("generate", TOKENS)
            | jobs("train", TOKENS) | END | GALLERY | RECOGNITION | CURVES,
        ),
        # A dataset setting: the dataset is read again, and everything downstream reruns.
        (
            {"datasets": {"digits": {"unevaluated_classes": "drop"}}},
            {
                (
                    "check_dataset",
                    workflow_plan(
                        REDUCED, {"datasets": {"digits": {"unevaluated_classes": "drop"}}}
                    ).dataset_check("digits"),
                ),
                ("index_dataset", "results/digits/splits/pool.parquet"),
            }
            | ERASE
            | jobs("few_shot_split") | jobs("invert") | jobs("invert_erased")
            | jobs("generate", SYNTHETIC) | jobs("train", METHODS) | END | GALLERY | RECOGNITION
            | CURVES,
        ),
        # Overrides reach exactly the jobs of their dataset or method; labels reach none.
        (
            {"methods": {"real-guidance": {"generation": {"num_synthetic": 3}}}},
            jobs("generate", ["real-guidance"]) | jobs("train", ["real-guidance"]) | END
            | GALLERY | RECOGNITION,
        ),
        (
            {"methods": {"real-guidance": {"dataset_prompts": {"digits": "a drawing"}}}},
            jobs("generate", ["real-guidance"]) | jobs("train", ["real-guidance"]) | END
            | GALLERY | RECOGNITION,
        ),
        (
            {"inversion": {"templates": ["a photo of a {}"]}},
            jobs("invert") | jobs("invert_erased") | jobs("generate", TOKENS)
            | jobs("train", TOKENS) | END | GALLERY | RECOGNITION | CURVES,
        ),
        # Each stage's precision is its own: inversion's reruns inversion and what reads its
        # tokens, model.dtype generation (not inversion), the classifier's the runs.
        (
            {"inversion": {"mixed_precision": "bf16"}},
            jobs("invert") | jobs("invert_erased") | jobs("generate", TOKENS)
            | jobs("train", TOKENS) | END | GALLERY | RECOGNITION | CURVES,
        ),
        (
            {"model": {"dtype": "bfloat16"}},
            jobs("generate", SYNTHETIC) | jobs("train", SYNTHETIC) | END | GALLERY | RECOGNITION,
        ),
        # The VAE: what encodes or decodes images (inversion, generation), not erasure.
        (
            {"model": {"vae": "float32"}},
            jobs("invert") | jobs("invert_erased") | jobs("generate", SYNTHETIC)
            | jobs("train", SYNTHETIC) | END | GALLERY | RECOGNITION | CURVES,
        ),
        ({"classifier": {"precision": "bf16"}}, jobs("train", METHODS) | END),
        (
            {"methods": {"baseline": {"classifier": {"augmentation": "randaugment"}}}},
            jobs("train", ["baseline"]) | END,
        ),
        (
            {"methods": {"baseline": {"classifier": {"augmentation": "cutmix"}}}},
            jobs("train", ["baseline"]) | END,
        ),
        ({"datasets": {"digits": {"classifier": {"lr": 0.01}}}}, jobs("train", METHODS) | END),
        # Figure labels change only what the report draws.
        ({"methods": {"da-fusion": {"figures": [5, 9]}}}, END),
        ({"aggregate": {"gallery_variants": 1}}, GALLERY | END - {AGGREGATE}),
        ({"aggregate": {"baseline": "real-guidance"}}, END),
        ({"aggregate": {"novelty": {"fine-grain": ["digits"]}}}, END),
        # Synthetic sets shared by identity (Figure 11): a method that differs from
        # da-fusion only in alpha and a smaller M reads da-fusion's set, which stays; one of a
        # larger M regenerates that set with its M (and da-fusion's runs, which read it).
        (
            {"methods": {"da-fusion-m1": {**DA_FUSION, "generation": {"num_synthetic": 1},
                                          "classifier": {"synthetic_probability": 0.3}}}},
            jobs("train", ["da-fusion-m1"]) | END | GALLERY | RECOGNITION,
        ),
        (
            {"methods": {"da-fusion-m3": {**DA_FUSION, "generation": {"num_synthetic": 3}}}},
            jobs("generate", ["da-fusion+da-fusion-m3"])
            | jobs("train", ["da-fusion", "da-fusion-m3"]) | END | GALLERY | RECOGNITION,
        ),
        # A method's learner (learner: lora): its own lora job per split and its own set, so
        # switching it reruns only that method's jobs (da-fusion's plain tokens stay, unread);
        # a twin that differs only in its learner gets a set of its own.
        (
            {"methods": {"da-fusion": {"learner": "lora"}}, "lora": {"steps": 2}},
            jobs("lora") | jobs("generate", ["da-fusion"]) | jobs("train", ["da-fusion"]) | END
            | GALLERY | RECOGNITION | CURVES,
        ),
        (
            {"methods": {"da-fusion-lora": {**DA_FUSION, "learner": "lora"}}},
            jobs("lora") | jobs("generate", ["da-fusion-lora"]) | jobs("train", ["da-fusion-lora"])
            | END | GALLERY | RECOGNITION | CURVES,
        ),
        # lora settings reach only the methods whose learner is lora (none here): only the
        # config the report records changes.
        ({"lora": {"rank": 4}}, {("report", "results/report.html"), ("all", "")}),
        # A filtered method (issue 41) reads da-fusion's set: no generation; its scorer
        # scores every set of the dataset (after the baseline's runs, whose heads exist),
        # and only its own runs read the scores. A filter is no part of a set's identity;
        # the gallery shows its images as its unfiltered twin's, da-fusion.
        (
            {"methods": {"da-fusion-filtered": {**DA_FUSION, "filter": FILTER}}},
            scores("classifier", ["real-guidance", "da-fusion+da-fusion-filtered",
                                  "da-fusion-erased"])
            | jobs("train", ["da-fusion-filtered"]) | FILTERING | END,
        ),
        # The scorers' settings reach only the jobs of a scorer in use (none here).
        (
            {"scoring": {"clip_model": "elsewhere/clip"}},
            {("report", "results/report.html"), ("all", "")},
        ),
        # A new seed: its own jobs; the erasure is shared by every seed and shot count.
        (
            {"seeds": [0, 1]},
            jobs("few_shot_split", seed=1) | jobs("invert", seed=1) | jobs("invert_erased", seed=1)
            | jobs("generate", SYNTHETIC, seed=1) | jobs("train", METHODS, seed=1) | END
            | RECOGNITION,
        ),
    ],
)  # fmt: skip
def test_a_setting_reruns_exactly_the_jobs_it_affects(workdir, overlay, expected):
    assert dry_run(workdir, overlay) == expected


@pytest.mark.parametrize(
    ("path", "old", "new", "expected"),
    [
        (
            "src/dafusion/stages/generation.py", "", "\nEDITED = True\n",
            jobs("generate", SYNTHETIC) | jobs("train", SYNTHETIC) | END | GALLERY | RECOGNITION,
        ),
        ("src/dafusion/reporting/aggregate.py", "", "\nEDITED = True\n", END),
        # pipeline.py: only the edited step's function counts.
        (
            "src/dafusion/pipeline.py", '"learned %d tokens', '"learned %d class tokens',
            jobs("invert") | jobs("invert_erased") | jobs("generate", TOKENS)
            | jobs("train", TOKENS) | END | GALLERY | RECOGNITION | CURVES,
        ),
        (
            "src/dafusion/stages/erasure.py", "", "\nEDITED = True\n",
            ERASE | jobs("invert_erased") | jobs("generate", ["da-fusion-erased"])
            | jobs("train", ["da-fusion-erased"]) | END | GALLERY | RECOGNITION | CURVES,
        ),
        ("src/dafusion/pipeline.py", "", "\nEDITED = True\n", set()),
        ("workflow/scripts/train.py", "", "\n# edited\n", jobs("train", METHODS) | END),
    ],
)  # fmt: skip
def test_a_code_edit_reruns_exactly_the_jobs_that_run_it(workdir, path, old, new, expected):
    source = workdir / path
    original = source.read_text()
    assert old in original
    edited = original.replace(old, new, 1) if old else original + new
    source.write_text(edited)
    try:
        assert dry_run(workdir) == expected
    finally:
        source.write_text(original)


def test_a_finished_run_has_nothing_to_do(workdir):
    assert dry_run(workdir) == set()


def test_touching_every_source_file_reruns_nothing(workdir):
    """Also after the edits above were undone: only content counts, never mtimes."""
    sources = [workdir / "Snakefile", *workdir.glob("src/**/*.py"), *workdir.glob("workflow/**/*")]
    for path in sources:
        if path.is_file():
            os.utime(path)
    assert dry_run(workdir) == set()


def test_jobs_run_the_workflows_own_library(workdir):
    """Not another copy installed in the environment (this repository's, in the tests)."""
    log = (workdir / "results/logs/aggregate.log").read_text()
    assert f"dafusion from {workdir / 'src' / 'dafusion'} (sha256 " in log


def test_synthetic_tokens_and_erasure_targets(workdir):
    assert scheduled(workdir, "--cores", "2", "synthetic", "tokens", "erasure") == set()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"datasets": {"digits": {"kind": "mnist"}}}, "config key 'datasets.digits.kind'"),
        ({"examples_per_class": [-1]}, "config key 'examples_per_class.0'"),
        (
            {"datasets": {"mine": {"kind": "imagefolder", "root": "no/such/dir"}}},
            "config key 'datasets.mine.root'",
        ),
        (
            {"methods": {"rg": {"kind": "sdedit", "prompt": "a {name}", "strengths": [1.5]}}},
            "config key 'methods.rg.strengths.0'",
        ),
        (
            {"methods": {"rg": {"kind": "sdedit", "prompt": "a {nmae}", "strengths": [0.5]}}},
            "config key 'methods.rg.prompt': 'a {nmae}' may hold only {name} or {token}",
        ),
        (
            {"model": {"pretrained": "half-copied", "resolution": 32}},
            "config key 'model.pretrained': 'half-copied' lacks tokenizer/vocab.json",
        ),
        # issue 30: settings that failed only in a job (generate, erase, aggregate)
        (
            {"methods": {"rg": {"kind": "sdedit", "prompt": "a {name}", "strengths": [0.5],
                                "mask": "object"}}},
            "config key 'methods.rg.mask': 'object' needs object masks",
        ),
        (
            {"erasure": {**REDUCED["erasure"], "ddim_steps": 1001}},
            "config key 'erasure.ddim_steps': 1001 is above the model's 1000 training steps",
        ),
        (
            {"methods": {m: {**spec, "figures": [11]} for m, spec in REDUCED["methods"].items()}},
            "config key 'methods.da-fusion.figures': methods ['da-fusion', 'da-fusion-erased', "
            "'real-guidance'] labelled 11 share a",
        ),
    ],
)  # fmt: skip
def test_bad_config_stops_before_any_job(tmp_path, change, message):
    workdir = copy_workflow(tmp_path / "dafusion")
    (workdir / "half-copied").mkdir()  # a copy stopped after its first file
    index = REPO / "src/dafusion/assets/tiny-digits/model_index.json"
    (workdir / "half-copied/model_index.json").write_text(index.read_text())
    write_config(workdir, "config.yaml", {**REDUCED, **change})
    result = snakemake(workdir, "--cores", "1")
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (workdir / "results").exists()


# Root writes to any folder: as root, Snakemake runs without the capabilities that let it
# (setpriv from util-linux), so that permissions count as for any other user.
AS_A_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def test_a_read_only_results_folder_stops_a_run_before_any_job(tmp_path):
    """Snakemake deletes a job's old log before running it: in a read-only results folder
    that was a PermissionError traceback from the first job. Now the run stops at start,
    naming the folder; a dry run, which writes nothing, still shows what would run."""
    root = os.geteuid() == 0
    if root and not shutil.which("setpriv"):
        pytest.skip("running as root, where permissions stop no write, and without setpriv")
    workdir = copy_workflow(tmp_path / "dafusion")
    path = write_config(workdir, "config.yaml", REDUCED)
    log = workdir / "results/logs/digits/index_dataset.log"
    log.parent.mkdir(parents=True)
    log.write_text("an earlier run's log\n")
    folders = [p for p in (workdir / "results").rglob("*") if p.is_dir()]
    for folder in [workdir / "results", *folders]:
        folder.chmod(0o555)
    target = "results/digits/splits/pool.parquet"
    command = [*SNAKEMAKE, "--cores", "1", target, "--configfile", path]
    if root:
        command = [*AS_A_USER, *command]

    def run(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        return subprocess.run(
            [*command, *args], cwd=workdir, capture_output=True, text=True, env=env, timeout=300
        )

    try:
        assert run("-n").returncode == 0
        result = run()
    finally:
        for folder in [workdir / "results", *folders]:
            folder.chmod(0o755)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config key 'results': jobs cannot write to the results folder 'results'" in output
    assert "Traceback" not in output and "PermissionError" not in output
    assert log.read_text() == "an earlier run's log\n"


def test_a_changed_dataset_root_reruns_index_dataset(tmp_path):
    from PIL import Image

    workdir = copy_workflow(tmp_path / "dafusion")
    for name, color in (("cat", (200, 0, 0)), ("dog", (0, 0, 200))):
        (workdir / "photos" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), color).save(workdir / "photos" / name / f"{i}.png")
    config = {
        **REDUCED,
        "datasets": {"photos": {"kind": "imagefolder", "root": "photos"}},
        "methods": {"baseline": {"kind": "baseline"}},
        "erasure": {"enabled": False},
    }
    write_config(workdir, "config.yaml", config)
    target = "results/photos/splits/pool.parquet"
    assert snakemake(workdir, "--cores", "1", target).returncode == 0
    check = workflow_plan(config).dataset_check("photos")
    index = {("check_dataset", check), ("index_dataset", target)}
    assert scheduled(workdir, "--cores", "1", target) == set()
    Image.new("RGB", (16, 16), (0, 0, 150)).save(workdir / "photos/dog/new.png")
    assert scheduled(workdir, "--cores", "1", target) == index
    (workdir / "photos/dog/new.png").unlink()
    assert scheduled(workdir, "--cores", "1", target) == set()
    overlay = write_config(workdir, "o.yaml", {"datasets": {"photos": {"track_files": False}}})
    (workdir / "photos/cat/0.png").write_bytes((workdir / "photos/dog/0.png").read_bytes())
    untracked = scheduled(
        workdir, "--cores", "1", target, "--configfile", "config/config.yaml", overlay
    )
    assert untracked == set()  # not listed: the change goes unnoticed
    assert scheduled(workdir, "--cores", "1", target) == index


def test_a_config_file_of_ones_own_replaces_the_default(tmp_path):
    """--configfile mine.yaml runs mine alone (no digits); --config still overlays the default."""
    workdir = copy_workflow(tmp_path / "dafusion")
    write_config(workdir, "config.yaml", REDUCED)
    (workdir / "photos/cat").mkdir(parents=True)
    mine = {**REDUCED, "datasets": {"photos": {"kind": "imagefolder", "root": "photos"}}}
    path = write_config(workdir, "mine.yaml", mine)
    outputs = {output for _, output in scheduled(workdir, "--cores", "1", "--configfile", path)}
    assert any("results/photos/" in o for o in outputs)
    assert not any("digits" in o for o in outputs)
    overlaid = scheduled(workdir, "--cores", "1", "--config", "results=elsewhere")
    assert "elsewhere/digits/splits/pool.parquet" in {output for _, output in overlaid}


def test_train_declares_a_gpu_when_it_will_use_cuda(workdir):
    """So that --cores N cannot pile classifier jobs onto the GPU generation is using."""
    overlay = write_config(workdir, "o.yaml", {"classifier": {"device": "cuda"}})
    jobs = dry_run_jobs(
        workdir, "--cores", "2", "--forcerun", "train",
        "--configfile", "config/config.yaml", overlay,
    )  # fmt: skip
    trains = [job for job in jobs if job["rule"] == "train"]
    assert len(trains) == 8 and all(job["resources"].get("gpu") == 1 for job in trains)


def _contents(workdir: Path) -> dict[str, bytes]:
    files = (workdir / "results").rglob("*")
    return {str(p): p.read_bytes() for p in files if p.is_file() and "logs" not in p.parts}


def test_resources_without_a_gpu_limit_stop_before_any_gpu_job(workdir):
    """Any --resources replaces the profile's gpu=1: every GPU job would start at once."""
    before = _contents(workdir)
    overlay = write_config(workdir, "o.yaml", {"classifier": {"device": "cuda"}})
    result = snakemake(
        workdir, "--cores", "2", "--resources", "mem_mb=8000", "--forcerun", "train",
        "--configfile", "config/config.yaml", overlay,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Add gpu=1 to --resources" in result.stdout + result.stderr
    assert _contents(workdir) == before


@pytest.mark.parametrize(
    ("overlay", "key"),
    [
        ({"model": {"pretrained": "models/missing"}}, "model.pretrained"),
        ({"generation": {"scheduler": "NoSuchScheduler"}}, "generation.scheduler"),
        # issue 30: settings that failed only in a job, after its outputs were deleted
        ({"methods": {"real-guidance": {"strengths": [0.01]}}}, "methods.real-guidance.strengths"),
        (
            {"classifier": {"backbone": "resnet50", "weights": "someone/not-cached"}},
            "classifier.weights",
        ),
        (
            {"classifier": {"backbone": "resnet50", "weights": "missing/resnet50.safetensors"}},
            "classifier.weights",
        ),
        ({"inversion": {"initializer": ""}}, "inversion.initializer"),
    ],
)
def test_a_bad_setting_stops_the_run_before_any_output_is_touched(workdir, overlay, key):
    """Snakemake deletes a job's old outputs when the job starts: a setting only a job could
    check would have cost the previous results."""

    before = _contents(workdir)
    path = write_config(workdir, "bad.yaml", overlay)
    result = snakemake(workdir, "--cores", "2", "-k", "--configfile", "config/config.yaml", path)
    assert result.returncode != 0
    assert f"config key '{key}'" in result.stdout + result.stderr
    assert _contents(workdir) == before


def _augment_command(workdir: Path, photos: Path) -> list[str]:
    """The README's augment words with the offline overlay, for the photos at `photos`."""
    (workdir / "config").mkdir(exist_ok=True)
    for name in ("augment.yaml", "augment-tiny.yaml"):
        shutil.copy(REPO / "config" / name, workdir / "config" / name)
    return [
        "--configfile", "config/augment.yaml", "config/augment-tiny.yaml",
        "--config", f"datasets={{photos: {{root: '{photos}'}}}}",
    ]  # fmt: skip


def test_augment_beside_the_default_leaves_its_results_alone(tmp_path):
    """Issue 27: the augment path in the default's working directory writes its own results
    folder and model, and the all target refuses it even where the default's report exists."""
    workdir = copy_workflow(tmp_path / "dafusion")
    methods = {k: REDUCED["methods"][k] for k in ("baseline", "da-fusion")}
    default = {**REDUCED, "examples_per_class": [1], "methods": methods}
    write_config(workdir, "config.yaml", {**default, "erasure": {"enabled": False}})
    finished = snakemake(workdir, "--cores", "2")
    assert finished.returncode == 0, finished.stderr[-5000:]
    before = _contents(workdir)
    photos = tmp_path / "photos"
    photo_folder(photos)
    command = _augment_command(workdir, photos)
    result = snakemake(workdir, "--cores", "2", "synthetic", *command)
    assert result.returncode == 0, result.stderr[-5000:]
    assert list((workdir / "results-augment/photos/synthetic").glob("*/seed0-shotsall"))
    in_results = write_config(workdir, "in-results.yaml", {"results": "results"})
    words = [*command[:3], in_results, *command[3:]]  # the default's results folder
    refused = snakemake(workdir, "-n", "--cores", "2", "all", *words)
    assert refused.returncode != 0
    assert "config key 'examples_per_class': 'all'" in refused.stdout + refused.stderr
    assert _contents(workdir) == before
    assert scheduled(workdir, "--cores", "2") == set()


def test_a_lora_learner_runs_end_to_end_on_the_miniature(tmp_path):
    """learner: lora on the shipped v1 miniature (tiny-digits), the whole workflow: the lora
    job's adapter loads with diffusers' load_lora_weights, its set is made with it and its
    tokens, and the report's loss curves show its losses; no invert job runs."""
    from diffusers import StableDiffusionPipeline

    workdir = copy_workflow(tmp_path / "dafusion")
    config = {
        **REDUCED,
        "examples_per_class": [1],
        "model": {"pretrained": "tiny-digits", "resolution": 16},
        "methods": {
            "baseline": {"kind": "baseline"},
            "da-fusion-lora": {**DA_FUSION, "learner": "lora"},
        },
        "erasure": {"enabled": False},
        "lora": {"rank": 4, "steps": 2},
        "classifier": {**REDUCED["classifier"], "steps": 2, "eval_interval": 1},
    }
    write_config(workdir, "config.yaml", config)
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stderr[-5000:]
    results = workdir / "results"
    lora = results / "digits/lora"
    written = sorted(p.name for p in lora.iterdir() if not p.name.endswith(".sha256.json"))
    assert written == [
        "seed0-shots1",
        "seed0-shots1-loss.parquet",
        "seed0-shots1.safetensors",
    ]  # beside the outputs' digests, no checkpoint or temporary left
    assert not (results / "digits/tokens").exists()  # the tokens came from the lora job
    losses = pd.read_parquet(lora / "seed0-shots1-loss.parquet")
    assert list(losses.columns) == ["step", "class_name", "token", "loss"] and len(losses) == 20
    pipe = StableDiffusionPipeline.from_pretrained(
        results / "model/tiny-digits", use_safetensors=True
    )
    pipe.load_lora_weights(str(lora / "seed0-shots1"))
    assert sum("lora_" in name for name, _ in pipe.unet.named_parameters()) > 0
    index = pd.read_parquet(set_dir(results, "da-fusion-lora", 0, 1, config) / "index.parquet")
    assert len(index) == 10 * 2 and index["prompt"].str.contains("<").all()
    identity = workflow_plan(config).sets.identity("digits", "da-fusion-lora")
    assert identity["method"]["learner"] == "lora" and identity["lora"]["rank"] == 4
    assert (results / "figures/inversion-loss-digits.png").is_file()
    assert (results / "report.html").is_file()
    assert scheduled(workdir, "--cores", "2") == set()


def test_the_whole_workflow_runs_on_a_tiny_sdxl(tmp_path):
    """Issue 40: every stage on the SDXL family, end to end on the tiny random SDXL
    (`model.pretrained: tiny-sdxl`): its tokens learned in both text encoders, ESD on its
    UNet, SDEdit with pooled embeddings and size ids, the classifiers and the report; a
    second run schedules nothing."""
    workdir = copy_workflow(tmp_path / "dafusion")
    config = {
        **REDUCED,
        "examples_per_class": [1],
        "model": {"pretrained": "tiny-sdxl", "resolution": 32},
        "classifier": {**REDUCED["classifier"], "steps": 2, "eval_interval": 1},
    }
    write_config(workdir, "config.yaml", config)
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stderr[-5000:]
    results = workdir / "results"
    index = json.loads((results / "model/tiny-sdxl-32px/model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    with safe_open(str(results / "digits/tokens/seed0-shots1.safetensors"), "pt") as f:
        assert sorted(f.keys()) == sorted(  # each class's rows in both text encoders
            f"{encoder}/{class_token(name)}"
            for encoder in ("clip_l", "clip_g")
            for name in DIGIT_NAMES
        )
    for method in ("real-guidance", "da-fusion", "da-fusion-erased"):
        shards = pd.read_parquet(set_dir(results, method, 0, 1, config) / "index.parquet")
        assert len(shards) == 10 * 2 and not shards["dropped"].any(), method
    assert (results / "report.html").is_file()
    assert scheduled(workdir, "--cores", "2") == set()


def test_the_sdxl_augment_path_runs_on_the_tiny_sdxl(tmp_path):
    """config/sdxl.yaml over config/augment.yaml (the README's SDXL command), with the
    model swapped for the tiny random SDXL: tokens in both encoders and a synthetic set,
    under results-sdxl/."""
    workdir = copy_workflow(tmp_path / "dafusion")
    photos = tmp_path / "photos"
    photo_folder(photos)
    command = _augment_command(workdir, photos)
    shutil.copy(REPO / "config/sdxl.yaml", workdir / "config/sdxl.yaml")
    tiny = write_config(
        workdir,
        "tiny.yaml",
        {"model": {"pretrained": "tiny-sdxl", "resolution": 32, "dtype": "float32"}},
    )
    words = ["--configfile", "config/augment.yaml", "config/sdxl.yaml", tiny, *command[3:]]
    result = snakemake(workdir, "--cores", "2", "synthetic", *words)
    assert result.returncode == 0, result.stderr[-5000:]
    results = workdir / "results-sdxl/photos"
    with safe_open(str(results / "tokens/seed0-shotsall.safetensors"), "pt") as f:
        keys = f.keys()  # a safetensors file's, not a dict's
    assert {key.split("/")[0] for key in keys} == {"clip_l", "clip_g"}
    [index] = results.glob("synthetic/*/seed0-shotsall/index.parquet")
    assert len(pd.read_parquet(index)) > 0


def test_classes_named_in_other_scripts_get_their_own_tokens_and_train(tmp_path):
    """Cat and dog in Chinese, cat in Arabic and a dog emoji once shared the token '<class>'
    (and their 0.png one key): now each class's own token is learned, used and trained on."""
    workdir = copy_workflow(tmp_path / "dafusion")
    names = ["猫", "犬", "قطة", "🐶"]
    for c, name in enumerate(names):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (60 * c, 20 * i, 100)).save(
                tmp_path / "pets" / name / f"{i}.png"
            )
    config = {
        **REDUCED,
        "datasets": {"pets": {"kind": "imagefolder", "root": str(tmp_path / "pets")}},
        "examples_per_class": [1],
        "methods": {
            "da-fusion": {"kind": "sdedit", "prompt": "a photo of a {token}", "strengths": [0.5]}
        },
        "erasure": {"enabled": False},
        "generation": {"num_synthetic": 1, "num_inference_steps": 2, "batch_size": 8},
        "classifier": {**REDUCED["classifier"], "steps": 2, "eval_interval": 1},
    }
    path = write_config(workdir, "mine.yaml", config)
    run = "results/pets/runs/da-fusion/seed0-shots1.parquet"
    result = snakemake(workdir, "--cores", "2", run, "--configfile", path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    with safe_open(workdir / "results/pets/tokens/seed0-shots1.safetensors", "pt") as tokens:
        assert sorted(tokens.keys()) == sorted(class_token(name) for name in names)
    assert len({class_token(name) for name in names}) == 4
    metrics = set(pd.read_parquet(workdir / run)["metric"])
    assert {f"accuracy/{name}" for name in names} <= metrics


@pytest.mark.parametrize(
    ("problem", "skip_corrupt", "message"),
    [
        ("truncated", False, r"cannot read image '.*/dog/d\.jpg'.*[Tt]runcated"),
        ("case", False, r"'Cat', 'cat' give the same class token '<cat>'"),
        ("unreadable", True, r"class 'dog' has no readable training images left"),
    ],
)
def test_a_dataset_problem_stops_check_dataset_before_any_later_job(
    tmp_path, problem, skip_corrupt, message
):
    workdir = copy_workflow(tmp_path / "dafusion")
    photos = tmp_path / "photos"
    for name in ("cat/a.png", "cat/b.png", "dog/c.png", "dog/d.jpg"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 24), "red").save(photos / name)
    if problem == "truncated":
        (photos / "dog/d.jpg").write_bytes((photos / "dog/d.jpg").read_bytes()[:300])
    elif problem == "case":
        shutil.copytree(photos / "cat", photos / "Cat")
    else:
        for name in ("dog/c.png", "dog/d.jpg"):
            (photos / name).write_bytes(b"not an image")
    config = {
        **REDUCED,
        "datasets": {"photos": {"kind": "imagefolder", "root": str(photos),
                                "val_fraction": 0, "skip_corrupt": skip_corrupt}},
        "examples_per_class": ["all"],
        "methods": {"rg": {"kind": "sdedit", "prompt": "a {name}", "strengths": [0.5]}},
        "erasure": {"enabled": False},
    }  # fmt: skip
    path = write_config(workdir, "mine.yaml", config)
    split = "results/photos/splits/seed0-shotsall.parquet"  # the first job after it
    result = snakemake(workdir, "--cores", "1", split, "--configfile", path)
    assert result.returncode != 0
    assert "Error in rule check_dataset" in result.stdout + result.stderr
    (log_file,) = (workdir / "results/logs/photos/check_dataset").glob("*.log")
    log = log_file.read_text()
    assert re.search(message, log), log[-2000:]
    assert not (workdir / "results/photos/splits/pool.parquet").exists()
    assert not (workdir / split).exists()


def test_a_set_in_parts_is_the_same_bytes_and_changing_parts_reruns_nothing(tmp_path):
    """generation.parts: 3 (5 shards: parts of 2, 2 and 1) writes the shards one job writes;
    the index records the parts, whose row files are temporary. After either run, any other
    number of parts schedules nothing. Parts above the shards (8 for 5) are clamped once the
    split exists."""
    workdir = copy_workflow(tmp_path / "dafusion")
    config = {
        **REDUCED,
        "examples_per_class": [1],
        "methods": {"rg": {"kind": "sdedit", "prompt": "a photo of a {name}", "strengths": [0.5]}},
        "erasure": {"enabled": False},
        "generation": {"num_synthetic": 2, "num_inference_steps": 2, "shard_size": 4},
    }
    path = write_config(workdir, "config.yaml", config)
    folder = set_dir(workdir / "results", "rg", 0, 1, config)
    target = str((folder / "index.parquet").relative_to(workdir))

    def args(parts):
        overlay = write_config(workdir, "parts.yaml", {"generation": {"parts": parts}})
        return ["--cores", "2", target, "--configfile", path, overlay]

    def run(parts):
        result = snakemake(workdir, *args(parts))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    def dry_run(parts):
        return scheduled(workdir, *args(parts))

    def part(p, parts):
        return f"{target.rsplit('/', 1)[0]}/part-{p}-of-{parts}.json"

    run(3)
    shards = [f"shard-{n:06d}.tar" for n in range(5)]
    described = ["README.md", "classes.json", "index.parquet"]  # dafusion.data.card
    digests = [".index.parquet.sha256.json"]  # dafusion.jobs.integrity
    assert sorted(p.name for p in folder.iterdir()) == [*digests, *described, *shards]
    in_parts = {name: (folder / name).read_bytes() for name in [*shards, "classes.json"]}
    rows = pd.read_parquet(folder / "index.parquet")
    assert recorded_parts(folder / "index.parquet") == 3
    assert dry_run(1) == dry_run(2) == set()

    shutil.rmtree(folder)
    assert dry_run(1) == {("generate", part(0, 1)), ("gather_synthetic", target)}
    assert ("generate", part(4, 5)) in dry_run(8)  # 20 images in shards of 4: 5 parts
    run(1)
    assert {name: (folder / name).read_bytes() for name in in_parts} == in_parts
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "index.parquet"), rows)
    assert recorded_parts(folder / "index.parquet") == 1
    assert dry_run(3) == set()


def test_results_are_the_same_bytes_wherever_the_workflow_and_results_lie(tmp_path, voc):
    """The same config run in two checkouts at different absolute paths, into differently
    named results folders: every result file (object masks, splits, erasure deltas and check
    table, token files, shards, synthetic index, run) is the same bytes, so no path, results
    location or run time enters a result or a fingerprint recorded in one (issue 30). Logs
    and benchmarks (times, paths) may differ; report.html, which records when it was made,
    is not built. Both runs go at once, one core each: their jobs form one chain."""
    config = {
        **REDUCED,
        "datasets": {"voc": {"kind": "pascal", "root": str(voc / "VOCdevkit")}},
        "examples_per_class": [1],
        "inversion": {"steps": 1, "batch_size": 1},
        "methods": {
            "da-fusion-erased": {
                "kind": "sdedit",
                "prompt": "a photo of a {token}",
                "strengths": [0.5],
                "mask": "object",
                "erased": True,
            },
        },  # fmt: skip
        "erasure": {"enabled": True, "method": "esd", "iterations": 1, "ddim_steps": 2},
        "generation": {"num_synthetic": 1, "num_inference_steps": 2, "batch_size": 8},
        "classifier": {**REDUCED["classifier"], "steps": 1, "eval_interval": 1},
    }
    places = {tmp_path / "a/dafusion": "results", tmp_path / "somewhere/else/checkout": "out"}

    def run(workdir: Path, results: str) -> subprocess.CompletedProcess:
        copy_workflow(workdir)
        path = write_config(workdir, "config.yaml", {**config, "results": results})
        target = f"{results}/voc/runs/da-fusion-erased/seed0-shots1.parquet"
        return snakemake(workdir, "--cores", "1", target, "--configfile", path)

    with ThreadPoolExecutor(2) as pool:
        for result in pool.map(run, places, places.values()):
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    def contents(root: Path) -> dict[str, bytes]:
        files = [p for p in root.rglob("*") if p.is_file()]
        relative = [p.relative_to(root) for p in files]
        return {
            str(r): p.read_bytes()
            for p, r in zip(files, relative, strict=True)
            if r.parts[0] not in ("logs", "benchmarks")
        }

    first, second = (contents(workdir / results) for workdir, results in places.items())
    assert sorted(first) == sorted(second)
    kinds = {Path(name).suffix for name in first}
    assert {".png", ".parquet", ".safetensors", ".tar"} <= kinds
    assert [name for name in first if first[name] != second[name]] == []


# Issue 36: a project works where it is moved, and a bad value destroys nothing.


def test_a_moved_project_and_a_package_elsewhere_rerun_nothing(tmp_path):
    """A finished project of the shipped miniature (tiny-digits and the reference classifier,
    which the package ships) copied to another folder, the original gone: its dry run
    schedules nothing, also with the workflow's code (and so the package) at a third path.
    The jobs read the shipped files through their copies under the results
    (`place_shipped`), so no recorded input names the checkout."""
    first = copy_workflow(tmp_path / "first/dafusion")
    config = {
        **REDUCED,
        "model": {"pretrained": "tiny-digits", "resolution": 16},
        "examples_per_class": [1],
        "methods": {k: REDUCED["methods"][k] for k in ("baseline", "da-fusion-erased")},
        "inversion": {"steps": 1, "batch_size": 1},
        "erasure": {"enabled": True, "method": "esd", "iterations": 1, "ddim_steps": 2},
        "generation": {"num_synthetic": 1, "num_inference_steps": 2, "batch_size": 8},
        "classifier": {**REDUCED["classifier"], "image_size": 16, "steps": 2, "eval_interval": 1},
    }
    write_config(first, "config.yaml", config)
    result = snakemake(first, "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    placed = first / "results/model"
    assert sorted(p.name for p in placed.iterdir()) == ["reference-digits", "tiny-digits"]

    moved = tmp_path / "elsewhere/renamed project"
    shutil.copytree(first, moved, symlinks=True)
    shutil.rmtree(tmp_path / "first")
    assert scheduled(moved, "--cores", "2") == set()

    code = tmp_path / "another/install"
    code.mkdir(parents=True)
    for name in ("Snakefile", "workflow", "profiles", "src", "envs"):
        source = moved / name
        copy = shutil.copytree if source.is_dir() else shutil.copy2
        copy(source, code / name)
        shutil.rmtree(source) if source.is_dir() else source.unlink()
    assert scheduled(moved, "--cores", "2", "--snakefile", str(code / "Snakefile")) == set()


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        ({"datasets": {"digits": {"classes": ["zero", "one", "eleven"]}}}, "eleven"),
        ({"datasets": {"digits": {"val_fraction": 0.995}}}, "too few to hold out"),
    ],
)
def test_a_value_the_data_refuses_deletes_no_finished_output(workdir, overlay, message):
    """Issue 36: such a value stopped index_dataset after Snakemake had deleted the pool and
    the splits, and fixing the config then reran every job. Now check_dataset, which
    index_dataset waits for, stops; nothing finished is touched, and after the fix nothing
    reruns."""
    before = _contents(workdir)
    path = write_config(workdir, "refused.yaml", overlay)
    result = snakemake(workdir, "--cores", "2", "--configfile", "config/config.yaml", path)
    assert result.returncode != 0
    assert "Error in rule check_dataset" in result.stdout + result.stderr
    logs = list((workdir / "results/logs/digits/check_dataset").glob("*.log"))
    assert any(message in log.read_text() for log in logs)
    assert _contents(workdir) == before
    assert dry_run(workdir) == set()


def test_an_execution_knob_on_the_command_line_reruns_nothing(workdir):
    """Issue 36: `--config` puts its sections first in Snakemake's config, so the report's
    record of the config came out in another order and the report reran, both with the knob
    and in the next plain run."""
    knob = ["--config", "model={device: cpu}"]
    assert scheduled(workdir, "--cores", "2", *knob) == set()


def test_a_filtered_method_runs_end_to_end_and_a_new_threshold_reruns_only_its_runs(tmp_path):
    """Issue 41 on the digits and the tiny model: filters by the baseline's classifier and
    by a (tiny, local) CLIP. Every set of the dataset gets both scores, every run its head;
    the filtered runs read their scores and draw what the filter keeps; the report shows
    the keep rates and the accuracy beside the unfiltered twin. A new threshold reruns the
    filtered method's runs, aggregate, the filtering job and report, never a generate or
    scoring job; a new scorer adds its scoring jobs."""
    from dafusion.stages.mixing import select_variants

    workdir = copy_workflow(tmp_path / "dafusion")
    tiny_clip(workdir / "models")
    methods = {
        "baseline": REDUCED["methods"]["baseline"],
        "real-guidance": REDUCED["methods"]["real-guidance"],
        "da-fusion": DA_FUSION,
        "da-fusion-filtered": {**DA_FUSION, "filter": FILTER},
        "da-fusion-clip": {**DA_FUSION, "filter": {"by": "clip", "keep_top": 0.7}},
    }
    config = {
        **REDUCED,
        "methods": methods,
        "erasure": {"enabled": False},
        "scoring": {"clip_model": "models/clip"},
    }
    write_config(workdir, "config.yaml", config)
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stderr[-5000:]
    results = workdir / "results"
    for method in ("real-guidance", "da-fusion"):  # every set, both scorers
        for shots in SHOTS:
            folder = set_dir(results, method, 0, shots, config)
            for scorer in ("classifier", "clip"):
                scored = pd.read_parquet(folder / f"scores-{scorer}.parquet")
                assert sorted(scored["key"]) == sorted(
                    pd.read_parquet(folder / "index.parquet")["key"]
                )
    for method in methods:
        for shots in SHOTS:
            assert (results / f"digits/runs/{method}/seed0-shots{shots}-head.safetensors").is_file()
    daf = set_dir(results, "da-fusion", 0, 2, config)
    log = (results / "logs/digits/train/da-fusion-filtered/seed0-shots2.log").read_text()
    scores_file = daf.relative_to(workdir) / "scores-classifier.parquet"
    assert f"filter classifier: confidence >= 0.5 over {scores_file} keeps" in log
    rates = pd.read_csv(results / "tables/filtering-digits.csv")
    own = rates[rates["own"] & (rates["filter"] == "da-fusion-filtered") & (rates["shots"] == 2)]
    selection = select_variants(daf / "index.parquet", 2, FILTER)
    assert own["kept"].sum() == len(selection.rows)
    assert own["emptied"].sum() == len(selection.emptied)
    assert set(rates["method"]) == {"real-guidance", "da-fusion"}  # one column per set
    page = (results / "report.html").read_text()
    for title in (
        "Accuracy with and without the filter", "Share of images each filter keeps, per class",
        "Real images the filter leaves without a variant", "Kept and dropped: digits",
    ):  # fmt: skip
        assert title in page, title
    assert "against da-fusion unfiltered" in page  # the verdict
    assert scheduled(workdir, "--cores", "2") == set()

    def dry_run_with(overlay: dict) -> set[tuple[str, str]]:
        words = ["--cores", "2", "--configfile", "config/config.yaml"]
        jobs = scheduled(workdir, *words, write_config(workdir, "o.yaml", overlay))
        return label_sets(jobs, set_labels(config, overlay))

    runs = {
        ("train", f"results/digits/runs/da-fusion-filtered/seed0-shots{k}.parquet") for k in SHOTS
    }
    stricter = {"methods": {"da-fusion-filtered": {"filter": {"min_confidence": 0.3}}}}
    assert dry_run_with(stricter) == runs | FILTERING | END
    sets = ["real-guidance", "da-fusion+da-fusion-filtered+da-fusion-clip"]
    by_change = {
        "methods": {
            "da-fusion-clip": {"filter": {"by": "change", "min_change": 0.02, "keep_top": None}}
        }
    }
    assert dry_run_with(by_change) == (
        scores("change", sets) | jobs("train", ["da-fusion-clip"]) | FILTERING | END
    )
