"""The estimate of a grid (docs/cluster.md's tables): GPU-hours, disk and wall-clock time,
checked by hand on a small one."""

from __future__ import annotations

import pytest
import yaml

from dafusion.settings import ClassifierSettings
from dafusion.workflow import estimate, footprint, runtime
from dafusion.workflow.estimate import main, plan_of, run_summary, stages
from dafusion.workflow.footprint import disk
from dafusion.workflow.runtime import mean_steps
from dafusion.workflow.schedule import Job, critical_path, gpu_jobs, wall_clock

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


# Disk -----------------------------------------------------------------------------------

PNG = footprint.SHARD_IMAGE_BYTES["png"] + footprint.SHARD_SAMPLE_BYTES


def erased_grid(tmp_path, **erasure):
    """GRID with DA-Fusion's images also made with each class erased (ESD by default)."""
    methods = {**GRID["methods"], "erased": {**GRID["methods"]["daf"], "erased": True}}
    settings = {"enabled": True, "method": "esd", "iterations": 200, **erasure}
    path = tmp_path / "erased.yaml"
    path.write_text(yaml.safe_dump({**GRID, "methods": methods, "erasure": settings}))
    return path


def test_the_disk_is_each_outputs_bytes(grid):
    """By hand: the sets of daf (M 20, digits and cars) and rg (M 10, cars), 10 source
    images per class over the cells (2 seeds x (1 + 4) shots), PNG at 512 px; 4 tokens files
    of digits' 10 classes and 4 of cars' 5, each twice, with a 100-step loss table; 28 runs
    (3 methods on digits, 4 on cars, 4 cells each) of 5 evaluations of val and test."""
    synthetic, tokens, deltas, runs = disk(plan_of([grid]))
    images = (10 + 5) * 10 * 20 + 5 * 10 * 10
    assert synthetic.files == f"{images:,} images in 12 shards"  # one per set and cell
    assert synthetic.bytes == pytest.approx(images * PNG)
    assert "PNG, " in synthetic.holds and "resize_to_source" in synthetic.holds
    token_classes = (10 + 5) * 4
    assert tokens.bytes == pytest.approx(2 * token_classes * 768 * 4 + 100 * token_classes * 6.5)
    assert (deltas.files, deltas.bytes) == ("0 deltas", 0)
    rows = 12 * 5 * 2 * (10 + 3) + 16 * 5 * 2 * (5 + 3)
    assert (runs.files, runs.bytes) == ("28 metrics tables", pytest.approx(28 * 4400 + rows * 10))
    total = images * PNG + 2 * 60 * 768 * 4 + 6000 * 6.5 + 28 * 4400 + rows * 10
    assert sum(o.bytes for o in (synthetic, tokens, deltas, runs)) == pytest.approx(total)
    table = footprint.disk_table(plan_of([grid]))
    assert table.splitlines()[-1] == f"| total | | {total / 1e9:,.1f} | |"  # 1.3 GB


@pytest.mark.parametrize(
    ("erasure", "parameters", "size"),
    [
        ({}, 859_520_964, 4),  # train_method full: every UNet parameter, in float32
        ({"train_method": "xattn", "delta_dtype": "float16"}, 43_962_560, 2),
        ({"method": "uce"}, 19_169_280, 4),  # every cross-attention's key and value
        ({"method": "uce", "edit_keys": False}, 9_584_640, 4),
    ],
)
def test_a_delta_holds_the_parameters_its_erasure_changes(tmp_path, erasure, parameters, size):
    deltas = disk(plan_of([erased_grid(tmp_path, **erasure)]))[2]
    assert deltas.files == "15 deltas"  # one per class of digits and cars
    assert deltas.bytes == 15 * parameters * size
    assert deltas.holds.startswith(f"{parameters:,} UNet parameters")
    assert ("ESD checkpoint" in deltas.holds) == ("method" not in erasure)


def test_a_model_the_estimate_does_not_know_is_left_out_of_the_total(tmp_path, grid):
    overlay = tmp_path / "model.yaml"
    overlay.write_text(yaml.safe_dump({"model": {"pretrained": "some/other-model"}}))
    table = footprint.disk_table(plan_of([grid, overlay]))
    assert "| tokens | 8 tokens files | not known |" in table
    assert table.splitlines()[-1].startswith("| total (without the tokens) |")


def test_the_tiny_architecture_is_the_shipped_models():
    """The counts of the tiny models (ARCHITECTURES), against tiny-digits' files: every UNet
    parameter and those of its cross-attention, and the text encoder's width."""
    import json
    import math
    import struct

    from dafusion.shipped import MINIATURE

    with open(MINIATURE / "unet/diffusion_pytorch_model.safetensors", "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    shapes = {k: math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    tiny = footprint.TINY.delta_parameters
    assert tiny["full"] == sum(shapes.values())
    assert tiny["xattn"] == sum(n for k, n in shapes.items() if ".attn2." in k)
    config = json.loads((MINIATURE / "text_encoder/config.json").read_text())
    assert footprint.TINY.text_width == config["hidden_size"]


# Wall-clock time ---------------------------------------------------------------------------


def test_a_list_schedule_by_hand():
    """a (3 s) before c (1 s); b and d (2 s each) alone. On 2 GPUs: a and b at 0 (b before
    d, listed first), d at 2, c at 3: 4 s, the critical path a -> c."""
    jobs = [Job("a", 3), Job("b", 2), Job("c", 1, (0,)), Job("d", 2)]
    assert [job.name for job in critical_path(jobs)] == ["a", "c"]
    assert [wall_clock(jobs, n) for n in (1, 2, 3, 4)] == [8, 4, 4, 4]
    with pytest.raises(ValueError, match="waits for a later job"):
        wall_clock([Job("a", 1, (1,)), Job("b", 1)], 2)
    with pytest.raises(ValueError, match="at least 1"):
        wall_clock(jobs, 0)


def test_the_gpu_jobs_are_the_stages_work_in_their_order(tmp_path):
    """Erase, then the tokens learned against the erased UNet, then the erased set's
    images, then the runs that read them; the seconds add up to the stages' hours."""
    plan = plan_of([erased_grid(tmp_path)])
    jobs = gpu_jobs(plan)
    assert len(jobs) == sum(s.jobs for s in stages(plan))
    assert sum(j.seconds for j in jobs) / 3600 == pytest.approx(sum(s.hours for s in stages(plan)))
    index = {job.name: i for i, job in enumerate(jobs)}

    def after(name):
        return {jobs[i].name for i in jobs[index[name]].after}

    assert after("invert_erased cars seed1-shots4") == {"erase cars"}
    assert after("invert cars seed1-shots4") == set()
    assert after("generate cars/erased seed1-shots4") == {
        "erase cars", "invert_erased cars seed1-shots4",
    }  # fmt: skip
    assert after("generate cars/rg seed1-shots4") == set()  # the class name, no tokens
    assert after("train cars/daf-m20 seed1-shots4") == {"generate cars/daf seed1-shots4"}
    assert after("train cars/baseline seed1-shots4") == set()
    path = [job.name for job in critical_path(jobs)]
    assert path[0].startswith("erase ") and path[-1].startswith("train ")


def test_the_wall_clock_is_between_its_bounds_and_falls_with_more_gpus(tmp_path):
    """1 GPU: every job's seconds; as many GPUs as jobs: the critical path; in between at
    least both bounds and at most Graham's (the work over N plus the critical path)."""
    jobs = gpu_jobs(plan_of([erased_grid(tmp_path)]))
    total = sum(job.seconds for job in jobs)
    longest = sum(job.seconds for job in critical_path(jobs))
    times = [wall_clock(jobs, n) for n in range(1, len(jobs) + 1)]
    assert times[0] == pytest.approx(total)
    assert times[-1] == pytest.approx(longest)
    assert all(later <= earlier + 1e-9 for earlier, later in zip(times, times[1:], strict=False))
    for n, seconds in enumerate(times, start=1):
        assert max(total / n, longest) - 1e-6 <= seconds <= total / n + longest + 1e-6


def test_the_command_prints_the_three_tables(grid, capsys):
    assert main([str(grid), "--gpus", "1", "2"]) == 0
    out = capsys.readouterr().out
    plan = plan_of([grid])
    assert out == estimate.table(plan, gpus=[1, 2])
    assert out.startswith(estimate.hours_table(plan))
    assert "\n| output | files | GB | what they hold |\n" in out
    hours = sum(s.hours for s in stages(plan))
    assert f"\n| 1 | {hours:,.1f} | {hours:,.1f} |" in out
    assert "\n| 2 | " in out and "\n| 8 | " not in out
    with pytest.raises(SystemExit):
        main([str(grid), "--gpus", "0"])


def test_the_scoring_jobs_of_filters_are_a_stage_after_the_sets_and_the_baseline(tmp_path):
    """Issue 41: a filter by classifier or clip scores every set of its dataset on the GPU
    (change on the CPU: no GPU job), each image at an evaluation image's cost, after the
    set and (classifier) the baseline run whose head it reads; the filtered run after."""
    daf = GRID["methods"]["daf"]
    config = {
        **GRID,
        "methods": {
            **GRID["methods"],
            "daf-conf": {**daf, "filter": {"by": "classifier", "min_confidence": 0.5}},
            "daf-change": {**daf, "filter": {"by": "change", "min_change": 0.02}},
        },
    }
    path = tmp_path / "filtered.yaml"
    path.write_text(yaml.safe_dump(config))
    plan = plan_of([path])
    *_, train, score = stages(plan)
    assert (train.name, score.name) == ("train", "score")
    cells, sets = 2 * 2, {"digits": 1, "cars": 2}  # daf+daf-m20 (M = 20) on both, rg on cars
    assert score.jobs == cells * sum(sets.values())  # classifier only: change is a CPU job
    # sources (classes x (1 + 4) shots x 2 seeds) x M: daf's set at 20, rg's at 10
    images = 10 * 5 * 2 * 20 + 5 * 5 * 2 * (20 + 10)
    assert score.hours == pytest.approx(images * runtime.COSTS["eval"].seconds / 3600)
    without = tmp_path / "grid.yaml"
    without.write_text(yaml.safe_dump(GRID))
    assert [s.name for s in stages(plan_of([without]))][-1] == "train"  # no filter: no stage
    jobs = gpu_jobs(plan)
    assert len(jobs) == sum(s.jobs for s in stages(plan))
    assert sum(j.seconds for j in jobs) / 3600 == pytest.approx(sum(s.hours for s in stages(plan)))
    index = {job.name: i for i, job in enumerate(jobs)}

    def after(name):
        return {jobs[i].name for i in jobs[index[name]].after}

    assert after("score_classifier cars/daf seed1-shots4") == {
        "generate cars/daf seed1-shots4", "train cars/baseline seed1-shots4",
    }  # fmt: skip
    assert after("train cars/daf-conf seed1-shots4") == {
        "generate cars/daf seed1-shots4", "score_classifier cars/daf seed1-shots4",
    }  # fmt: skip
    assert after("train cars/daf-change seed1-shots4") == {"generate cars/daf seed1-shots4"}
