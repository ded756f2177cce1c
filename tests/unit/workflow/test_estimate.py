"""The GPU-hours estimate of a grid (docs/cluster.md's table), checked by hand on a small one."""

from __future__ import annotations

import pytest
import yaml

from dafusion.settings import ClassifierSettings
from dafusion.workflow import runtime
from dafusion.workflow.estimate import main, plan_of, run_summary, stages
from dafusion.workflow.runtime import mean_steps

GRID = {
    "datasets": {"digits": {"kind": "digits"}, "cars": {"kind": "stanford_cars", "classes": 5}},
    "seeds": [0, 1],
    "examples_per_class": [1, 4],
    "model": {"pretrained": "CompVis/stable-diffusion-v1-4"},
    "methods": {
        "baseline": {"kind": "baseline"},
        "daf": {"kind": "sdedit", "prompt": "a photo of a {token}", "strengths": [0.5, 1.0]},
        # the same images at another M and alpha: one set with daf, of M 20
        "daf-m20": {
            "kind": "sdedit", "prompt": "a photo of a {token}", "strengths": [0.5, 1.0],
            "generation": {"num_synthetic": 20}, "classifier": {"synthetic_probability": 0.3},
        },
        "rg": {"kind": "sdedit", "prompt": "a photo of a {name}", "strengths": [0.5],
               "datasets": ["cars"]},
    },
    "generation": {"num_inference_steps": 50},
    "inversion": {"steps": 100, "batch_size": 2},
    "classifier": {"steps": 1000},
}  # fmt: skip


@pytest.fixture
def grid(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(GRID))
    return path


def test_an_image_takes_its_strengths_share_of_the_steps():
    assert mean_steps(50, [0.25, 0.5, 0.75, 1.0]) == (12 + 25 + 37 + 50) / 4
    assert mean_steps(4, [0.5]) == 2


def test_each_stage_counts_shared_sets_once(grid):
    generate, invert, erase, train = stages(plan_of([grid]))
    # images per class over the cells: 2 seeds x (1 + 4) shots = 10
    daf = (10 + 5) * 10 * 20 * mean_steps(50, [0.5, 1.0])  # digits + cars, M 20
    rg = 5 * 10 * 10 * 25  # cars only, M 10, t0 0.5
    assert (generate.jobs, generate.hours) == (
        (2 + 1) * 4,
        pytest.approx((daf + rg) * runtime.COSTS["generate"].seconds / 3600),
    )
    assert generate.work.startswith(f"{(10 + 5) * 10 * 20 + 5 * 10 * 10:,} synthetic images")
    assert (invert.jobs, invert.work) == (2 * 4, "100 steps × 2 samples × 60 classes")
    assert invert.hours == pytest.approx(60 * 100 * 2 * runtime.COSTS["invert"].seconds / 3600)
    assert (erase.jobs, erase.hours) == (0, 0)
    assert train.jobs == (3 + 4) * 4
    assert train.hours == pytest.approx(28 * 1000 * runtime.COSTS["train"].seconds / 3600)
    # each run evaluates at steps 200, 400, ..., 1000: 5 evaluations, their hours named apart
    per_thousand = 28 * 5 * 1000 * runtime.COSTS["eval"].seconds / 3600
    assert train.work == (
        f"28,000 classifier steps; 140 evaluations, not in the hours: {per_thousand:.1f} "
        "GPU-hours more per 1,000 images in each run's evaluation splits"
    )


@pytest.mark.parametrize(("scope", "deltas"), [("class", 10 + 5), ("joint", 2)])
def test_the_erase_stage_counts_what_the_erase_jobs_do(tmp_path, scope, deltas):
    """The estimate sums the work formula of the jobs' time limits
    (dafusion.workflow.runtime): ESD's iterations take time in proportion to the DDIM steps
    they sample down, and `scope: joint` fine-tunes one delta per dataset, not one per class."""
    erased = {**GRID["methods"]["daf"], "erased": True}
    erasure = {"enabled": True, "method": "esd", "iterations": 100, "ddim_steps": 25}
    config = {**GRID, "methods": {"erased": erased}, "erasure": {**erasure, "scope": scope}}
    path = tmp_path / "erased.yaml"
    path.write_text(yaml.safe_dump(config))
    erase = stages(plan_of([path]))[2]
    seconds = deltas * 100 * runtime.COSTS["erase"].seconds * 25 / 50
    assert (erase.jobs, erase.hours) == (2, pytest.approx(seconds / 3600))
    assert erase.work == f"{deltas} ESD fine-tunings × 100 iterations at 25 DDIM steps"


def test_a_dataset_of_unknown_size_is_named(tmp_path, capsys):
    methods = {"daf": GRID["methods"]["daf"]}
    config = {**GRID, "datasets": {"mine": {"kind": "imagefolder", "root": "nowhere"}}}
    config["methods"] = methods
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"'datasets.mine.classes': .* set classes: N"):
        stages(plan_of([path]))
    # A root need not exist to plan the grid; the command prints the table
    overlay = tmp_path / "classes.yaml"
    overlay.write_text(yaml.safe_dump({"datasets": {"mine": {"classes": 3}}}))
    assert main([str(path), str(overlay)]) == 0
    assert capsys.readouterr().out.startswith("| stage | GPU jobs | work | per-unit cost |")


def test_a_costs_file_sets_the_per_unit_costs(grid, tmp_path, capsys):
    """`benchmarks/gpu.sh` writes what it measured; the estimate reads it over the repository's
    costs, and the train stage takes the cost of its classifier.precision."""
    import json

    costs_file = tmp_path / "costs.json"
    costs_file.write_text(
        json.dumps(
            {
                "generate": {"seconds": 0.01, "measured": "GPU X, generation.py", "tflops": 300},
                "train_bf16": {"seconds": 0.004, "measured": "GPU X, classifier.py"},
            }
        )
    )
    costs = runtime.read_costs(costs_file, runtime.COSTS)
    assert costs["generate"] == runtime.Cost(0.01, "GPU X, generation.py")
    assert costs["invert"] == runtime.COSTS["invert"]  # not in the file: the repository's
    generate, _, _, train = stages(plan_of([grid]), costs)
    daf = (10 + 5) * 10 * 20 * mean_steps(50, [0.5, 1.0])
    assert generate.hours == pytest.approx((daf + 5 * 10 * 10 * 25) * 0.01 / 3600)
    assert train.costs == ("train", "eval")
    bf16 = {**GRID, "classifier": {"steps": 1000, "precision": "bf16"}}
    (tmp_path / "bf16.yaml").write_text(yaml.safe_dump(bf16))
    train = stages(plan_of([tmp_path / "bf16.yaml"]), costs)[3]
    assert train.costs == ("train_bf16", "eval")
    assert train.hours == pytest.approx(28 * 1000 * 0.004 / 3600)
    assert main([str(grid), "--costs", str(costs_file)]) == 0
    out = capsys.readouterr().out
    assert "| 0.01 s per image and denoising step | GPU X, generation.py |" in out
    assert out.splitlines()[0].endswith("| per-unit cost | measured | GPU-hours (estimated) |")


def test_the_repositorys_costs_are_the_runtime_costs():
    """src/dafusion/workflow/costs.json is what every rule's runtime and the docs' table use."""
    costs = runtime.read_costs(runtime.COSTS_FILE)
    assert costs == runtime.COSTS
    assert costs["eval"].measured is None  # a guess, shown as 'not measured'
    # A precision whose step was not measured takes float32's (the slowest).
    assert runtime.train_cost_key(ClassifierSettings(precision="bf16"), costs) == "train"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"render": {"seconds": 1}}, "unknown cost 'render' .*known: generate, invert"),
        ({"train": {"seconds": 0}}, r"cost 'train' needs seconds > 0, not 0"),
        ({"train": {"seconds": 1}}, "no cost for generate, invert, erase, eval"),
    ],
)
def test_a_bad_costs_file_is_named(tmp_path, entries, message):
    import json

    path = tmp_path / "costs.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=message):
        runtime.read_costs(path)


def test_the_run_says_how_many_images_and_how_much_disk_before_it_starts(tmp_path):
    """Issue 36: `num_synthetic: 100000` was accepted without a word. The workflow logs this
    line when it builds the DAG: digits (10 classes) x 5 images per class (1 + 4) x 2 seeds
    x M, at 512 px (raw RGB: 786,432 bytes each)."""
    config = {**GRID, "datasets": {"digits": {"kind": "digits"}}, "generation": {
        "num_inference_steps": 50, "num_synthetic": 100000}}  # fmt: skip
    config["methods"] = {"daf": GRID["methods"]["daf"]}
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = run_summary(plan_of([path]))
    images = 10 * 5 * 2 * 100000
    assert summary.startswith(f"this config's grid makes {images:,} synthetic images at 512 px")
    assert f"at most {images * 786432 / 1e9:,.1f} GB of shards" in summary
    config["examples_per_class"] = ["all"]
    path.write_text(yaml.safe_dump(config))
    assert run_summary(plan_of([path])).startswith(
        "this config's grid makes up to 100,000 synthetic images per real image"
    )
