import numpy as np
import pandas as pd
import pytest
from helpers import REPO
from matplotlib.colors import to_hex
from matplotlib.container import BarContainer

from dafusion.reporting.aggregate import (
    ablation_grid,
    best_steps,
    curve_areas,
    grid_references,
    markdown_table,
    normalized_scores,
    novelty_scores,
    overall_scores,
    paired_deltas,
    per_class,
    run_table,
    summarize,
    validation_curves,
)
from dafusion.reporting.figures import (
    OKABE_ITO,
    accuracy_figure,
    grid_figure,
    measure,
    method_styles,
    novelty_figure,
    paired_figure,
    per_class_figure,
    save_figure,
    score_figure,
    validation_figure,
)
from dafusion.settings import AggregateSettings, measure_names


def _runs():
    rows = []
    for seed, values in ((0, [0.2, 0.6, 0.4]), (1, [0.5, 0.3, 0.8])):
        for step, value in zip((200, 400, 600), values, strict=True):
            rows.append(
                dict(
                    dataset="d",
                    method="m",
                    seed=seed,
                    shots=1,
                    step=step,
                    split="val",
                    metric="accuracy",
                    value=value,
                )
            )
            rows.append(
                dict(
                    dataset="d",
                    method="m",
                    seed=seed,
                    shots=1,
                    step=step,
                    split="val",
                    metric="loss",
                    value=9.0,
                )
            )
    return pd.DataFrame(rows)


# What every table says its values are (dafusion.reporting.aggregate.LABELS), after its own columns.
LABELS = ["split", "metric", "selection"]


def _best(rows, split="test"):
    """A `best` frame from (dataset, method, seed, shots, value) tuples."""
    best = pd.DataFrame(rows, columns=["dataset", "method", "seed", "shots", "value"])
    return best.assign(step=200, split=split, metric="accuracy", selection="run")


def test_best_step_per_run_and_68_interval():
    best = best_steps(_runs(), metric="accuracy", selection="run")
    assert best.set_index("seed")["step"].to_dict() == {0: 400, 1: 600}
    summary = summarize(best)
    row = summary.iloc[0]
    assert row["accuracy_mean"] == pytest.approx(0.7)
    # (0.6, 0.8): sample std 0.1414, standard error 0.1414 / sqrt(2) = 0.1
    assert (row["ci68_low"], row["ci68_high"]) == pytest.approx((0.6, 0.8))
    assert row["num_seeds"] == 2
    one_seed = summarize(best[best["seed"] == 0]).iloc[0]
    assert one_seed[["accuracy_mean", "ci68_low", "ci68_high"]].tolist() == pytest.approx(
        [0.6, 0.6, 0.6]
    )


def test_select_on_val_report_on_test():
    runs = _runs()
    test = runs[runs["metric"] == "accuracy"].assign(split="test")
    test["value"] = test["value"] / 2
    runs = pd.concat([runs, test])
    best = best_steps(runs, "accuracy", "run", report_split="test")
    assert best.set_index("seed")["step"].to_dict() == {0: 400, 1: 600}  # chosen on val
    assert best.set_index("seed")["value"].to_dict() == pytest.approx({0: 0.3, 1: 0.4})
    assert set(best["split"]) == {"test"}
    original = best_steps(runs, "accuracy", "run", report_split="val")
    assert original.set_index("seed")["value"].to_dict() == pytest.approx({0: 0.6, 1: 0.8})
    # A dataset without a test split reports val.
    assert set(best_steps(_runs(), "accuracy", "run", report_split="test")["split"]) == {"val"}
    assert summarize(best)["split"].tolist() == ["test"]


# The original code's records (train_classifier.py of the DA-Fusion repository, a copy at
# /tmp/orig/dafusion/train_classifier.py, lines 243-317): per seed, examples per class and
# epoch, "Accuracy" is the mean of the per-class accuracies (lines 210-241; a class absent
# from the draw counts 0). Hand-made: 3 seeds, 2 shot counts, 3 epochs, where each run's own
# best epoch is not the epoch of the best seed mean.
ORIGINAL_ACCURACY = {  # (shots, seed) -> "Accuracy" per epoch
    (1, 0): [0.2, 0.9, 0.3],
    (1, 1): [0.5, 0.4, 0.6],
    (1, 2): [0.4, 0.5, 0.7],  # seed means 0.367, 0.6, 0.533: epoch 1
    (2, 0): [0.6, 0.7, 0.8],
    (2, 1): [0.9, 0.5, 0.6],
    (2, 2): [0.5, 0.6, 0.7],  # seed means 0.667, 0.6, 0.7: epoch 2
}
EVAL_INTERVAL = 200  # epoch e is this workflow's evaluation step (e + 1) * 200


def _original_records() -> pd.DataFrame:
    """The records train_classifier.py writes for one method: "Accuracy" and "Loss" on
    "Training" and "Validation" (only validation "Accuracy" may be selected on)."""
    rows = []
    for (shots, seed), values in ORIGINAL_ACCURACY.items():
        for epoch, value in enumerate(values):
            for metric, split, v in (
                ("Accuracy", "Validation", value),
                ("Accuracy", "Training", 1.0),
                ("Loss", "Validation", -value),
            ):
                rows.append(
                    dict(
                        seed=seed, examples_per_class=shots, epoch=epoch, value=v,
                        metric=metric, split=split,
                    )
                )  # fmt: skip
    return pd.DataFrame(rows)


def _plot_py_selection(data: pd.DataFrame) -> pd.DataFrame:
    """/tmp/orig/dafusion/plot.py, lines 78-91, for one method's records: the validation
    "Accuracy" rows, averaged over seeds per (examples_per_class, epoch); per
    examples_per_class the epoch of the highest mean, and every seed's row at that epoch
    (lines 120-126 then plot them with seaborn's 68% interval). The groupby-apply of line 89
    is written as a loop (pandas deprecates applying to the grouping columns)."""
    data = data[(data["metric"] == "Accuracy") & (data["split"] == "Validation")]

    def select_by_epoch(df):
        selected_row = df.loc[df["value"].idxmax()]
        return data[
            (data["epoch"] == selected_row["epoch"])
            & (data["examples_per_class"] == selected_row["examples_per_class"])
        ]

    best = data.groupby(["examples_per_class", "epoch"])
    best = best["value"].mean().to_frame("value").reset_index()
    return pd.concat(select_by_epoch(df) for _, df in best.groupby("examples_per_class"))


def _workflow_runs(records: pd.DataFrame) -> pd.DataFrame:
    """The same numbers as this workflow's run rows: "Accuracy" on "Validation" is
    mean_class_accuracy on val; plain accuracy gets other values (1 - it), so a test can
    tell which metric was read."""
    val = records[(records["metric"] == "Accuracy") & (records["split"] == "Validation")]
    runs = pd.DataFrame(
        {
            "dataset": "d",
            "method": "m",
            "seed": val["seed"],
            "shots": val["examples_per_class"],
            "step": (val["epoch"] + 1) * EVAL_INTERVAL,
            "split": "val",
            "metric": "mean_class_accuracy",
            "value": val["value"],
        }
    )
    accuracy = runs.assign(metric="accuracy", value=1.0 - runs["value"])
    return pd.concat([runs, accuracy], ignore_index=True)


def test_seed_mean_selection_is_the_original_plot_py():
    """The default (`metric: mean_class_accuracy`, `selection: seed_mean`) with the original's
    split (`report_split: val`) reports exactly the rows the original plot.py plots
    (/tmp/orig/dafusion/plot.py, lines 78-91 and 120-126) from train_classifier.py's
    records (lines 243-317), and per-run selection reports other numbers."""
    records = _original_records()
    original = _plot_py_selection(records)
    best = best_steps(_workflow_runs(records), report_split="val")
    expected = sorted(
        (r.examples_per_class, r.seed, (r.epoch + 1) * EVAL_INTERVAL, r.value)
        for r in original.itertuples()
    )
    rows = best[["shots", "seed", "step", "value"]].itertuples(index=False, name=None)
    assert sorted(rows) == expected
    assert best.groupby("shots")["step"].unique().map(list).to_dict() == {1: [400], 2: [600]}
    assert set(best["metric"]) == {"mean_class_accuracy"}
    assert set(best["selection"]) == {"seed_mean"}
    assert summarize(best)["accuracy_mean"].tolist() == pytest.approx([0.6, 0.7])
    # Each run's own best step is another number: 0.9, 0.6, 0.7 and 0.8, 0.9, 0.7.
    per_run = best_steps(_workflow_runs(records), selection="run", report_split="val")
    assert per_run.set_index(["shots", "seed"])["step"].to_dict() == {
        (1, 0): 400, (1, 1): 600, (1, 2): 600, (2, 0): 600, (2, 1): 200, (2, 2): 600,
    }  # fmt: skip
    assert summarize(per_run)["accuracy_mean"].tolist() == pytest.approx([2.2 / 3, 0.8])


def test_the_metric_switch_selects_and_reports_the_named_metric():
    runs = _workflow_runs(_original_records())
    best = best_steps(runs, metric="accuracy", report_split="val")
    # 1 - the values above: seed means 0.633, 0.4, 0.467 (1 shot), 0.333, 0.4, 0.3 (2 shots).
    assert best.groupby("shots")["step"].unique().map(list).to_dict() == {1: [200], 2: [400]}
    assert sorted(best.loc[best["shots"] == 1, "value"]) == pytest.approx([0.5, 0.6, 0.8])
    assert set(best["metric"]) == {"accuracy"}
    with pytest.raises(ValueError, match="no val rows of metric 'top5'"):
        best_steps(runs, metric="top5")


def test_seed_mean_selects_on_val_and_reports_the_report_split():
    runs = _workflow_runs(_original_records())
    test = runs.assign(split="test", value=runs["value"] / 2)
    best = best_steps(pd.concat([runs, test]), report_split="test")
    assert best.groupby("shots")["step"].unique().map(list).to_dict() == {1: [400], 2: [600]}
    assert summarize(best)["accuracy_mean"].tolist() == pytest.approx([0.3, 0.35])
    assert set(best["split"]) == {"test"}


def test_every_table_and_caption_names_the_metric_and_selection():
    best = best_steps(_workflow_runs(_original_records()), report_split="val")
    label = ", ".join(measure_names("mean_class_accuracy", "seed_mean", "val"))
    assert label == "mean per-class accuracy (val), step best on the seed mean"
    tables = [
        summarize(best), overall_scores(best), novelty_scores(best, {"bin": ["d"]}),
        curve_areas(best),
    ]  # fmt: skip
    for table in tables:
        assert table[LABELS].drop_duplicates().values.tolist() == [
            ["val", "mean_class_accuracy", "seed_mean"]
        ]
        assert ", ".join(measure(table)) == label
    assert measure_names("accuracy", "run", "test") == ("accuracy (test)", "step best per run")
    assert AggregateSettings().measure() == (
        "mean per-class accuracy (test where a dataset has one, else val), step best on the "
        "seed mean"
    )
    assert AggregateSettings(metric="accuracy", selection="run", report_split="val").measure() == (
        "accuracy (val), step best per run"
    )
    # The captions of the aggregate's figures (workflow/report/) show the rule's
    # params.measure: AggregateSettings.measure (workflow/rules/common.smk).
    for name in ("accuracy", "scores", "novelty", "paired", "grid"):
        text = (REPO / "workflow/report" / f"{name}.rst").read_text()
        assert text.startswith("Values: {{ snakemake.params.measure }}"), name


# Dataset a spans 0.2 .. 1.0; every run of b scores 0.4; c is in no bin of NOVELTY_BINS.
SCORED = _best(
    [
        ("a", "m1", 0, 1, 0.2),
        ("a", "m1", 1, 1, 0.6),
        ("a", "m2", 0, 1, 1.0),
        ("a", "m2", 0, 2, 0.4),
        ("b", "m1", 0, 1, 0.4),
        ("b", "m2", 0, 1, 0.4),
        ("c", "m1", 0, 1, 0.1),
        ("c", "m2", 0, 1, 0.3),
    ]
)


def test_normalized_scores_per_dataset_and_ties_at_one_half():
    scores = normalized_scores(SCORED)
    assert list(scores.columns) == ["dataset", "method", "seed", "shots", "score", *LABELS]
    by_run = scores.set_index(["dataset", "method", "seed", "shots"])["score"].to_dict()
    assert by_run == pytest.approx(
        {
            ("a", "m1", 0, 1): 0.0,
            ("a", "m1", 1, 1): 0.5,
            ("a", "m2", 0, 1): 1.0,
            ("a", "m2", 0, 2): 0.25,
            ("b", "m1", 0, 1): 0.5,  # max == min
            ("b", "m2", 0, 1): 0.5,
            ("c", "m1", 0, 1): 0.0,
            ("c", "m2", 0, 1): 1.0,
        }
    )
    assert list(scores.index) == list(range(8))
    assert list(zip(scores["dataset"], scores["method"], strict=True)) == sorted(
        zip(scores["dataset"], scores["method"], strict=True)
    )


def test_overall_scores_average_every_trial():
    overall = overall_scores(SCORED)
    assert list(overall.columns) == [
        "method", "score_mean", "ci68_low", "ci68_high", "num_trials", *LABELS,
    ]  # fmt: skip
    assert overall["method"].tolist() == ["m1", "m2"]
    m1 = [0.0, 0.5, 0.5, 0.0]  # a seed 0, a seed 1, b, c
    m2 = [1.0, 0.25, 0.5, 1.0]
    for row, scores in zip(overall.itertuples(), (m1, m2), strict=True):
        se = np.std(scores, ddof=1) / 2
        assert row.score_mean == pytest.approx(np.mean(scores))
        assert (row.ci68_low, row.ci68_high) == pytest.approx(
            (np.mean(scores) - se, np.mean(scores) + se)
        )
        assert row.num_trials == 4


NOVELTY_BINS = {"new": ["b"], "absent": ["z"], "common": ["a"]}


def test_novelty_bins_keep_their_order_and_leave_out_unbinned_datasets():
    novelty = novelty_scores(SCORED, NOVELTY_BINS)
    assert list(novelty.columns) == [
        "bin",
        "method",
        "score_mean",
        "ci68_low",
        "ci68_high",
        "num_trials",
        *LABELS,
    ]
    # "absent" has no dataset with runs; c is in no bin; "new" stays before "common".
    assert list(zip(novelty["bin"], novelty["method"], strict=True)) == [
        ("new", "m1"),
        ("new", "m2"),
        ("common", "m1"),
        ("common", "m2"),
    ]
    assert novelty["score_mean"].tolist() == pytest.approx([0.5, 0.5, 0.25, 0.625])
    assert novelty["num_trials"].tolist() == [1, 1, 2, 2]
    common_m2 = novelty.iloc[3]  # scores 1.0 and 0.25: standard error 0.375
    assert (common_m2["ci68_low"], common_m2["ci68_high"]) == pytest.approx((0.25, 1.0))
    # Normalized over all of a's runs, not only the binned ones: c joining changes nothing.
    again = novelty_scores(SCORED, {**NOVELTY_BINS, "fine": ["c"]})
    assert again["score_mean"].tolist()[:4] == pytest.approx([0.5, 0.5, 0.25, 0.625])
    assert again["bin"].tolist()[4:] == ["fine", "fine"]


PAIRED = _best(
    [
        ("a", "base", 0, 1, 0.5),
        ("a", "base", 1, 1, 0.4),
        ("a", "base", 2, 1, 0.3),
        ("a", "m", 0, 1, 0.7),
        ("a", "m", 1, 1, 0.8),
        ("a", "m", 3, 1, 0.9),  # no baseline seed 3: ignored
        ("a", "m", 0, 4, 0.9),  # no baseline at 4 shots: no row
        ("b", "base", 0, 2, 0.6),
        ("b", "m", 0, 2, 0.5),
        ("b", "n", 0, 2, 0.65),
    ]
)


def test_paired_deltas_pair_runs_by_seed():
    deltas = paired_deltas(PAIRED, "base")
    assert list(deltas.columns) == [
        "dataset",
        "method",
        "shots",
        "delta_mean",
        "ci68_low",
        "ci68_high",
        "num_pairs",
        *LABELS,
    ]
    assert deltas[["dataset", "method", "shots", "num_pairs"]].values.tolist() == [
        ["a", "m", 1, 2],
        ["b", "m", 2, 1],
        ["b", "n", 2, 1],
    ]
    # Seeds 0 and 1: deltas 0.2 and 0.4, standard error 0.1.
    assert deltas.iloc[0][["delta_mean", "ci68_low", "ci68_high"]].tolist() == pytest.approx(
        [0.3, 0.2, 0.4]
    )
    assert deltas["delta_mean"].tolist()[1:] == pytest.approx([-0.1, 0.05])
    assert (deltas["ci68_high"] - deltas["ci68_low"]).tolist()[1:] == pytest.approx([0, 0])
    empty = paired_deltas(PAIRED, "missing")
    assert empty.empty and list(empty.columns) == list(deltas.columns)


def test_curve_areas_trapezoid_on_log2_shots():
    best = _best(
        [
            ("a", "m", 0, 1, 0.2),
            ("a", "m", 0, 4, 0.4),
            ("a", "m", 0, 16, 0.8),
            ("a", "m", 1, 1, 0.2),  # 16 shots missing: its own range, log2 0..2
            ("a", "m", 1, 4, 0.6),
            ("b", "m", 0, 8, 0.7),  # a single shot count: that accuracy
        ]
    )
    areas = curve_areas(best)
    assert list(areas.columns) == [
        "dataset",
        "method",
        "auc_mean",
        "ci68_low",
        "ci68_high",
        "num_seeds",
        *LABELS,
    ]
    seed0 = ((0.2 + 0.4) / 2 * 2 + (0.4 + 0.8) / 2 * 2) / 4  # 0.45
    seed1 = (0.2 + 0.6) / 2 * 2 / 2  # 0.4
    assert areas["auc_mean"].tolist() == pytest.approx([(seed0 + seed1) / 2, 0.7])
    assert areas.iloc[0][["ci68_low", "ci68_high"]].tolist() == pytest.approx([0.4, 0.45])
    assert areas.iloc[1][["ci68_low", "ci68_high"]].tolist() == pytest.approx([0.7, 0.7])
    assert areas["num_seeds"].tolist() == [2, 1]


LAYOUT = pd.DataFrame(
    [
        # dataset, method, figures, strengths, num_synthetic, synthetic_probability
        ("a", "rg", [11], [0.5], 10, 0.5),
        ("a", "df-a3-m5", [11], [0.5, 1.0], 5, 0.3),
        ("b", "df-a3-m5", ["11"], [0.5, 1.0], 5, 0.3),
        ("a", "df-a5-m10", [5, 9, 10, 11], [0.5, 1.0], 10, 0.5),
        ("a", "df-a7-m5", ["11"], [0.5, 1.0], 5, 0.7),
        ("a", "other", [5], [0.5], 20, 0.9),  # not in Figure 11
    ],
    columns=["dataset", "method", "figures", "strengths", "num_synthetic", "synthetic_probability"],
)

GRID_BEST = _best(
    [
        ("a", "rg", 0, 1, 0.5),
        ("a", "rg", 1, 1, 0.6),
        ("b", "rg", 0, 1, 0.4),
        ("a", "df-a3-m5", 0, 1, 0.6),
        ("a", "df-a3-m5", 1, 1, 0.8),
        ("b", "df-a3-m5", 0, 1, 0.7),
        ("b", "df-a3-m5", 1, 1, 0.9),  # no rg seed 1 on b: ignored
        ("a", "df-a5-m10", 0, 1, 0.45),
        ("a", "df-a7-m5", 0, 1, 0.55),
        ("a", "df-a7-m5", 1, 1, 0.75),
        ("a", "other", 0, 1, 0.9),
    ]
)


def test_ablation_grid_pairs_each_cell_with_the_reference():
    grid = ablation_grid(GRID_BEST, LAYOUT, "rg")
    assert list(grid.columns) == [
        "method",
        "synthetic_probability",
        "num_synthetic",
        "delta_mean",
        "ci68_low",
        "ci68_high",
        "num_pairs",
        *LABELS,
    ]
    assert grid[
        ["method", "synthetic_probability", "num_synthetic", "num_pairs"]
    ].values.tolist() == [
        ["df-a3-m5", 0.3, 5, 3],
        ["df-a5-m10", 0.5, 10, 1],
        ["df-a7-m5", 0.7, 5, 2],
    ]
    # df-a3-m5: deltas 0.1 (a, 0), 0.2 (a, 1), 0.3 (b, 0); standard error 0.1 / sqrt(3).
    se = 0.1 / np.sqrt(3)
    assert grid.iloc[0][["delta_mean", "ci68_low", "ci68_high"]].tolist() == pytest.approx(
        [0.2, 0.2 - se, 0.2 + se]
    )
    assert grid["delta_mean"].tolist()[1:] == pytest.approx([-0.05, 0.1])
    assert grid.iloc[1]["ci68_low"] == grid.iloc[1]["ci68_high"]
    assert ablation_grid(GRID_BEST, LAYOUT, "missing").empty


def test_ablation_grid_refuses_a_method_with_two_cells():
    layout = LAYOUT.copy()
    layout.loc[2, "num_synthetic"] = 20
    with pytest.raises(
        ValueError, match=r"'df-a3-m5' has different .*a: \(0.3, 5\), b: \(0.3, 20\)"
    ):
        ablation_grid(GRID_BEST, layout, "rg")


def test_markdown_table_text():
    frame = pd.DataFrame(
        {
            "method": ["a|b", "c"],
            "score": [0.123456, np.nan],
            "n": [3, 4],
        }
    )
    assert markdown_table(frame) == (
        "| method | score | n |\n| --- | --- | --- |\n| a\\|b | 0.1235 | 3 |\n| c |  | 4 |\n"
    )
    assert markdown_table(frame[["score"]].head(1), "{:.1f}") == "| score |\n| --- |\n| 0.1 |\n"


# Figures.

METHODS = ["base", "m", "n"]


def _summary():
    best = _best(
        [
            ("a", "m", 0, 1, 0.4),
            ("a", "m", 1, 1, 0.6),
            ("a", "m", 0, 4, 0.7),
            ("a", "m", 1, 4, 0.9),
            ("a", "n", 0, 1, 0.3),
            ("a", "n", 0, 4, 0.5),
            ("b", "m", 0, 2, 0.8),  # one seed, one shot count
        ]
    )
    return summarize(best)


def test_method_styles_distinct_and_stable():
    styles = method_styles([f"m{i}" for i in range(20)])
    assert list(styles) == [f"m{i}" for i in range(20)]
    pairs = {(s["color"], s["marker"]) for s in styles.values()}
    assert len(pairs) == 20
    assert styles["m0"]["color"] == OKABE_ITO[0] and styles["m1"]["color"] == OKABE_ITO[1]
    assert method_styles(["x", "y"])["y"] == method_styles(["x", "y", "z"])["y"]


def test_accuracy_figure_plots_the_summary():
    summary = _summary()
    fig = accuracy_figure(summary, ["missing", *METHODS], title="T")
    ax_a, ax_b = fig.axes
    styles = method_styles(["missing", *METHODS])
    lines = {line.get_label(): line for line in ax_a.get_lines()}
    assert set(lines) == {"m", "n"}  # absent methods skipped
    m = summary[(summary["dataset"] == "a") & (summary["method"] == "m")]
    assert lines["m"].get_xdata().tolist() == [1, 4]
    assert lines["m"].get_ydata().tolist() == pytest.approx(m["accuracy_mean"].tolist())
    assert lines["m"].get_color() == styles["m"]["color"]
    assert lines["m"].get_marker() == styles["m"]["marker"]
    # The band spans the 68% interval: (0.4, 0.6) at 1 shot and (0.7, 0.9) at 4.
    band = ax_a.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(0.4) and band[:, 1].max() == pytest.approx(0.9)
    assert sorted(set(band[:, 1].round(6))) == pytest.approx([0.4, 0.6, 0.7, 0.9])
    assert [t.get_text() for t in ax_a.get_xticklabels()] == ["1", "4"]
    assert ax_a.get_xscale() == "log"
    assert ax_a.get_ylabel() == "accuracy (test)\nstep best per run"
    # One seed at one shot count: a point with a zero-length error bar, tick "2".
    assert [t.get_text() for t in ax_b.get_xticklabels()] == ["2"]
    (point,) = [line for line in ax_b.get_lines() if line.get_label() == "m"]
    assert point.get_ydata().tolist() == pytest.approx([0.8])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["m", "n"]
    assert fig._suptitle.get_text() == "T"
    assert fig.get_size_inches()[0] == pytest.approx(9.0)


def test_accuracy_figure_names_the_metric_reported_split_and_selection():
    runs = _runs()
    test = runs[runs["metric"] == "accuracy"].assign(split="test")
    summary = summarize(best_steps(pd.concat([runs, test]), "accuracy", "run", "test"))
    assert accuracy_figure(summary, ["m"]).axes[0].get_ylabel() == (
        "accuracy (test)\nstep best per run"
    )
    summary = summarize(best_steps(runs, "accuracy", "seed_mean", "test"))  # no test split: val
    assert accuracy_figure(summary, ["m"]).axes[0].get_ylabel() == (
        "accuracy (val)\nstep best on the seed mean"
    )


def _bars(ax):
    """The axes' bar containers (errorbars have containers of their own)."""
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def _error_extents(container, axis):
    """(low, high) of each bar's error bar along `axis` (0: x, horizontal bars), in bar order."""
    segments = container.errorbar.lines[2][0].get_segments()
    return np.array([sorted(segment[:, axis]) for segment in segments])


def test_score_figure_bars_and_intervals():
    overall = overall_scores(SCORED)
    fig = score_figure(overall)
    (ax,) = fig.axes
    (bars,) = _bars(ax)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["m1", "m2"]  # the frame's order
    assert [bar.get_width() for bar in bars] == pytest.approx(overall["score_mean"].tolist())
    expected = list(zip(overall["ci68_low"], overall["ci68_high"], strict=True))
    assert _error_extents(bars, 0) == pytest.approx(np.array(expected))
    assert [t.get_text() for t in ax.texts] == [f"{v:.3f}" for v in overall["score_mean"]]
    assert ax.get_xlabel() == "normalized score of\naccuracy (test)\nstep best per run"
    # Given methods: their order and the colours every other figure gives them.
    (ax,) = score_figure(overall, methods=["absent", "m2", "m1"]).axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["m2", "m1"]
    (bars,) = _bars(ax)
    assert [bar.get_width() for bar in bars] == pytest.approx(overall["score_mean"][::-1].tolist())
    assert [to_hex(bar.get_facecolor()) for bar in bars] == [
        OKABE_ITO[1].lower(),
        OKABE_ITO[2].lower(),
    ]


@pytest.mark.parametrize(
    "figure", [score_figure, lambda t: novelty_figure(t, ["da-fusion-erased", "real-guidance"])]
)
def test_score_labels_of_the_default_measure_stay_inside_the_figure(figure):
    """The longest measure names (the defaults': mean per-class accuracy, step best on the
    seed mean), beside long method names, are drawn whole: the saved figure does not cut
    its axis label."""
    names = {"m1": "da-fusion-erased", "m2": "real-guidance"}
    table = SCORED.assign(metric="mean_class_accuracy", selection="seed_mean", split="val")
    table = table.replace({"method": names})
    scored = (
        overall_scores(table) if figure is score_figure else novelty_scores(table, NOVELTY_BINS)
    )
    fig = figure(scored)
    fig.canvas.draw()
    (ax,) = fig.axes
    label = ax.xaxis.label if figure is score_figure else ax.yaxis.label
    assert "mean per-class accuracy (val)" in label.get_text()
    box, page = label.get_window_extent(), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1


def test_novelty_figure_groups_bars_by_bin():
    novelty = novelty_scores(SCORED, NOVELTY_BINS)
    fig = novelty_figure(novelty, ["m1", "m2"])
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["new", "common"]
    assert ax.get_ylabel() == "normalized score of\naccuracy (test)\nstep best per run"
    for container, method in zip(_bars(ax), ["m1", "m2"], strict=True):
        part = novelty[novelty["method"] == method]
        assert [bar.get_height() for bar in container] == pytest.approx(part["score_mean"].tolist())
        expected = list(zip(part["ci68_low"], part["ci68_high"], strict=True))
        assert _error_extents(container, 1) == pytest.approx(np.array(expected))
    m1_new, m2_new = (bars[0] for bars in _bars(ax))
    assert m1_new.get_x() < m2_new.get_x() < 0.5  # side by side around the bin's tick


def test_paired_figure_deltas_and_zero_line():
    deltas = paired_deltas(PAIRED, "base")
    fig = paired_figure(deltas, METHODS)
    ax_a, ax_b = fig.axes
    assert ax_a.get_ylabel() == "accuracy (test) \N{MINUS SIGN} baseline\nstep best per run"
    zero = ax_a.get_lines()[0]
    assert zero.get_linestyle() == "--" and list(zero.get_ydata()) == [0, 0]
    lines_b = {line.get_label(): line for line in ax_b.get_lines()[1:]}
    assert lines_b["m"].get_ydata().tolist() == pytest.approx([-0.1])
    assert lines_b["n"].get_ydata().tolist() == pytest.approx([0.05])
    assert lines_b["n"].get_color() == method_styles(METHODS)["n"]["color"]
    assert [t.get_text() for t in ax_b.get_xticklabels()] == ["2"]


def test_grid_figure_heatmap_of_deltas():
    grid = ablation_grid(GRID_BEST, LAYOUT, "rg")
    fig = grid_figure(grid, "rg")
    ax = fig.axes[0]
    array = ax.images[0].get_array()
    # rows alpha 0.3, 0.5, 0.7; columns M 5, 10
    expected = np.array([[0.2, np.nan], [np.nan, -0.05], [0.1, np.nan]])
    assert np.ma.getmaskarray(array).tolist() == np.isnan(expected).tolist()
    assert array.filled(np.nan) == pytest.approx(expected, nan_ok=True)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5", "10"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.3", "0.5", "0.7"]
    norm = ax.images[0].norm
    assert (norm.vmin, norm.vcenter, norm.vmax) == pytest.approx((-0.2, 0.0, 0.2))
    se = 0.1 / np.sqrt(3)
    assert [t.get_text() for t in ax.texts] == [
        f"+0.200\n\N{PLUS-MINUS SIGN}{se:.3f}",
        "-0.050\n\N{PLUS-MINUS SIGN}0.000",
        "+0.100\n\N{PLUS-MINUS SIGN}0.050",  # deltas 0.05 and 0.15
        *["not run"] * 3,  # the cells without a method
    ]
    assert ax.get_title().split("\n") == [
        "accuracy (test), step best per run", "relative to rg",
        "mean \N{PLUS-MINUS SIGN} standard error",
    ]  # fmt: skip
    assert fig.axes[1].get_ylabel() == "accuracy (test) difference"  # the colour bar


def test_grid_references_refuse_a_layout_that_gives_no_grid():
    """What the config alone decides about Figure 11, checked at start-up (config.py): two
    methods in one cell; the reference itself labelled 11 is no cell of its own."""
    assert grid_references(LAYOUT, "rg") == dict.fromkeys(
        ["df-a3-m5", "df-a5-m10", "df-a7-m5"], "rg"
    )
    twice = pd.concat([LAYOUT, LAYOUT.iloc[[1]].assign(method="rg-a3-m5")])
    with pytest.raises(
        ValueError, match=r"'methods.df-a3-m5.figures': methods \['df-a3-m5', 'rg-a3-m5'\] label"
    ):
        grid_references(twice, "rg")


def test_save_figure_writes_png_and_pdf(tmp_path):
    fig = accuracy_figure(_summary(), METHODS)
    paths = save_figure(fig, tmp_path / "figures" / "accuracy.a0.5")
    assert paths == [tmp_path / "figures/accuracy.a0.5.png", tmp_path / "figures/accuracy.a0.5.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "accuracy.a0.5.pdf",
        "accuracy.a0.5.png",
    ]  # no temporary file left
    import matplotlib.pyplot as plt

    assert not plt.fignum_exists(fig.number)


def _cell(method, alpha, m, label):
    return {
        "dataset": "a",
        "method": method,
        "figures": [label],
        "strengths": [0.5],
        "num_synthetic": m,
        "synthetic_probability": alpha,
    }


def test_figure_11_pairs_each_cell_with_the_reference_of_the_same_alpha_and_m():
    from dafusion.reporting.aggregate import data_balance_grid

    layout = pd.DataFrame(
        [
            _cell("df-a3-m5", 0.3, 5, "11"),
            _cell("df-a7-m5", 0.7, 5, "11"),
            _cell("rg-a3-m5", 0.3, 5, "11-reference"),
            _cell("rg-a7-m5", 0.7, 5, "11-reference"),
            _cell("baseline", 0.0, 0, "10"),
        ]
    )
    best = _best(
        [
            ("a", "df-a3-m5", 0, 1, 0.6), ("a", "df-a3-m5", 1, 1, 0.8),
            ("a", "rg-a3-m5", 0, 1, 0.5), ("a", "rg-a3-m5", 1, 1, 0.5),
            ("a", "df-a7-m5", 0, 1, 0.4), ("a", "rg-a7-m5", 0, 1, 0.7),
            ("a", "baseline", 0, 1, 0.0), ("a", "baseline", 1, 1, 0.0),
        ]
    )  # fmt: skip
    grid, reference = data_balance_grid(best, layout, "baseline")
    assert "same alpha and M" in reference
    assert grid["method"].tolist() == ["df-a3-m5", "df-a7-m5"]
    # df-a3-m5 - rg-a3-m5: 0.1 and 0.3 (mean 0.2, SE 0.1); df-a7-m5 - rg-a7-m5: -0.3.
    assert grid["delta_mean"].tolist() == pytest.approx([0.2, -0.3])
    assert grid["ci68_high"].tolist() == pytest.approx([0.3, -0.3])
    # Without references the cells are compared with the baseline.
    plain = layout[layout["figures"].map(lambda f: f != ["11-reference"])]
    grid, reference = data_balance_grid(best, plain, "baseline")
    assert reference == "baseline"
    assert grid["delta_mean"].tolist() == pytest.approx([0.7, 0.4])
    # A cell without its reference is named.
    with pytest.raises(ValueError, match=r"'df-a7-m5' \(Figure 11, alpha=0.7, M=5\) needs"):
        data_balance_grid(best, layout.drop(index=3), "baseline")


def _with_classes(runs: pd.DataFrame) -> pd.DataFrame:
    """`_runs` plus per-class rows (`accuracy/<class>`) on val: class a at 10 x the step's
    value, class b at the value itself, so each step's per-class values are known."""
    accuracy = runs[runs["metric"] == "accuracy"]
    a = accuracy.assign(metric="accuracy/a", value=accuracy["value"] / 10)
    b = accuracy.assign(metric="accuracy/b")
    return pd.concat([runs, a, b], ignore_index=True)


def test_per_class_accuracy_is_read_at_each_runs_selected_step():
    runs = _with_classes(_runs())
    best = best_steps(runs, "accuracy", "run", "val")  # seed 0 at step 400, seed 1 at 600
    table = per_class(runs, best)
    assert list(table.columns) == [
        "dataset", "method", "shots", "class_name", "accuracy_mean", "ci68_low", "ci68_high",
        "num_seeds", *LABELS,
    ]  # fmt: skip
    assert table["class_name"].tolist() == ["a", "b"]
    assert table["accuracy_mean"].tolist() == pytest.approx([0.07, 0.7])  # (0.6 + 0.8) / 2
    assert (table["ci68_low"].iloc[1], table["ci68_high"].iloc[1]) == pytest.approx((0.6, 0.8))
    assert table[LABELS].iloc[0].tolist() == ["val", "accuracy", "run"]
    # seed_mean selects step 600 for both seeds (mean 0.6): (0.4 + 0.8) / 2
    seed_mean = per_class(runs, best_steps(runs, "accuracy", "seed_mean", "val"))
    assert seed_mean["accuracy_mean"].tolist() == pytest.approx([0.06, 0.6])


def test_run_table_has_one_row_per_run_and_validation_curves_one_per_step():
    runs = _runs()
    best = best_steps(runs, "accuracy", "run", "val")
    table = run_table(best)
    assert list(table.columns) == [
        "dataset", "method", "seed", "shots", "step", "value", *LABELS,
    ]  # fmt: skip
    assert table[["seed", "step"]].values.tolist() == [[0, 400], [1, 600]]
    assert table["value"].tolist() == pytest.approx([0.6, 0.8])
    curves = validation_curves(runs, "accuracy")
    assert curves["step"].tolist() == [200, 400, 600]
    assert curves["value_mean"].tolist() == pytest.approx([0.35, 0.45, 0.6])
    assert curves["num_seeds"].tolist() == [2, 2, 2]
    assert set(curves["split"]) == {"val"} and set(curves["metric"]) == {"accuracy"}
    fig = validation_figure(curves, ["m"], "accuracy")
    (ax,) = fig.axes
    (line,) = ax.lines
    assert line.get_xdata().tolist() == [200, 400, 600]
    assert line.get_ydata().tolist() == pytest.approx([0.35, 0.45, 0.6])
    assert (ax.get_title(), ax.get_ylabel()) == ("d, 1 per class", "accuracy (val)")


def test_per_class_figure_shows_the_largest_shot_count():
    runs = _with_classes(_runs())
    more = runs.assign(shots=4, value=runs["value"] / 2)
    runs = pd.concat([runs, more], ignore_index=True)
    table = per_class(runs, best_steps(runs, "accuracy", "run", "val"))
    fig = per_class_figure(table, ["other", "m"])
    (ax,) = fig.axes
    assert ax.get_title() == "d, 4 examples per class"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    (bars,) = ax.containers
    assert bars.lines[0].get_xdata().tolist() == pytest.approx([0.035, 0.35])
    assert to_hex(bars.lines[0].get_color()) == OKABE_ITO[1].lower()  # m's colour everywhere
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["m"]


# Two datasets whose label orders are neither alphabetical nor alike: e's label 0 is "two".
LABEL_ORDER = {"d": ["zero", "one", "two"], "e": ["two", "zero"]}


def _labelled_runs() -> pd.DataFrame:
    """Runs that write `accuracy/<class>` in label order at every step, as the classifier
    stage does; class k of a dataset at (k + 1) / 10, the overall accuracy rising by step."""
    rows = []
    for dataset, names in LABEL_ORDER.items():
        for method in ("m", "b"):
            for seed in (0, 1):
                for shots in (1, 4):
                    run = dict(dataset=dataset, method=method, seed=seed, shots=shots,
                               split="val")  # fmt: skip
                    for step in (10, 20):
                        rows.append({**run, "step": step, "metric": "accuracy",
                                     "value": step / 100})  # fmt: skip
                        rows += [
                            {**run, "step": step, "metric": f"accuracy/{name}",
                             "value": (k + 1) / 10}
                            for k, name in enumerate(names)
                        ]  # fmt: skip
    return pd.DataFrame(rows)


def test_per_class_keeps_each_datasets_label_order():
    runs = _labelled_runs()
    table = per_class(runs, best_steps(runs, "accuracy", "run", "val"))
    for (dataset, method, shots), part in table.groupby(["dataset", "method", "shots"]):
        assert part["class_name"].tolist() == LABEL_ORDER[dataset], (dataset, method, shots)
        assert part["accuracy_mean"].tolist() == pytest.approx([0.1, 0.2, 0.3][: len(part)])
    # datasets, methods and shot counts still sorted, each block in its label order
    assert table[["dataset", "method", "shots"]].drop_duplicates().values.tolist() == [
        ["d", "b", 1], ["d", "b", 4], ["d", "m", 1], ["d", "m", 4],
        ["e", "b", 1], ["e", "b", 4], ["e", "m", 1], ["e", "m", 4],
    ]  # fmt: skip
    fig = per_class_figure(table, ["m", "b"])
    for ax, dataset in zip(fig.axes, ["d", "e"], strict=True):
        # the first class at the top: label 0 first, as the dataset lists its classes
        assert [t.get_text() for t in ax.get_yticklabels()] == LABEL_ORDER[dataset]
        assert ax.yaxis_inverted()
        (first, _) = ax.containers
        assert first.lines[0].get_xdata().tolist() == pytest.approx([0.1, 0.2, 0.3][
            : len(LABEL_ORDER[dataset])])  # fmt: skip


def test_figure_11_of_the_paper_config_draws_its_one_factor_cells():
    """config/paper.yaml's Figure 11 is the original's design (scripts/num_synthetic/ and
    scripts/synthetic_prob/): on PASCAL, M in {5, 20} at alpha 0.5 and alpha in {0.3, 0.7}
    at M 10, each DA-Fusion cell against Real Guidance at the same alpha and M. From a
    hand-made runs table, the figure holds those five cells and marks the four corners
    that no method runs."""
    import yaml
    from helpers import REPO, workflow_plan

    from dafusion.reporting.aggregate import best_steps, data_balance_grid

    plan = workflow_plan(yaml.safe_load((REPO / "config/paper.yaml").read_text()))
    layout = pd.DataFrame(plan.report.method_layout())
    cells = {"a50-m5": 0.1, "a50-m10": 0.2, "a50-m20": 0.3, "a30-m10": -0.1, "a70-m10": 0.4}
    rows = [
        dict(dataset="pascal", method=f"{method}-{cell}", seed=seed, shots=shots, step=step,
             split="val", metric="accuracy", value=value + 0.01 * step / 200)
        for cell, delta in cells.items()
        for method, value in (("da-fusion", 0.5 + delta), ("real-guidance-agnostic", 0.5))
        for seed in range(2) for shots in (1, 16) for step in (200, 400)
    ]  # fmt: skip
    best = best_steps(pd.DataFrame(rows), "accuracy", "run", "val")
    grid, reference = data_balance_grid(best, layout, plan.aggregate.baseline)
    assert "same alpha and M" in reference
    assert sorted(grid[["synthetic_probability", "num_synthetic"]].values.tolist()) == [
        [0.3, 10], [0.5, 5], [0.5, 10], [0.5, 20], [0.7, 10],
    ]  # fmt: skip
    assert grid["num_pairs"].tolist() == [4] * 5
    ax = grid_figure(grid, reference).axes[0]
    # rows alpha 0.3, 0.5, 0.7; columns M 5, 10, 20
    expected = [[np.nan, -0.1, np.nan], [0.1, 0.2, 0.3], [np.nan, 0.4, np.nan]]
    assert ax.images[0].get_array().filled(np.nan) == pytest.approx(np.array(expected), nan_ok=True)
    assert [t.get_text() for t in ax.texts].count("not run") == 4
