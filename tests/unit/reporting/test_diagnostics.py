import re

import numpy as np
import pandas as pd
import pytest
from helpers import REPO
from matplotlib.colors import to_hex

from dafusion.reporting.diagnostics import (
    ERASED_ENOUGH,
    benchmark_table,
    erasure_figure,
    erasure_summary,
    failed_erasures,
    loss_figure,
    loss_title,
    rule_name,
)
from dafusion.workflow import paths

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _curves(losses: dict[str, list[float]]) -> pd.DataFrame:
    """A loss table as `invert` writes it: step-major, one row per class and step."""
    names = list(losses)
    steps = len(next(iter(losses.values())))
    return pd.DataFrame(
        {
            "step": [s + 1 for s in range(steps) for _ in names],
            "class_name": names * steps,
            "token": [f"<{n}>" for n in names] * steps,
            "loss": [losses[n][s] for s in range(steps) for n in names],
        }
    )


def test_loss_figure_plots_the_moving_average():
    curves = {
        "digits seed0-shots1": _curves({"zero": [4, 2, 6, 0, 3], "one": [1, 3, 2, 2, 5]}),
        "digits seed1-shots1": _curves({"zero": [2, 4]}),  # shorter than the window
    }
    fig = loss_figure(curves, smooth=3)
    first, second = fig.axes
    assert first.get_title() == "digits seed0-shots1"
    assert (first.get_xlabel(), first.get_ylabel()) == ("step", "textual-inversion loss")
    raw_zero, smooth_zero, raw_one, smooth_one = first.lines
    np.testing.assert_array_equal(raw_zero.get_xdata(), [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(raw_zero.get_ydata(), [4, 2, 6, 0, 3])
    assert raw_zero.get_alpha() < 0.5 and smooth_zero.get_alpha() is None
    np.testing.assert_allclose(smooth_zero.get_ydata(), [4, 3, 4, 8 / 3, 3])
    np.testing.assert_allclose(smooth_one.get_ydata(), [1, 2, 2, 7 / 3, 3])
    assert smooth_zero.get_color() != smooth_one.get_color()
    # one legend for the figure, each class one style in every panel
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["zero", "one"]
    assert first.get_legend() is None
    assert second.lines[1].get_color() == smooth_zero.get_color()
    np.testing.assert_allclose(second.lines[1].get_ydata(), [2, 3])


def test_loss_figure_layout_and_legend_limit():
    many = {f"class {i:02d}": [float(i), 1.0] for i in range(12)}
    curves = {f"run {n}": _curves({"class 00": [1.0, 2.0]}) for n in range(4)}
    curves["crowded"] = _curves(many)
    fig = loss_figure(curves, smooth=1)
    assert len(fig.axes) == 6  # three rows of two panels: legible at the page's width
    assert fig.get_figwidth() == 9.0
    assert [ax.axison for ax in fig.axes] == [True] * 5 + [False]
    crowded = fig.axes[4]
    assert crowded.get_title() == "crowded"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [f"class {i:02d}" for i in range(10)]
    assert fig.get_suptitle() == "Moving average over 1 steps; 2 more classes not in the legend"
    assert len(crowded.lines) == 24
    np.testing.assert_array_equal(crowded.lines[23].get_ydata(), [11.0, 1.0])  # smooth=1: raw
    with pytest.raises(ValueError, match="smooth must be at least 1"):
        loss_figure(curves, smooth=0)


def test_loss_titles_say_the_run_in_words():
    w = {"dataset": "digits", "eraser": "esd"}
    plain = paths.TOKEN_LOSSES.format(**w, seed=0, shots=4)
    assert loss_title(plain) == "seed 0, 4 examples per class"
    assert loss_title(paths.ERASED_TOKEN_LOSSES.format(**w, seed=0, shots=1)) == (
        "seed 0, 1 example per class, class names erased (ESD)"
    )
    joint = paths.ERASED_TOKEN_LOSSES.format(dataset="d", eraser="uce-joint", seed=2, shots="all")
    assert loss_title(joint) == "seed 2, every training image, class names erased together (UCE)"
    lora = paths.LORA_LOSSES.format(dataset="digits", seed=1, shots=2)
    assert loss_title(lora) == "seed 1, 2 examples per class, tokens with a LoRA"
    assert loss_title("elsewhere/curves.parquet") == "curves"


def test_erasure_summary_keeps_the_checks_order_and_numbers():
    """The erase stage writes deltas and classes in label order (zero, one, two: not
    alphabetical); the summary keeps it, each delta's erased class first."""
    check = pd.DataFrame(
        {
            "delta": ["zero", "zero", "zero", "one", "one", "one"],
            "file": ["zero.safetensors"] * 3 + ["one.safetensors"] * 3,
            "fingerprint": ["f0"] * 3 + ["f1"] * 3,
            "class_name": ["zero", "one", "two"] * 2,
            "erased": [True, False, False, False, True, False],
            "erased_fraction": [1.7, 0.2, 0.05, -0.03, 0.91, 0.125],
        }
    )
    summary = erasure_summary(check)
    assert list(summary.columns) == ["delta", "class_name", "erased", "erased_fraction"]
    assert summary.values.tolist() == [
        ["zero", "zero", True, 1.7],
        ["zero", "one", False, 0.2],
        ["zero", "two", False, 0.05],
        ["one", "one", True, 0.91],
        ["one", "zero", False, -0.03],
        ["one", "two", False, 0.125],
    ]
    assert summary["erased"].dtype == bool
    with pytest.raises(ValueError, match="no column erased_fraction"):
        erasure_summary(check.drop(columns="erased_fraction"))


# Three classes in label order (not alphabetical), a delta per class: "one" erased its
# class only a tenth of the way.
CHECK = pd.DataFrame(
    {
        "delta": ["zero"] * 3 + ["one"] * 3 + ["two"] * 3,
        "class_name": ["zero", "one", "two"] * 3,
        "erased": [True, False, False, False, True, False, False, False, True],
        "erased_fraction": [1.7, 0.2, 0.05, 0.02, 0.1, -0.05, 0.0, 0.03, 0.8],
    }
)


def test_failed_erasures_are_erased_cells_below_the_threshold():
    assert ERASED_ENOUGH == 0.5
    failed = failed_erasures(CHECK)
    assert failed[["delta", "class_name", "erased_fraction"]].values.tolist() == [
        ["one", "one", 0.1]
    ]
    assert failed_erasures(CHECK, threshold=0.05).empty


def test_erasure_figure_is_a_classes_by_deltas_heatmap_that_flags_failures():
    from matplotlib.patches import Rectangle

    fig = erasure_figure(CHECK)
    ax, bar = fig.axes
    rows = [t.get_text() for t in ax.get_yticklabels()]
    columns = [t.get_text() for t in ax.get_xticklabels()]
    # the check's (label) order, so the erased cells lie on the diagonal
    assert (rows, columns) == (["zero", "one", "two"], ["zero", "one", "two"])
    values = ax.images[0].get_array()
    assert values[rows.index("zero"), columns.index("zero")] == pytest.approx(1.7)
    assert values[rows.index("two"), columns.index("one")] == pytest.approx(-0.05)
    # an outline on each erased cell (x = column, y = row); the failed one in red and crossed
    outlines = {
        (round(p.get_x() + 0.5), round(p.get_y() + 0.5)): to_hex(p.get_edgecolor())
        for p in ax.patches
        if isinstance(p, Rectangle)
    }
    assert outlines == {(1, 1): "#d55e00", (0, 0): "#000000", (2, 2): "#000000"}
    assert [line.get_color() for line in ax.lines] == ["#D55E00"]
    assert ax.get_title() == "1 of 3 erasures below 0.5"
    cells = {t.get_text(): t for t in ax.texts}
    assert {"0.10", "1.70", "-0.05"} <= set(cells)
    # the struck-through number sits on a white patch above the line; the others on none
    struck = cells["0.10"]
    assert struck.get_bbox_patch() is not None and struck.zorder > ax.lines[0].zorder
    assert to_hex(struck.get_bbox_patch().get_facecolor()) == "#ffffff"
    assert cells["1.70"].get_bbox_patch() is None
    # the colour bar reaches -0.5 at least, with ticks below 0 as well as above
    ticks = bar.get_yticks()
    assert min(ticks) <= -0.4 and {0.0, 1.0} <= set(np.round(ticks, 6))
    assert len([t for t in ticks if t < 0]) >= 2
    assert bar.get_ylim() == pytest.approx((-0.5, 1.7))


def _write(path, *rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([HEADER, *("\t".join(map(str, r)) for r in rows)]) + "\n")
    return path


def _row(seconds, rss, cpu):
    return [seconds, "0:00:01", rss, 200.5, "NA", "-", 1.0, 2.0, 50.0, cpu]


def test_benchmark_table(tmp_path):
    root = tmp_path / "benchmarks"
    files = [
        _write(root / "digits/generate/da-fusion/seed0-shots1.tsv", _row(10.5, 100.0, 20.0)),
        _write(root / "digits/generate/real-guidance/seed0-shots1.tsv", _row(4.5, "NA", "-")),
        # Repeated benchmark: the mean of its rows; invert_erased is its own rule.
        _write(
            root / "digits/invert_erased/esd/seed0-shots1.tsv", _row(3, 50, 1.0), _row(5, 70, 3.0)
        ),
        _write(root / "digits/invert/seed0-shots1.tsv", _row(6, 30, 4.0)),
        _write(root / "aggregate.tsv", _row(0.5, 80, "NA")),
        _write(root / "model/build_tiny_model.tsv", _row(2, 300, 1.5)),
        _write(root / "digits/index_dataset.tsv", _row(1, 90, 0.5)),
    ]
    table = benchmark_table(files, root)
    assert list(table.columns) == [
        "rule", "jobs", "wall_s_total", "wall_s_max", "max_rss_mb_max", "cpu_s_total",
    ]  # fmt: skip
    expected = [
        ["generate", 2, 15.0, 10.5, 100.0, 20.0],
        ["invert", 1, 6.0, 6.0, 30.0, 4.0],
        ["invert_erased", 1, 4.0, 4.0, 60.0, 2.0],
        ["build_tiny_model", 1, 2.0, 2.0, 300.0, 1.5],
        ["index_dataset", 1, 1.0, 1.0, 90.0, 0.5],
        ["aggregate", 1, 0.5, 0.5, 80.0, np.nan],
    ]
    pd.testing.assert_frame_equal(table, pd.DataFrame(expected, columns=table.columns))
    assert rule_name(root / "digits/erase/esd.tsv", root) == "erase"
    assert benchmark_table([], root).empty


RULE = re.compile(r"^(?:rule (\w+)|use rule (\w+) as (\w+) with):", re.MULTILINE)
RESULT = re.compile(r'res\(\s*"([^"]+)"\s*\)')


def rule_benchmarks() -> dict[str, str]:
    """Each rule of workflow/rules/*.smk and its `benchmark:` path under the benchmarks
    folder, read from the text (a rule made by `use rule A as B with:` without a benchmark
    of its own keeps A's, as Snakemake's does)."""
    benchmarks, bases = {}, {}
    for path in sorted((REPO / "workflow/rules").glob("*.smk")):
        text = path.read_text()
        starts = list(RULE.finditer(text))
        for n, start in enumerate(starts):
            name = start[1] or start[3]
            if start[2]:
                bases[name] = start[2]
            end = starts[n + 1].start() if n + 1 < len(starts) else len(text)
            body = re.split(r"^\s+benchmark:\s*$", text[start.end() : end], flags=re.MULTILINE)
            if len(body) == 2:
                benchmarks[name] = RESULT.search(body[1])[1]
    for name, base in bases.items():
        benchmarks.setdefault(name, benchmarks[base])
    return benchmarks


def test_every_rules_benchmark_file_names_its_rule(tmp_path):
    """The time and memory table keeps each rule apart, as Snakemake's job statistics do:
    `rule_name` maps every rule's benchmark path (wildcards filled in) back to that rule."""
    benchmarks = rule_benchmarks()
    assert {"invert", "invert_erased", "generate", "train", "aggregate"} <= set(benchmarks)
    root = tmp_path / "benchmarks"
    for rule, pattern in benchmarks.items():
        assert pattern.startswith("benchmarks/"), (rule, pattern)
        path = root / re.sub(r"\{\w+\}", "w", pattern.removeprefix("benchmarks/"))
        assert rule_name(path, root) == rule, (rule, pattern)


@pytest.mark.workflow
def test_the_time_and_memory_table_measures_the_jobs_own_process(tmp_path):
    """One process per job: Snakemake's benchmark of a job, and so the report's table, holds
    the memory and CPU time of the job's own process (a job that holds 400 MB for a second and
    computes for a second shows both)."""
    import subprocess
    import sys
    import textwrap

    (tmp_path / "job.py").write_text(
        textwrap.dedent(
            """
            import time
            import numpy as np
            from dafusion.jobs.io import setup_job

            setup_job(snakemake.log[0])
            held = np.ones(400 * 2**20 // 8)
            end = time.process_time() + 1.0
            while time.process_time() < end:
                held[:1000] += 1
            time.sleep(1.0)
            open(snakemake.output[0], "w").write(str(held[0]))
            """
        )
    )
    (tmp_path / "Snakefile").write_text(
        textwrap.dedent(
            """
            rule allocate:
                output: "out.txt"
                log: "logs/allocate.log"
                benchmark: "benchmarks/allocate.tsv"
                script: "job.py"
            """
        )
    )
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--quiet"],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    table = benchmark_table([tmp_path / "benchmarks/allocate.tsv"], tmp_path / "benchmarks")
    row = table.iloc[0]
    assert row["rule"] == "allocate" and row["jobs"] == 1
    assert 400 <= row["max_rss_mb_max"] < 2000
    assert row["cpu_s_total"] >= 0.9
