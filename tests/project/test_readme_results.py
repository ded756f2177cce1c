"""The README's results and run time are what `benchmarks/workflow.py --readme` writes: the
block between its markers has the shape the script gives it (the script rewrites it from a
run of each release, docs/development.md)."""

from __future__ import annotations

import importlib.util
import re

import pandas as pd
import pytest
import yaml
from helpers import REPO

README = REPO / "README.md"


@pytest.fixture(scope="module")
def workflow_benchmark():
    spec = importlib.util.spec_from_file_location(
        "workflow_benchmark", REPO / "benchmarks/workflow.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _between(name: str) -> str:
    text = README.read_text()
    assert text.count(f"<!-- {name} -->") == 1 and text.count(f"<!-- /{name} -->") == 1
    return text.split(f"<!-- {name} -->")[1].split(f"<!-- /{name} -->")[0]


def _shape(line: str) -> str:
    return re.sub(r"[+\u2212-]?\d+(\.\d+)?", "N", line)


@pytest.fixture
def results(tmp_path):
    """A finished run's results folder for the default's methods, with hand-made values."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    methods = list(config["methods"])
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump(
            {"methods": config["methods"], "aggregate": {"baseline": "baseline"}}, sort_keys=False
        )
    )
    tables = tmp_path / "tables"
    tables.mkdir()
    labels = {"split": "val", "metric": "mean_class_accuracy", "selection": "seed_mean"}
    cells = [(m, k) for m in methods for k in config["examples_per_class"]]
    summary = [
        {"dataset": "digits", "method": m, "shots": k, "accuracy_mean": 0.5 + 0.01 * i,
         "ci68_low": 0.48 + 0.01 * i, "ci68_high": 0.52 + 0.01 * i, "num_seeds": 2, **labels}
        for i, (m, k) in enumerate(cells)
    ]  # fmt: skip
    pd.DataFrame(summary).to_csv(tables / "summary.csv", index=False)
    paired = [
        {"dataset": "digits", "method": m, "shots": k, "delta_mean": 0.01, "ci68_low": -0.01,
         "ci68_high": 0.03, "num_pairs": 2, **labels}
        for m, k in cells
        if m != "baseline"
    ]  # fmt: skip
    pd.DataFrame(paired).to_csv(tables / "paired.csv", index=False)
    keys = [{"dataset": "digits", "method": m, "shots": k} for m, k in cells]
    pd.DataFrame([{**key, "seed": 0, "step": 100, "value": 0.5} for key in keys]).to_csv(
        tables / "runs.csv", index=False
    )
    pd.DataFrame(
        [{**key, "step": s, "value_mean": 0.5} for key in keys for s in (100, 200)]
    ).to_csv(tables / "validation.csv", index=False)
    recognition = [
        {"method": m, "class_name": "zero", "images": 4, "recognized": 0.5}
        for m in ["real (few-shot)", *methods[1:]]
    ]
    pd.DataFrame(recognition).to_csv(tables / "recognition-digits.csv", index=False)
    return tmp_path


def test_the_results_block_has_the_shape_the_script_writes(workflow_benchmark, results):
    written = workflow_benchmark.results_block(results).splitlines()
    readme = _between("results").strip("\n").splitlines()
    assert len(readme) == len(written)
    table = [i for i, line in enumerate(written) if not line.startswith("- ")]
    for i in table:  # the values line, the header with recognition rates, the table's rows
        assert _shape(readme[i]) == _shape(written[i]), readme[i]
    sentence = re.compile(
        r"^- digits, N examples? per class: [a-z-]+( and [a-z-]+)* (is best|tie for best) "
        r"\(N\)\. Against the baseline \(N\): .+\.$"
    )
    for line in readme[len(table) :]:
        assert sentence.match(_shape(line)), line


def test_the_run_time_says_on_what_machine_and_load(workflow_benchmark):
    written = workflow_benchmark.runtime_line(
        63, 331.4, "2 CPU cores (X), load average 0.01 before"
    )
    assert written == (
        "63 jobs, each its own process: 5 min 31 s on 2 CPU cores (X), load average 0.01 "
        "before the run"
    )
    shape = re.compile(
        r"^N jobs, each its own process: N min N s on N CPU cores \(.+\), load average N "
        r"before the run$"
    )
    assert shape.match(_shape(_between("runtime"))), _between("runtime")


def test_writing_between_markers_keeps_the_rest(workflow_benchmark, tmp_path):
    page = tmp_path / "page.md"
    page.write_text("a <!-- x -->old<!-- /x --> b\n")
    workflow_benchmark.write_between(page, "x", "new")
    assert page.read_text() == "a <!-- x -->new<!-- /x --> b\n"
    with pytest.raises(SystemExit, match="needs exactly one '<!-- y -->'"):
        workflow_benchmark.write_between(page, "y", "new")
