"""The GPU-hours estimate of a grid (docs/cluster.md's table), checked by hand on a small one."""

from __future__ import annotations

import pytest
import yaml

from dafusion import runtime
from dafusion.estimate import main, mean_steps, plan_of, stages

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
        pytest.approx((daf + rg) * runtime.GENERATE_S_PER_IMAGE_STEP / 3600),
    )
    assert generate.work.startswith(f"{(10 + 5) * 10 * 20 + 5 * 10 * 10:,} synthetic images")
    assert (invert.jobs, invert.work) == (2 * 4, "100 steps × 2 samples × 60 classes")
    assert invert.hours == pytest.approx(60 * 100 * 2 * runtime.INVERT_S_PER_SAMPLE_STEP / 3600)
    assert (erase.jobs, erase.hours) == (0, 0)
    assert train.jobs == (3 + 4) * 4
    assert train.hours == pytest.approx(28 * 1000 * runtime.TRAIN_S_PER_STEP / 3600)


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
    assert capsys.readouterr().out.startswith("| stage | GPU jobs | work | GPU-hours")
