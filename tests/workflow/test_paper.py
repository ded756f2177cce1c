"""config/paper.yaml: the paper's experiments as one DAG, its size counted by hand."""

from __future__ import annotations

import re
from collections import Counter

import pandas as pd
import pytest
import yaml
from helpers import (
    REPO,
    copy_workflow,
    dry_run_jobs,
    snakemake,
    spurge_images,
    workflow_plan,
    write_config,
)

SEEDS, SHOTS = 4, 5
SEVEN = 7  # Figure 5's datasets
THREE = 3  # Figures 8 to 10: pascal, coco, leafy_spurge
PASCAL = 1  # Figure 11, as the original's scripts/num_synthetic/ and scripts/synthetic_prob/
HALVED = 1  # flowers102: the original's per-seed halves (split_protocol: original-code)


def expected_jobs() -> Counter:
    """The grid by hand: (seed, shots) cells x datasets x methods, with what is shared."""
    cells = SEEDS * SHOTS
    # Figure 5 on seven datasets: randaugment, real-guidance, da-fusion. On the three:
    # baseline, real-guidance-erased, da-fusion-erased, real-guidance-agnostic,
    # da-fusion-fixed. On PASCAL, Figure 11's five cells (M 5, 10, 20 at alpha 0.5; alpha
    # 0.3, 0.7 at M 10) for DA-Fusion and Real Guidance.
    runs = SEVEN * 3 + THREE * 5 + PASCAL * 2 * 5
    # Synthetic sets, not methods: Figure 11's DA-Fusion cells read da-fusion's set (at
    # the largest M), its Real Guidance cells real-guidance-agnostic's
    synthetic = SEVEN * 2 + THREE * 4
    return Counter(
        {
            "check_dataset": SEVEN,
            "index_dataset": SEVEN,
            "seed_split": HALVED * SEEDS,  # each seed's halves, shared by its shot counts
            "few_shot_split": SEVEN * cells,
            # one joint inversion per (dataset, seed, shots) shared by every {token}
            # method, and one against the erased UNet where an erased method runs
            "invert": SEVEN * cells,
            "invert_erased": THREE * cells,
            "erase": THREE,  # one per dataset, shared by every seed and shot count
            "erasure_check": THREE,  # its heatmap in the report
            "generate": synthetic * cells,  # generation.parts: 1
            "gather_synthetic": synthetic * cells,
            "train": runs * cells,
            "aggregate": 1,
            # the report: one gallery and one set of loss curves per dataset, one page
            "gallery": SEVEN,
            "inversion_curves": SEVEN,
            "report": 1,
            "all": 1,
        }
    )


@pytest.mark.workflow
@pytest.mark.usefixtures("voc", "coco", "caltech", "flowers", "aircraft", "cars", "backbone_cache")
def test_the_paper_config_is_the_papers_grid(tmp_path, tiny_dir):
    spurge_images(tmp_path / "spurge", {"absent": 4, "apparent": 4})
    workdir = copy_workflow(tmp_path / "dafusion")
    (workdir / "config").mkdir()
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    roots = {name: str(tmp_path) for name in paper["datasets"]}
    roots |= {"pascal": str(tmp_path / "VOCdevkit"), "leafy_spurge": str(tmp_path / "spurge")}
    (workdir / "config/paper.yaml").write_text((REPO / "config/paper.yaml").read_text())
    overlay = write_config(
        workdir,
        "fixtures.yaml",
        {
            "datasets": {name: {"root": root} for name, root in roots.items()},
            "model": {"pretrained": tiny_dir},
        },
    )
    jobs = dry_run_jobs(workdir, "--cores", "2", "--configfile", "config/paper.yaml", overlay)
    counts = Counter(job["rule"] for job in jobs)
    assert counts == expected_jobs()
    assert sum(counts.values()) == 2341
    cluster = (REPO / "docs/cluster.md").read_text()
    assert "| total | 2,341 | |" in cluster and "is 2,341 jobs" in cluster

    # Leafy Spurge's generate jobs receive its M = 50 (Table 1): run one, small and fast.
    fast = {
        "model": {"pretrained": tiny_dir, "resolution": 32, "dtype": "float32"},
        "generation": {"num_inference_steps": 4, "batch_size": 64},  # t0 0.25: one step
    }
    fast_file = write_config(workdir, "fast.yaml", fast)
    configs = [yaml.safe_load((workdir / path).read_text()) for path in (overlay, fast_file)]
    plan = workflow_plan(paper, *configs)
    index = plan.sets.method_index("leafy_spurge", "real-guidance", 0, 1)
    result = snakemake(
        workdir, "--cores", "2", index, "--configfile", "config/paper.yaml", overlay, fast_file
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    synthetic = pd.read_parquet(workdir / index)
    assert synthetic.groupby("source_key").size().tolist() == [50, 50]  # 2 classes x 1 shot


def test_every_deviation_names_settings_that_exist():
    from dafusion.workflow.config import PER_ENTRY, SCHEMA, load_schema

    fidelity = (REPO / "docs/fidelity.md").read_text()
    table = fidelity.split("## Where this workflow differs from the paper", 1)[1].split("\n\n")[2]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    schema = load_schema(SCHEMA)["properties"]
    assert len(rows) >= 10
    for row in rows[1:]:
        setting = row.split(" | ")[-1]
        keys = re.findall(r"`([a-z_]+)\.(?:X\.)?([a-z_]+)`", setting)
        for section, key in keys:
            node = schema[section]
            node = node.get("additionalProperties", node) if section in PER_ENTRY else node
            assert key in node["properties"], (section, key)
        if not keys:  # top-level keys, e.g. `seeds`
            top = re.findall(r"`([a-z_]+)`", setting)
            assert top and all(key in schema for key in top), row


def test_the_figure_11_grid_overlay_states_its_cost():
    """config/paper-figure11-grid.yaml's header: its extra GPU-hours over config/paper.yaml
    and both totals, as `python -m dafusion.workflow.estimate` gives them."""
    from dafusion.workflow.estimate import plan_of, stages

    paper = REPO / "config/paper.yaml"
    grid = REPO / "config/paper-figure11-grid.yaml"
    alone, extended = (
        round(sum(s.hours for s in stages(plan_of(configs))))
        for configs in ([paper], [paper, grid])
    )
    header = grid.read_text().split("\n\nmethods:")[0].replace("\n# ", " ")
    assert f"{extended - alone} GPU-hours more than config/paper.yaml alone, {extended}" in header
    assert f"against {alone}" in header


def test_the_filtering_overlay_states_its_cost():
    """config/paper-filtering.yaml's header (issue 41): its extra GPU-hours and GPU jobs over
    config/paper.yaml and both totals, as `python -m dafusion.workflow.estimate` gives
    them, the scoring jobs included; and its methods: DA-Fusion with each filter on Figure
    5's datasets, each beside da-fusion, its unfiltered twin."""
    from dafusion.workflow.estimate import plan_of, stages

    paper = REPO / "config/paper.yaml"
    overlay = REPO / "config/paper-filtering.yaml"
    alone, extended = (stages(plan_of(configs)) for configs in ([paper], [paper, overlay]))
    hours = [round(sum(s.hours for s in grid)) for grid in (alone, extended)]
    jobs = [sum(s.jobs for s in grid) for grid in (alone, extended)]
    header = overlay.read_text().split("\n\nscoring:")[0].replace("\n# ", " ")
    assert (
        f"{hours[1] - hours[0]} GPU-hours more than config/paper.yaml alone, {hours[1]}" in header
    )
    assert f"against {hours[0]} ({jobs[1] - jobs[0]:,} more GPU jobs, {jobs[1]:,}" in header
    assert f"against {jobs[0]:,}" in header
    (score,) = [s for s in extended if s.name == "score"]
    assert f"{score.jobs:,} light scoring jobs ({score.hours:.1f} GPU-hours" in header
    plan = plan_of([paper, overlay])
    filtered = plan.filtered_methods("pascal")
    assert {plan.filter_of(m).by for m in filtered} == {"classifier", "clip", "change"}
    assert all(plan.filtered_methods(d) == filtered for d in plan.datasets)  # all seven
    assert all(
        plan.report.filter_twin(d, m) == "da-fusion" for d in plan.datasets for m in filtered
    )
    assert "figure-filtering" in plan.report.aggregate_figures()
    assert plan.scoring.classifier_method == "randaugment"
