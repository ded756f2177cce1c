"""The workflow's plan (dafusion.workflow.plan, paths, runtime, listing) without running Snakemake:
which jobs and paths a config makes, what each job reads, its resources, the report's layout,
and the dataset listing index_dataset reruns on."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import REPO

from dafusion.settings import (
    ClassifierSettings,
    ErasureSettings,
    GenerationSettings,
    InversionSettings,
)
from dafusion.stages.synthetic import write_index
from dafusion.workflow import contents, listing, paths, plan, resources, runtime, sets
from dafusion.workflow.config import SCHEMA, validate_config

RULES = REPO / "workflow/rules"

SMALL = {
    "results": "out",
    "datasets": {"digits": {"kind": "digits"}, "more": {"kind": "digits", "image_size": 16}},
    "seeds": [0, 1],
    "examples_per_class": [1, 4],
    "model": {"pretrained": "tiny", "resolution": 32},
    "methods": {
        "baseline": {"kind": "baseline"},
        "rg": {
            "kind": "sdedit",
            "prompt": "a photo of a {name}",
            "strengths": [0.5],
            "dataset_prompts": {"more": "a {token} drawing"},
        },
        "daf": {"kind": "sdedit", "prompt": "a photo of a {token}", "strengths": [0.5]},
        "daf-erased": {
            "kind": "sdedit",
            "prompt": "a photo of a {token}",
            "strengths": [0.5],
            "erased": True,
            "datasets": ["digits"],
        },
    },
    "erasure": {"enabled": True},
}


def make_plan(config: dict) -> plan.Plan:
    return plan.Plan.from_config(validate_config(config, SCHEMA))


def changed(config: dict, **sections) -> dict:
    config = copy.deepcopy(config)
    config.update(sections)
    return config


@pytest.fixture
def small() -> plan.Plan:
    return make_plan(SMALL)


# Target grids ------------------------------------------------------------------------


def test_grids_run_each_method_on_its_datasets_for_every_seed_and_shot_count(small):
    synthetic = small.all_synthetic()
    rg = small.sets.name("digits", "rg")
    assert synthetic[:2] == [
        f"out/digits/synthetic/{rg}/seed0-shots1/index.parquet",
        f"out/digits/synthetic/{rg}/seed0-shots4/index.parquet",
    ]
    # 2 cells per seed, 2 seeds: rg and daf on both datasets, daf-erased on digits only
    assert len(synthetic) == len(set(synthetic)) == 4 * (2 + 2 + 1)
    assert list(small.sets.by_name("more").values()) == [["rg"], ["daf"]]
    runs = small.evaluated_runs()
    assert len(runs) == 4 * (2 + 2 + 2 + 1)
    assert "out/more/runs/baseline/seed1-shots4.parquet" in runs


def test_tokens_are_plain_or_erased_and_follow_each_datasets_prompt(small):
    # rg's prompt has no token, except on `more` (dataset_prompts); daf-erased's are its own
    assert small.uses_tokens("more", "rg") and not small.uses_tokens("digits", "rg")
    assert small.tokens_path("digits", "daf", 0, 1) == "out/digits/tokens/seed0-shots1.safetensors"
    assert small.tokens_path("digits", "daf-erased", 0, 1) == (
        "out/digits/tokens/esd/seed0-shots1.safetensors"
    )
    assert small.token_methods("digits") == ["daf", "daf-erased"]
    assert small.token_methods("more") == ["rg", "daf"]
    tokens = small.all_tokens()
    # one plain inversion per (dataset, seed, shots), shared by rg and daf on `more`
    assert len(tokens) == 4 * 2 + 4
    assert sum("/tokens/esd/" in t for t in tokens) == 4
    assert small.generate_tokens("digits", small.sets.name("digits", "rg"), 0, 1) == []
    assert small.generate_tokens("more", small.sets.name("more", "rg"), 1, 4) == (
        "out/more/tokens/seed1-shots4.safetensors"
    )
    assert small.method_params("more", "rg")["prompt"] == "a {token} drawing"
    assert small.method_params("digits", "rg")["prompt"] == "a photo of a {name}"
    assert small.report.loss_curves("digits") == [
        "out/digits/tokens/esd/seed0-shots1-loss.parquet",
        "out/digits/tokens/esd/seed0-shots4-loss.parquet",
        "out/digits/tokens/seed0-shots1-loss.parquet",
        "out/digits/tokens/seed0-shots4-loss.parquet",
    ]


def test_the_erasure_stage_runs_where_an_erased_method_does(small):
    assert small.all_erasure() == ["out/digits/erasure/esd/check.parquet"]
    assert small.method_erasure("digits", "daf-erased") == "out/digits/erasure/esd/check.parquet"
    assert small.method_erasure("digits", "daf") == []
    methods = {k: v for k, v in SMALL["methods"].items() if k != "daf-erased"}
    unerased = make_plan(changed(SMALL, methods=methods))
    assert unerased.erased_datasets() == ["digits", "more"]  # the erasure target alone
    off = make_plan(changed(SMALL, methods=methods, erasure={"enabled": False}))
    assert off.all_erasure() == []
    joint = make_plan(changed(SMALL, erasure={"enabled": True, "scope": "joint"}))
    assert joint.tokens_path("digits", "daf-erased", 0, 1).startswith(
        "out/digits/tokens/esd-joint/"
    )


def test_the_all_target_refuses_configs_made_for_augmenting():
    with pytest.raises(sets.PlanError, match="'examples_per_class': 'all'"):
        make_plan(changed(SMALL, examples_per_class=["all"])).evaluated_runs()
    datasets = {"digits": {"kind": "digits", "val_fraction": 0}}
    with pytest.raises(sets.PlanError, match="'datasets.digits.val_fraction': 0"):
        make_plan(changed(SMALL, datasets=datasets, methods={"b": {"kind": "baseline"}}))\
            .evaluated_runs()  # fmt: skip


def test_the_paper_config_makes_the_papers_grid():
    """The counts tests/workflow/test_paper.py checks in Snakemake's DAG, from the plan alone."""
    config = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    config["model"] = {"pretrained": "tiny"}  # the hub's model is not needed for the grid
    config["datasets"]["caltech101"]["split_protocol"] = "original-code"
    paper = make_plan(config)
    cells = 4 * 5
    # Sets, not methods: Figure 11's DA-Fusion cells (PASCAL only, as the original) share
    # Figure 5's set, and its Real Guidance cells Figure 9's class-agnostic one
    assert len(paper.all_synthetic()) == (7 * 2 + 3 * 4) * cells
    figure11 = ("a50-m5", "a50-m10", "a50-m20", "a30-m10", "a70-m10")
    shared = paper.sets.by_name("pascal")[paper.sets.name("pascal", "da-fusion")]
    assert shared == ["da-fusion", *(f"da-fusion-{cell}" for cell in figure11)]
    spurge = paper.sets.by_name("leafy_spurge")
    assert spurge[paper.sets.name("leafy_spurge", "da-fusion")] == ["da-fusion"]
    assert paper.sets.size("leafy_spurge", paper.sets.name("leafy_spurge", "da-fusion")) == 50
    assert paper.sets.size("pascal", paper.sets.name("pascal", "da-fusion")) == 20
    assert len(paper.evaluated_runs()) == (7 * 3 + 3 * 5 + 2 * 5) * cells
    tokens = paper.all_tokens()
    assert sum("/tokens/esd/" in t for t in tokens) == 3 * cells
    assert len(tokens) == (7 + 3) * cells
    assert len(paper.all_erasure()) == 3
    assert paper.report.gallery_datasets() == list(config["datasets"])
    # Leafy Spurge: M = 50, the original's Real Guidance prompt, and flips in training
    assert paper.generation_for("leafy_spurge", "real-guidance").num_synthetic == 50
    assert paper.generation_for("pascal", "da-fusion-a50-m5").num_synthetic == 5
    assert paper.method_params("leafy_spurge", "real-guidance")["prompt"] == (
        "a woodland seen from a drone"
    )
    assert paper.classifier_for("leafy_spurge", "baseline").vertical_flip
    assert (
        paper.training_pool("caltech101", 2) == "results-paper/caltech101/splits/seed2-pool.parquet"
    )
    assert paper.eval_split("caltech101", 2) == "results-paper/caltech101/splits/seed2-val.parquet"
    assert paper.eval_split("pascal", 2) == "results-paper/pascal/splits/val.parquet"
    assert (
        paper.resources.index_mem_mb("coco") == 16000
        and paper.resources.index_mem_mb("pascal") == 4000
    )
    assert paper.report.aggregate_figures() == [
        "accuracy", "per-class", "validation", "scores", "figure-5", "figure-9", "figure-10",
        "figure-8", "novelty", "paired", "figure-11",
    ]  # fmt: skip


# Inputs and params of one job --------------------------------------------------------


def test_a_baseline_run_mixes_in_nothing_and_has_no_alpha(small):
    assert small.train_synthetic("digits", "baseline", 0, 1) == []
    assert small.train_synthetic("digits", "rg", 0, 1) == (
        f"out/digits/synthetic/{small.sets.name('digits', 'rg')}/seed0-shots1/index.parquet"
    )
    assert small.sets.run_params("digits", "baseline") == {}
    assert small.classifier_for("digits", "baseline").synthetic_probability == 0
    assert small.classifier_for("digits", "rg").synthetic_probability == 0.5


def test_overrides_reach_their_own_datasets_and_methods():
    datasets = {
        "digits": {"kind": "digits", "generation": {"num_synthetic": 7}},
        "more": {"kind": "digits"},
    }
    methods = copy.deepcopy(SMALL["methods"])
    methods["daf"]["generation"] = {"num_synthetic": 3}
    p = make_plan(changed(SMALL, datasets=datasets, methods=methods))
    assert p.generation_for("digits", "rg").num_synthetic == 7
    assert p.generation_for("more", "rg").num_synthetic == 10
    assert p.generation_for("digits", "daf").num_synthetic == 3  # the method's wins


def test_index_params_hold_what_the_kind_reads_without_allow_fewer():
    datasets = {
        "digits": {"kind": "digits", "allow_fewer": True},
        "photos": {"kind": "imagefolder", "root": "photos", "track_files": False},
    }
    p = make_plan(changed(SMALL, datasets=datasets, methods={"b": {"kind": "baseline"}}))
    assert "allow_fewer" not in p.index_params("digits")
    assert p.index_params("digits")["image_size"] == 32
    photos = p.index_params("photos")
    assert photos["root"] == "photos" and "image_size" not in photos
    assert "track_files" not in photos  # an execution knob


def test_model_inputs_and_resources_follow_the_model(small):
    # keyed by the resolution it is built at; the embedded default's 16 px keeps 0.2.0's folder
    assert small.model_input() == "out/model/tiny-32px"
    default = dataclasses.replace(small, model=small.model.replace(resolution=16))
    assert default.model_input() == "out/model/tiny-16px"
    assert (small.resources.model_threads(), small.resources.model_mem_mb(8000)) == (1, 2000)
    hub = dataclasses.replace(small, model=small.model.replace(pretrained="models/sd-v1-4"))
    assert hub.model_input() == []
    assert (hub.resources.model_threads(), hub.resources.model_mem_mb(8000)) == (2, 8000)
    assert "dtype" not in small.trained_model_params() and "dtype" in small.model.result_params()


def test_generation_parts_follow_the_config_until_the_set_exists(tmp_path):
    config = changed(SMALL, results=str(tmp_path), generation={"parts": 3})
    p = make_plan(config)
    rg = p.sets.name("digits", "rg")
    folder = f"{tmp_path}/digits/synthetic/{rg}/seed0-shots1"
    assert p.generate_parts("digits", rg, 0, 1) == [
        f"{folder}/part-{i}-of-3.json" for i in range(3)
    ]
    one = make_plan(changed(config, generation={"parts": 1}))
    assert one.generate_parts("digits", rg, 0, 1) == [f"{folder}/part-0-of-1.json"]
    # Once the split exists: no more parts than shards (2 rows x M 2 = 4 images, shards of 3)
    split = Path(p.split_path("digits", 0, 1))
    split.parent.mkdir(parents=True)
    pd.DataFrame({"key": ["a", "b"]}).to_parquet(split)
    few = make_plan(changed(config, generation={"parts": 3, "num_synthetic": 2, "shard_size": 3}))
    small_set = few.sets.name("digits", "rg")
    assert few.generate_parts("digits", small_set, 0, 1) == [
        f"{tmp_path}/digits/synthetic/{small_set}/seed0-shots1/part-{i}-of-2.json" for i in range(2)
    ]
    # The set exists: the parts that made it, as its index records, whatever parts is now
    index = Path(p.sets.method_index("digits", "rg", 0, 1))
    index.parent.mkdir(parents=True)
    write_index([], index.parent, index, shard_size=3, parts=4, identity={})
    assert p.generate_parts("digits", rg, 0, 1) == [
        f"{folder}/part-{i}-of-4.json" for i in range(4)
    ]


def test_gpus_and_the_gpu_limit(small, monkeypatch):
    monkeypatch.setattr(resources, "will_use_cuda", lambda device: device == "cuda")
    assert small.resources.gpus("cuda") == 1 and small.resources.gpus("cpu") == 0
    assert small.resources.gpu_limit_error(True, {"gpu": 1}) is None
    assert small.resources.gpu_limit_error(True, {"mem_mb": 1000}) is None  # auto here: no CUDA
    cuda = make_plan(changed(SMALL, classifier={"device": "cuda"}))
    message = cuda.resources.gpu_limit_error(True, {"mem_mb": 1000})
    assert message.startswith("GPU jobs (classifier.device (cuda)) would all start at once")
    assert "Add gpu=1 to --resources" in message
    assert cuda.resources.gpu_limit_error(False, {}) is None  # a cluster gives each job its own GPU
    assert cuda.resources.gpu_limit_error(True, {"gpu": 2}) is None


# The path registry ---------------------------------------------------------------------


def test_rules_take_result_paths_from_the_registry():
    """A result pattern is written once, in dafusion.workflow.paths (logs and benchmarks aside)."""
    sources = [REPO / "Snakefile", *sorted(RULES.glob("*.smk"))]
    for source in sources:
        for line in source.read_text().splitlines():
            if re.search(r'"(logs|benchmarks)/', line):
                continue
            assert not re.search(r'res\(f?"', line), (source.name, line)
            assert "synthetic/" not in line and "splits/" not in line, (source.name, line)


def test_token_losses_lie_beside_the_tokens():
    w = {"dataset": "d", "eraser": "esd", "seed": 0, "shots": 1}
    assert paths.tokens_losses(paths.TOKENS.format(**w)) == paths.TOKEN_LOSSES.format(**w)
    erased = paths.ERASED_TOKENS.format(**w)
    assert paths.tokens_losses(erased) == paths.ERASED_TOKEN_LOSSES.format(**w)


# Figures and the report ------------------------------------------------------------------


def test_aggregate_figures_follow_labels_baseline_and_novelty_bins(small):
    assert small.report.aggregate_figures() == [
        "accuracy",
        "per-class",
        "validation",
        "scores",
        "paired",
    ]
    methods = copy.deepcopy(SMALL["methods"])
    methods["rg"]["figures"] = [5, "11-reference"]
    methods["daf"]["figures"] = [11, 5, 9]
    bins = {"x": ["digits"], "y": ["more", "elsewhere"]}
    p = make_plan(changed(SMALL, methods=methods, aggregate={"novelty": bins}))
    assert p.report.figure_labels() == ["5", "11-reference", "11", "9"]
    assert p.report.aggregate_figures() == [
        "accuracy", "per-class", "validation", "scores", "figure-5", "figure-9", "novelty",
        "paired", "figure-11",
    ]  # fmt: skip
    # Novelty needs two bins holding datasets of the config: one bin's bars are the scores'.
    for one in ({"x": ["digits", "more"]}, {"x": ["digits"], "y": ["elsewhere"]}):
        single = make_plan(changed(SMALL, aggregate={"novelty": one}))
        assert "novelty" not in single.report.aggregate_figures(), one
    # 11 without its reference draws the grid against the baseline; without either, none
    methods["rg"]["figures"] = []
    assert "figure-11" in make_plan(changed(SMALL, methods=methods)).report.aggregate_figures()
    del methods["baseline"]
    alone = make_plan(changed(SMALL, methods=methods)).report.aggregate_figures()
    assert "figure-11" not in alone and "paired" not in alone


def test_the_layout_gives_each_runs_resolved_settings(small):
    layout = {(r["dataset"], r["method"]): r for r in small.report.method_layout()}
    assert len(layout) == 7
    assert layout["digits", "baseline"] == {
        "dataset": "digits", "method": "baseline", "figures": [], "strengths": [],
        "num_synthetic": 0, "synthetic_probability": 0.0,
    }  # fmt: skip
    assert layout["more", "rg"]["strengths"] == [0.5]
    assert layout["more", "rg"]["num_synthetic"] == 10


def test_the_report_shows_the_tables_figures_galleries_curves_and_checks(small):
    inputs = small.report.inputs()
    assert inputs["summary"] == "out/tables/summary.csv"
    figures = ("accuracy", "per-class", "validation", "scores", "paired")
    assert inputs["figures"] == [f"out/figures/{n}.png" for n in figures]
    assert inputs["per_class"] == "out/tables/per_class.csv"
    assert inputs["galleries"] == ["out/figures/gallery-digits.png", "out/figures/gallery-more.png"]
    assert inputs["curves"] == [
        "out/figures/inversion-loss-digits.png", "out/figures/inversion-loss-more.png",
    ]  # fmt: skip
    assert inputs["erasure"] == ["out/figures/erasure-digits.png"]
    assert small.report.gallery_inputs("more") == {
        "split": "out/more/splits/seed0-shots4.parquet",
        "indices": [
            f"out/more/synthetic/{small.sets.name('more', m)}/seed0-shots4/index.parquet"
            for m in ("rg", "daf")
        ],
    }
    baseline_only = make_plan(changed(SMALL, methods={"b": {"kind": "baseline"}}))
    assert baseline_only.report.inputs()["galleries"] == []
    assert baseline_only.report.inputs()["curves"] == []


def test_captions_are_rendered_with_the_measure(small):
    captions = contents.read_captions(REPO / "workflow/report")
    assert {"accuracy", "grid", "gallery", "inversion"} <= set(captions)
    assert contents.caption_key("figure-11", captions) == "grid"
    assert contents.caption_key("figure-5", captions) == "accuracy"
    assert contents.caption_key("paired", captions) == (
        "paired" if "paired" in captions else "accuracy"
    )
    rendered = small.report.captions(captions)
    assert set(small.report.aggregate_figures()) <= set(rendered)
    assert "{{" not in rendered["accuracy"]
    assert small.aggregate.measure() in rendered["accuracy"]
    assert contents.render_caption("a {{ snakemake.params.measure }}.", "b") == "a b."


# Wall times ---------------------------------------------------------------------------


def _manifest(path: Path, labels: list[int]) -> str:
    pd.DataFrame({"label": labels}).to_parquet(path)
    return str(path)


def test_runtimes_scale_with_the_work_and_the_attempt(tmp_path, small):
    split = _manifest(tmp_path / "split.parquet", [0, 1, 2, 2])
    assert runtime.rows(split) == 4 and runtime.class_count(split) == 3
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        runtime.rows(tmp_path / "missing.parquet")
    assert runtime.minutes(0, 1) == runtime.RUNTIME_START_MIN
    assert runtime.minutes(60, 2) == 2 * (runtime.RUNTIME_START_MIN + runtime.RUNTIME_MARGIN)
    assert runtime.minutes(1, 1) == runtime.RUNTIME_START_MIN + 1  # rounded up
    generation = GenerationSettings(num_synthetic=10, num_inference_steps=50)
    assert runtime.generate_seconds(generation, 100, 25) == pytest.approx(
        100 * 10 * 25 * runtime.COSTS["generate"].seconds
    )
    # the embedded default's tiny jobs: start-up plus seconds; rg's t0 is 0.5
    generation = small.generation_for("digits", "rg")
    steps = runtime.most_steps(generation.num_inference_steps, [0.5])
    seconds = runtime.generate_seconds(generation, 4, steps)
    assert small.resources.generate_minutes(
        "digits", small.sets.name("digits", "rg"), split, 1, parts=1
    ) == runtime.minutes(seconds, 1)
    share = small.resources.generate_minutes(
        "digits", small.sets.name("digits", "rg"), split, 1, parts=3
    )
    assert share == runtime.minutes(seconds / 3, 1)
    assert small.resources.gather_minutes(3) == 3 * runtime.RUNTIME_START_MIN
    inversion = InversionSettings(steps=1000, batch_size=4)
    assert runtime.invert_seconds(inversion, 20) == pytest.approx(
        1000 * 20 * 4 * runtime.COSTS["invert"].seconds
    )
    assert small.resources.invert_minutes(split, 1) == runtime.minutes(
        runtime.invert_seconds(small.inversion, 3), 1
    )


def test_a_generate_jobs_limit_counts_its_largest_strengths_steps(tmp_path):
    """SDEdit at t0 runs floor(S t0) of the S steps: a job's limit charges every image the
    largest t0's steps (a bound: each image draws its t0), not all S; the grid's estimate
    charges the mean (dafusion.workflow.estimate)."""
    split = _manifest(tmp_path / "split.parquet", list(range(10)) * 200)  # 2,000 images
    strengths = [0.1, 0.2]
    config = changed(
        SMALL,
        model={"pretrained": "CompVis/stable-diffusion-v1-4"},
        generation={"num_inference_steps": 50, "num_synthetic": 10},
        methods={"low": {"kind": "sdedit", "prompt": "a {name}", "strengths": strengths}},
    )
    grid = make_plan(config)
    assert (runtime.most_steps(50, strengths), runtime.mean_steps(50, strengths)) == (10, 7.5)
    work = 2000 * 10 * 10 * runtime.COSTS["generate"].seconds  # images x M x 10 steps
    minutes = grid.resources.generate_minutes(
        "digits", grid.sets.name("digits", "low"), split, 1, parts=1
    )
    assert minutes == runtime.minutes(work, 1)


def test_erasure_runtime_counts_esd_deltas_and_not_uce(tmp_path):
    esd = ErasureSettings(enabled=True, iterations=1000, ddim_steps=50)
    assert runtime.erase_seconds(esd, 20) == pytest.approx(20 * 1000 * 1.26)
    assert runtime.erase_seconds(esd.replace(scope="joint"), 20) == pytest.approx(1000 * 1.26)
    assert runtime.erase_seconds(esd.replace(ddim_steps=25), 1) == pytest.approx(500 * 1.26)
    assert runtime.erase_seconds(esd.replace(method="uce"), 20) == 0
    uce = make_plan(changed(SMALL, erasure={"enabled": True, "method": "uce"}))
    # UCE's estimate needs no pool (known before index_dataset ran)
    assert (
        uce.resources.erase_minutes(str(tmp_path / "missing.parquet"), 2)
        == 2 * runtime.RUNTIME_START_MIN
    )
    with pytest.raises(FileNotFoundError):
        make_plan(SMALL).resources.erase_minutes(str(tmp_path / "missing.parquet"), 1)


@pytest.mark.parametrize(("steps", "evaluations"), [(400, 2), (450, 3), (10000, 50)])
def test_a_run_evaluates_at_every_interval_and_its_last_step(steps, evaluations):
    """dafusion.stages.classifier evaluates at each eval_interval-th step and at the last one."""
    classifier = ClassifierSettings(steps=steps, eval_interval=200)
    assert runtime.evaluations(classifier) == evaluations


def test_train_runtime_counts_steps_and_evaluations(tmp_path, small):
    val = _manifest(tmp_path / "val.parquet", [0] * 30)
    test = _manifest(tmp_path / "test.parquet", [0] * 10)
    classifier = small.classifier_for("digits", "rg")
    step = runtime.COSTS[runtime.train_cost_key(classifier)].seconds
    evaluations = runtime.evaluations(classifier) * 40 * runtime.COSTS["eval"].seconds
    seconds = classifier.steps * step + evaluations
    assert runtime.train_seconds(classifier, 40) == pytest.approx(seconds)
    assert small.resources.train_minutes("digits", "rg", val, test, 1) == runtime.minutes(
        seconds, 1
    )


# The dataset listing ------------------------------------------------------------------


def _no_record():
    raise AssertionError("the recorded params are read only with track_files: false")


def test_a_datasets_listing_reaches_index_dataset_as_its_files_entry(tmp_path):
    root = tmp_path / "photos"
    (root / "cat").mkdir(parents=True)
    (root / "cat/a.png").write_bytes(b"a")
    key = listing.listing_key(str(root))
    entry = listing.files_entry(str(root), True, recorded=_no_record)
    assert entry == {key: listing.listing_digest(root)}
    (root / "cat/b.png").write_bytes(b"b")
    added = listing.files_entry(str(root), True, recorded=_no_record)
    assert added[key] != entry[key]
    assert listing.files_entry(None, True, recorded=_no_record) == {}


def test_untracked_files_keep_the_recorded_listing(tmp_path):
    root = str(tmp_path)
    key = listing.listing_key(root)
    recorded = [repr({"a": 1}), repr({"pipeline.index_dataset": "x", key: "abc"}), "<junk"]
    entry = listing.files_entry(root, False, recorded=lambda: recorded)
    assert entry == {key: "abc"}
    # nothing recorded (a new results folder): untracked, until track_files is switched on
    assert listing.files_entry(root, False, recorded=lambda: None) == {key: listing.UNTRACKED}
    # another root's listing is not this one's
    assert listing.recorded_listing(recorded, str(tmp_path / "other")) is None


# Synthetic sets shared by identity ---------------------------------------------------

SHARED = {
    "daf": {"kind": "sdedit", "prompt": "a photo of a {token}", "strengths": [0.5, 1.0]},
    # Figure 11's cells: alpha and M are not what determines the images
    "daf-a30-m20": {
        "kind": "sdedit", "prompt": "a photo of a {token}", "strengths": [0.5, 1.0],
        "generation": {"num_synthetic": 20},
        "classifier": {"synthetic_probability": 0.3}, "figures": [11],
    },
    "daf-m5": {
        "kind": "sdedit", "prompt": "a photo of a {token}", "strengths": [0.5, 1.0],
        "generation": {"num_synthetic": 5},
    },
    # Each of these differs in one thing that determines the images
    "daf-fixed": {"kind": "sdedit", "prompt": "a photo of a {token}", "strengths": [0.5]},
    "daf-guided": {
        "kind": "sdedit", "prompt": "a photo of a {token}", "strengths": [0.5, 1.0],
        "generation": {"guidance_scale": 4.0},
    },
    "daf-erased": {
        "kind": "sdedit", "prompt": "a photo of a {token}", "strengths": [0.5, 1.0],
        "erased": True,
    },
    "rg": {"kind": "sdedit", "prompt": "a photo of a {name}", "strengths": [0.5, 1.0]},
}  # fmt: skip


def test_methods_with_one_identity_share_one_set_of_their_largest_m():
    p = make_plan(changed(SMALL, methods=SHARED, erasure={"enabled": True}))
    named = p.sets.by_name("digits")
    assert sorted(named.values()) == sorted(
        [["daf", "daf-a30-m20", "daf-m5"], ["daf-fixed"], ["daf-guided"], ["daf-erased"], ["rg"]]
    )
    shared = p.sets.name("digits", "daf")
    assert p.sets.name("digits", "daf-a30-m20") == p.sets.name("digits", "daf-m5") == shared
    assert len(shared) == sets.SET_NAME_DIGITS and set(shared) <= set("0123456789abcdef")
    assert p.sets.size("digits", shared) == 20  # the default M is 10
    assert p.sets.params("digits", shared) == {
        "identity": p.sets.identity("digits", "daf"), "num_synthetic": 20,
    }  # fmt: skip
    identity = p.sets.identity("digits", "daf")
    assert "num_synthetic" not in identity["generation"]
    assert "batch_size" not in identity["generation"]  # an execution knob
    assert "inversion" in identity and "erasure" not in identity
    assert "erasure" in p.sets.identity("digits", "daf-erased")
    assert "inversion" not in p.sets.identity("digits", "rg")
    # One set: one target per cell, one generate job in the workflow
    assert len(p.all_synthetic()) == 2 * 2 * 2 * 5  # datasets x seeds x shots x sets
    # Each run reads its own M of the shared set
    assert p.sets.run_params("digits", "daf-m5") == {"num_synthetic": 5}
    assert p.sets.run_params("digits", "daf") == {"num_synthetic": 10}


def test_each_datasets_sets_are_worked_out_once(monkeypatch):
    """The DAG asks for a set's methods for every job of the set; on the paper's grid,
    recomputing every method's identity digest each time took a third of a dry run."""
    p = make_plan(changed(SMALL, methods=SHARED, erasure={"enabled": True}))
    digests = []
    name = sets.SyntheticSets.name
    monkeypatch.setattr(
        sets.SyntheticSets, "name", lambda self, d, m: digests.append((d, m)) or name(self, d, m)
    )
    first = p.sets.by_name("digits")
    shared = p.sets.name("digits", "daf")
    assert p.sets.size("digits", shared) == 20 and p.sets.methods("digits", shared)[0] == "daf"
    assert p.sets.by_name("digits") == first
    assert len(digests) == len(SHARED) + 1  # each method's once, and the one asked above


def test_a_set_follows_each_datasets_prompt_and_settings():
    methods = {
        "rg": {
            "kind": "sdedit", "prompt": "a photo of a {name}", "strengths": [0.5],
            "dataset_prompts": {"more": "a drawing"},
        },
        "rg-2": {"kind": "sdedit", "prompt": "a photo of a {name}", "strengths": [0.5]},
    }  # fmt: skip
    datasets = {
        "digits": {"kind": "digits"},
        "more": {"kind": "digits", "generation": {"num_inference_steps": 10}},
    }
    p = make_plan(changed(SMALL, methods=methods, datasets=datasets))
    assert list(p.sets.by_name("digits").values()) == [["rg", "rg-2"]]
    assert list(p.sets.by_name("more").values()) == [["rg"], ["rg-2"]]
    assert p.sets.name("digits", "rg") != p.sets.name("more", "rg-2")  # 10 steps there
    with pytest.raises(sets.PlanError, match="no method of the config makes the set digits/0"):
        p.sets.size("digits", "000000000000")


def test_model_vae_reaches_the_jobs_that_read_images():
    """`model.vae` (a result setting) is in the params of what encodes or decodes images
    (inversion, the sets' identity) and not in erasure's (ESD and UCE read no image); its
    default is in no params, so a config without it keeps every job's params."""
    default = make_plan(SMALL)
    assert "vae" not in default.model.result_params()
    fixed = make_plan(changed(SMALL, model={**SMALL["model"], "vae": "float32"}))
    assert fixed.trained_model_params() == {**default.trained_model_params(), "vae": "float32"}
    assert fixed.erasure_model_params() == default.erasure_model_params()
    assert "vae" not in default.erasure_model_params()
    assert fixed.sets.name("digits", "rg") != default.sets.name("digits", "rg")


def test_a_lora_learner_has_its_own_tokens_adapter_and_sets():
    """learner: lora: the tokens and adapter of the lora job, a set of its own (the learner
    and the lora settings are in its identity), and no effect where the prompt has no
    {token}; a textual_inversion method's params are as they were before learners."""
    daf = {"kind": "sdedit", "prompt": "a photo of a {token}", "strengths": [0.5]}
    rg = SMALL["methods"]["rg"]
    methods = {
        "daf": daf, "daf-lora": {**daf, "learner": "lora"}, "rg": rg,
        "rg-lora": {**rg, "learner": "lora"},
    }  # fmt: skip
    p = make_plan(changed(SMALL, methods=methods))
    w = {"dataset": "digits", "seed": 0, "shots": 1}
    assert p.tokens_path("digits", "daf", 0, 1) == p.path(paths.TOKENS, **w)
    assert p.tokens_path("digits", "daf-lora", 0, 1) == p.path(paths.LORA_TOKENS, **w)
    assert [p.token_job("digits", m) for m in ("daf", "daf-lora")] == ["invert", "lora"]
    names = {m: p.sets.name("digits", m) for m in methods}
    assert names["daf"] != names["daf-lora"]  # differ only in the learner
    assert names["rg"] == names["rg-lora"]  # no {token} on digits: the learner has no effect
    assert p.sets.name("more", "rg") != p.sets.name("more", "rg-lora")  # "a {token} drawing"
    set_lora = p.sets.name("digits", "daf-lora")
    assert p.generate_lora("digits", set_lora, 0, 1) == p.path(paths.LORA, **w)
    assert p.generate_tokens("digits", set_lora, 0, 1) == p.path(paths.LORA_TOKENS, **w)
    assert p.generate_lora("digits", names["daf"], 0, 1) == []
    identity = p.sets.identity("digits", "daf-lora")
    assert identity["method"]["learner"] == "lora" and identity["lora"]["rank"] == 10
    assert "steps" not in identity["inversion"]  # the lora job runs lora.steps
    assert "learner" not in p.sets.identity("digits", "daf")["method"]
    assert p.lora_params() == {
        "inversion": identity["inversion"], "lora": p.lora.result_params(),
    }  # fmt: skip
    assert p.path(paths.LORA_LOSSES, **w) in p.report.loss_curves("digits")
    assert p.path(paths.LORA_TOKENS, **w) in p.all_tokens()


# Scores and filters (issue 41) -------------------------------------------------------------

FILTERED = {
    **SMALL["methods"],
    "daf-conf": {**SMALL["methods"]["daf"], "filter": {"by": "classifier", "min_confidence": 0.5}},
    "daf-clip": {
        **SMALL["methods"]["daf"], "filter": {"by": "clip", "keep_top": 0.7},
        "datasets": ["digits"],
    },
}  # fmt: skip


@pytest.fixture
def filtered() -> plan.Plan:
    return make_plan(changed(SMALL, methods=FILTERED))


def test_a_filtered_method_reads_its_twins_set_and_its_scores(filtered):
    """The filter is no part of a set's identity; it travels in the train job's params of
    the filtered method alone, whose scores are its input alone."""
    assert filtered.sets.by_name("digits") == {
        filtered.sets.name("digits", "rg"): ["rg"],
        filtered.sets.name("digits", "daf"): ["daf", "daf-conf", "daf-clip"],
        filtered.sets.name("digits", "daf-erased"): ["daf-erased"],
    }
    unfiltered = make_plan(SMALL)
    assert filtered.sets.name("digits", "daf") == unfiltered.sets.name("digits", "daf")
    assert filtered.sets.run_params("digits", "daf") == {"num_synthetic": 10}  # as before
    assert filtered.sets.run_params("digits", "daf-conf") == {
        "num_synthetic": 10, "filter": {"by": "classifier", "min_confidence": 0.5},
    }  # fmt: skip
    assert filtered.sets.run_params("digits", "baseline") == {}
    daf = filtered.sets.name("digits", "daf")
    assert filtered.train_scores("digits", "daf-conf", 0, 1) == (
        f"out/digits/synthetic/{daf}/seed0-shots1/scores-classifier.parquet"
    )
    assert filtered.train_scores("digits", "daf-clip", 0, 1).endswith("/scores-clip.parquet")
    assert filtered.train_scores("digits", "daf", 0, 1) == []
    assert filtered.train_scores("digits", "baseline", 0, 1) == []
    assert filtered.scoring_head("digits", 1, 4) == (
        "out/digits/runs/baseline/seed1-shots4-head.safetensors"
    )


def test_scorers_score_every_set_of_the_datasets_their_filters_run_on(filtered):
    assert filtered.scorers("digits") == ["classifier", "clip"]
    assert filtered.scorers("more") == ["classifier"]  # daf-clip runs on digits only
    assert make_plan(SMALL).scorers("digits") == []
    scores = filtered.all_scores()
    # digits: 3 sets x 2 scorers, more: 2 sets x 1; each per seed and shots
    assert len(scores) == (3 * 2 + 2 * 1) * 2 * 2 and len(set(scores)) == len(scores)
    assert make_plan(SMALL).all_scores() == []


def test_a_scoring_job_reads_no_evaluation_image_and_no_reference_classifier(filtered):
    """No leakage (issue 41): what the score rules' input functions give names the set, the
    few-shot split (change) and the classifier_method's head (classifier), never a
    validation or test manifest, nor the reference digit classifier."""
    rules = (RULES / "score.smk").read_text()
    assert "eval_split" not in rules and "paths.VAL" not in rules and "paths.TEST" not in rules
    assert "reference" not in rules and "SHIPPED" not in rules
    for dataset in filtered.datasets:
        for name in filtered.sets.by_name(dataset):
            for seed in filtered.seeds:
                for shots in filtered.shots:
                    inputs = [
                        filtered.sets.index(dataset, name, seed, shots),
                        filtered.split_path(dataset, seed, shots),
                        filtered.scoring_head(dataset, seed, shots),
                    ]
                    for path in inputs:
                        assert not re.search(r"(val|test|pool)\.parquet$|reference", path), path
                    assert inputs[1] == f"out/{dataset}/splits/seed{seed}-shots{shots}.parquet"


def test_a_filtered_methods_twin_reads_the_same_images_unfiltered(filtered):
    report = filtered.report
    assert report.filter_twin("digits", "daf-conf") == "daf"
    assert report.filter_report() == {
        "digits": {
            "daf-conf": {"filter": "classifier: confidence >= 0.5", "twin": "daf"},
            "daf-clip": {"filter": "clip: top 70% per class", "twin": "daf"},
        },
        "more": {"daf-conf": {"filter": "classifier: confidence >= 0.5", "twin": "daf"}},
    }
    # another alpha or M is no twin
    other = dict(FILTERED, daf={**FILTERED["daf"], "classifier": {"synthetic_probability": 0.3}})
    assert make_plan(changed(SMALL, methods=other)).report.filter_twin("digits", "daf-conf") is None


def test_the_report_shows_each_datasets_filters(filtered):
    report = filtered.report
    assert report.filtering_datasets() == ["digits", "more"]
    inputs = report.inputs()
    assert inputs["filtering"] == [
        "out/tables/filtering-digits.csv",
        "out/tables/filtering-more.csv",
    ]
    assert inputs["filtering_figures"][0] == "out/figures/filtering-digits.png"
    assert make_plan(SMALL).report.inputs()["filtering"] == []
    # the filters are applied to one method per set and M, an unfiltered one first
    assert report.filtering_methods("digits") == {"rg": 10, "daf": 10, "daf-erased": 10}
    # the gallery and the recognition rates show a filtered method's images by its twin
    assert report.gallery_methods("digits") == ["rg", "daf", "daf-erased"]
    other = dict(FILTERED, daf={**FILTERED["daf"], "classifier": {"synthetic_probability": 0.3}})
    assert "daf-conf" in make_plan(changed(SMALL, methods=other)).report.gallery_methods("more")
    params = report.filtering_params("digits")
    assert params["own"] == {"daf-conf": "daf", "daf-clip": "daf"}
    assert params["scorers"] == ["classifier", "clip"] and params["shown"] == [0, 4]
    files = report.filtering_inputs("digits")
    assert len(files["indices"]) == 3 * 4 and len(files["scores"]) == 2 * 3 * 4
    assert files["scores"][0].endswith("seed0-shots1/scores-classifier.parquet")
    assert files["scores"][-1].endswith("seed1-shots4/scores-clip.parquet")


def test_scoring_resources(filtered, tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "will_use_cuda", lambda device: device == "cuda")
    cuda = make_plan(changed(SMALL, methods=FILTERED, scoring={"device": "cuda"}))
    message = cuda.resources.gpu_limit_error(True, {})
    assert message.startswith("GPU jobs (scoring.device (cuda)) would all start at once")
    assert make_plan(changed(SMALL, scoring={"device": "cuda"})).resources.gpu_jobs() == []
    index = tmp_path / "index.parquet"
    pd.DataFrame({"key": [str(i) for i in range(30_000)]}).to_parquet(index)
    assert filtered.resources.score_minutes("classifier", str(index), 1) == runtime.minutes(60, 1)
    assert filtered.resources.score_minutes("change", str(index), 2) == runtime.minutes(0, 2)
