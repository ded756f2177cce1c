"""Aggregate classifier runs: one evaluation step per run, mean and 68% interval over seeds,
and the paper's derived statistics (normalized scores, paired differences, curve areas).

Every table carries what its values are (`LABELS`: the split reported, the metric and the
step selection), so a figure drawn from it names them from the data (`figures.measure`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..settings import AggregateSettings

RUN_KEYS = ["dataset", "method", "seed", "shots"]
# Columns naming what a table's values are; every table keeps those its input has.
LABELS = ["split", "metric", "selection"]


def best_steps(
    runs: pd.DataFrame,
    metric: str = "mean_class_accuracy",
    selection: str = "seed_mean",
    report_split: str = "test",
) -> pd.DataFrame:
    """One row per run: its value of `metric` at the evaluation step selected on val, reported
    on `report_split` where the run has that split (val otherwise).

    `selection: run` takes each run's own best val step. `seed_mean` takes, per dataset,
    method and shot count, the step whose val value averaged over seeds is highest, and every
    seed's value there: the original code's plot.py, which selects and reports the epoch of
    the best seed-mean validation "Accuracy" (the mean per-class accuracy). Ties go to the
    earliest step in both."""
    group = ["dataset", "method", "shots"]
    val = runs[(runs["split"] == "val") & (runs["metric"] == metric)]
    if val.empty:
        raise ValueError(f"no val rows of metric {metric!r} in the runs")
    if selection == "run":
        val = val.sort_values([*RUN_KEYS, "step"])
        best = val.loc[val.groupby(RUN_KEYS)["value"].idxmax()]
    elif selection == "seed_mean":
        curve = val.groupby([*group, "step"], as_index=False)["value"].mean()
        steps = curve.loc[curve.groupby(group)["value"].idxmax(), [*group, "step"]]
        best = val.merge(steps, on=[*group, "step"])
    else:
        raise ValueError(f"unknown selection {selection!r}: run or seed_mean")
    best = best[[*RUN_KEYS, "step", "value"]].rename(columns={"value": "val_value"})
    report = runs[(runs["split"] == report_split) & (runs["metric"] == metric)]
    best = best.merge(report[[*RUN_KEYS, "step", "value"]], on=[*RUN_KEYS, "step"], how="left")
    best["split"] = best["value"].notna().map({True: report_split, False: "val"})
    best["value"] = best["value"].fillna(best["val_value"])
    best = best.drop(columns="val_value").assign(metric=metric, selection=selection)
    return best.sort_values(RUN_KEYS).reset_index(drop=True)


def summarize(best: pd.DataFrame) -> pd.DataFrame:
    """Mean and 68% interval (mean +- one standard error) over seeds."""
    keys = ["dataset", "method", "shots"]
    return _mean_interval(best, keys, "value", "accuracy_mean", "num_seeds")


def per_class(runs: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, method, shot count and class: the class's accuracy (`accuracy/<class>`,
    the fraction of its evaluation images classified correctly) at each run's selected step
    and reported split (`best_steps`), mean and 68% interval over seeds. Shows which classes
    a method helps, which a mean over classes hides.

    Rows are sorted by dataset, method and shot count, then by the dataset's own class order
    (its labels 0..C-1), not alphabetically: a run writes its `accuracy/<class>` rows in label
    order, so a class's first appearance among a dataset's runs is its place."""
    rows = runs[runs["metric"].str.startswith("accuracy/")]
    first = rows[["dataset", "metric"]].drop_duplicates()
    rank = first.assign(class_rank=first.groupby("dataset").cumcount())
    rows = rows.merge(
        best[[*RUN_KEYS, "step", "split", "selection"]], on=[*RUN_KEYS, "step", "split"]
    )
    rows = rows.merge(rank, on=["dataset", "metric"])
    rows = rows.assign(class_name=rows["metric"].str.removeprefix("accuracy/"), metric="accuracy")
    keys = ["dataset", "method", "shots", "class_rank", "class_name"]
    table = _mean_interval(rows, keys, "value", "accuracy_mean", "num_seeds")
    return table.drop(columns="class_rank")


def run_table(best: pd.DataFrame) -> pd.DataFrame:
    """One row per run (dataset, method, seed, shots): its reported value and the step it
    was read at, before any averaging over seeds."""
    return best[[*RUN_KEYS, "step", "value", *_labels(best)]]


def validation_curves(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per dataset, method, shot count and evaluation step: `metric` on val, mean and 68%
    interval over seeds: how training went, and whether the selected step is a fluke."""
    val = runs[(runs["split"] == "val") & (runs["metric"] == metric)]
    keys = ["dataset", "method", "shots", "step"]
    return _mean_interval(val, keys, "value", "value_mean", "num_seeds")


def _joined(values: pd.Series) -> str:
    """The distinct values of a label column, sorted and joined ("test/val")."""
    return "/".join(sorted(set(map(str, values))))


def _mean_interval(
    frame: pd.DataFrame, keys: Sequence[str], column: str, mean_name: str, count_name: str
) -> pd.DataFrame:
    """Per group of `keys` (sorted): mean of `column` and its 68% interval, mean +- one
    standard error (zero width for a single value), the number of values, and the group's
    `LABELS` columns (those `frame` has)."""
    grouped = frame.groupby(list(keys), sort=True, observed=True)
    values = grouped[column]
    mean = values.mean()
    count = values.count()
    sem = (values.std(ddof=1) / np.sqrt(count)).fillna(0.0)
    out = pd.DataFrame(
        {
            mean_name: mean,
            "ci68_low": mean - sem,
            "ci68_high": mean + sem,
            count_name: count.astype(int),
        }
    )
    for label in _labels(frame):
        out[label] = grouped[label].agg(_joined)
    return out.reset_index()


def _labels(frame: pd.DataFrame) -> list[str]:
    return [label for label in LABELS if label in frame.columns]


def normalized_scores(best: pd.DataFrame) -> pd.DataFrame:
    """The paper's normalized score of every run, (y - y_min) / (y_max - y_min), with y_min and
    y_max over all runs of the run's dataset (every method, seed and shot count), so that
    datasets of different difficulty weigh the same in an average.

    A dataset whose runs all score the same gets 0.5: no run is better than another there, and
    the midpoint neither rewards nor penalizes any method (0/0 is undefined)."""
    values = best.groupby("dataset")["value"]
    low = values.transform("min")
    span = values.transform("max") - low
    score = ((best["value"] - low) / span.where(span > 0)).mask(span == 0, 0.5)
    out = best[RUN_KEYS].assign(score=score, **{label: best[label] for label in _labels(best)})
    return out.sort_values(RUN_KEYS).reset_index(drop=True)


def overall_scores(best: pd.DataFrame) -> pd.DataFrame:
    """The paper's overall score: per method, the mean normalized score over all its trials
    (dataset, seed, shots), with its 68% interval over those trials."""
    return _mean_interval(normalized_scores(best), ["method"], "score", "score_mean", "num_trials")


def novelty_scores(best: pd.DataFrame, bins: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Figure 6: per bin of datasets (e.g. common, fine-grain, new concepts), the mean normalized
    score of each method over the trials of the bin's datasets. Scores are normalized over all
    runs of a dataset before binning; datasets in no bin are left out, bins keep the mapping's
    order, and a bin none of whose datasets has runs is omitted."""
    membership = pd.DataFrame(
        [(name, dataset) for name, datasets in bins.items() for dataset in datasets],
        columns=["bin", "dataset"],
    ).drop_duplicates()
    scores = normalized_scores(best).merge(membership, on="dataset")
    scores["bin"] = pd.Categorical(scores["bin"], categories=list(bins))
    out = _mean_interval(scores, ["bin", "method"], "score", "score_mean", "num_trials")
    out["bin"] = out["bin"].astype(str)
    return out


def _paired(best: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per run of every other method, its value minus the baseline's on the same dataset, seed
    and shot count; runs without a baseline counterpart are dropped (unpaired)."""
    keys = ["dataset", "seed", "shots"]
    reference = best.loc[best["method"] == baseline, [*keys, "value"]]
    pairs = best[best["method"] != baseline].merge(reference, on=keys, suffixes=("", "_baseline"))
    pairs["delta"] = pairs["value"] - pairs["value_baseline"]
    return pairs[[*RUN_KEYS, "delta", *_labels(best)]]


def paired_deltas(best: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per dataset, method and shot count: the mean over seeds of value(method, seed) -
    value(baseline, seed), over the seeds both ran. Pairing by seed removes the variance the
    two share (the same few-shot subset), which an interval of the difference of means keeps."""
    pairs = _paired(best, baseline)
    keys = ["dataset", "method", "shots"]
    return _mean_interval(pairs, keys, "delta", "delta_mean", "num_pairs")


def _curve_area(run: pd.DataFrame) -> float:
    """Trapezoid area under value against log2(shots), divided by the log2 range: the mean
    value over the curve (the single value when the run has one shot count)."""
    run = run.sort_values("shots")
    x = np.log2(run["shots"].to_numpy(dtype=float))
    y = run["value"].to_numpy(dtype=float)
    if len(x) == 1:
        return float(y[0])
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def curve_areas(best: pd.DataFrame) -> pd.DataFrame:
    """One number per accuracy curve: per dataset, method and seed the normalized area under
    accuracy against log2(examples per class) (a mean accuracy in [0, 1]; a seed missing some
    shot counts uses those it has), then mean and 68% interval over seeds."""
    keys = ["dataset", "method", "seed"]
    grouped = best.groupby(keys)
    areas = grouped[["shots", "value"]].apply(_curve_area).rename("auc").to_frame()
    for label in _labels(best):
        areas[label] = grouped[label].agg(_joined)
    areas = areas.reset_index()
    return _mean_interval(areas, ["dataset", "method"], "auc", "auc_mean", "num_seeds")


# A Figure 11 cell: the synthetic probability alpha and synthetic images per real image M.
GRID_CELL = ["synthetic_probability", "num_synthetic"]


def _figure_cells(layout: pd.DataFrame, figure: str) -> pd.DataFrame:
    """(synthetic_probability, num_synthetic) per method of the layout labelled `figure`;
    raises where a method has different values on different datasets (no single cell)."""
    labelled = layout["figures"].map(lambda labels: figure in {str(label) for label in labels})
    rows = layout.loc[labelled, ["method", "dataset", *GRID_CELL]]
    for method, part in rows.groupby("method"):
        if len(part[GRID_CELL].drop_duplicates()) > 1:
            values = ", ".join(
                f"{r.dataset}: ({r.synthetic_probability}, {r.num_synthetic})"
                for r in part.itertuples()
            )
            raise ValueError(
                f"config key 'methods.{method}.figures': {method!r} has different "
                f"(classifier.synthetic_probability, generation.num_synthetic) on different "
                f"datasets ({values}); a figure {figure} cell needs one value per method"
            )
    return rows.drop_duplicates("method")[["method", *GRID_CELL]]


def grid_references(layout: pd.DataFrame, baseline: str) -> dict[str, str]:
    """Figure 11's comparisons: each method labelled 11 -> the method its cell is measured
    against, the one labelled 11-reference with the same alpha and M (the paper compares
    DA-Fusion with Real Guidance at equal settings), or `baseline` where no method is so
    labelled. The methods' settings alone decide them, so the workflow checks them at
    start-up: raises ValueError, naming the method, where they give no grid (a method with
    different cells on different datasets, a cell without exactly one reference, two
    methods in one cell)."""
    cells = _figure_cells(layout, "11")
    references = _figure_cells(layout, "11-reference")
    if references.empty:
        cells = cells[cells["method"] != baseline]  # the reference is no cell of its own
        pairs = dict.fromkeys(cells["method"], baseline)
    else:
        pairs = {}
        for row in cells.itertuples():
            same = references.loc[
                (references["synthetic_probability"] == row.synthetic_probability)
                & (references["num_synthetic"] == row.num_synthetic),
                "method",
            ].tolist()
            if len(same) != 1:
                raise ValueError(
                    f"config key 'methods.{row.method}.figures': {row.method!r} (Figure 11, "
                    f"alpha={row.synthetic_probability}, M={row.num_synthetic}) needs exactly "
                    "one method labelled '11-reference' with the same alpha and M; found "
                    f"{same or 'none'}"
                )
            pairs[row.method] = same[0]
    shared = sorted(cells.loc[cells.duplicated(GRID_CELL, keep=False), "method"])
    if shared:
        raise ValueError(
            f"config key 'methods.{shared[0]}.figures': methods {shared} labelled 11 share a "
            "(synthetic_probability, num_synthetic) cell; the grid holds one method per cell"
        )
    return pairs


def ablation_grid(best: pd.DataFrame, layout: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Figure 11 (data balance): per method labelled 11 in `layout`, its synthetic probability
    alpha and synthetic images per real image M, and the mean paired difference to `reference`
    over the (dataset, seed, shots) both ran, with its 68% interval over those pairs."""
    cells = _figure_cells(layout, "11")
    pairs = _paired(best, reference)
    pairs = pairs[pairs["method"].isin(cells["method"])]
    stats = _mean_interval(pairs, ["method"], "delta", "delta_mean", "num_pairs")
    out = cells.merge(stats, on="method")
    return out.sort_values([*GRID_CELL, "method"]).reset_index(drop=True)


def data_balance_grid(
    best: pd.DataFrame, layout: pd.DataFrame, baseline: str
) -> tuple[pd.DataFrame, str]:
    """Figure 11's cells: each method labelled 11 against the method labelled
    "11-reference" with the same alpha and M (the paper compares DA-Fusion with Real
    Guidance at equal settings), or against the baseline when no method is so labelled
    (`grid_references`, checked at start-up)."""
    references = grid_references(layout, baseline)
    if set(references.values()) <= {baseline}:
        return ablation_grid(best, layout, baseline), baseline
    parts = [
        ablation_grid(best, layout[layout["method"] == method], reference)
        for method, reference in references.items()
    ]
    return pd.concat(parts, ignore_index=True), "the 11-reference method with the same alpha and M"


def _markdown_cell(value: object, float_format: str) -> str:
    """One table cell: floats formatted, integers as integers, missing values empty."""
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return ""
    if isinstance(value, (float, np.floating)):
        text = float_format.format(value)
    elif isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        text = str(int(value))
    else:
        text = str(value)
    return text.replace("|", "\\|")


def markdown_table(frame: pd.DataFrame, float_format: str = "{:.4f}") -> str:
    """`frame` as a GitHub-Markdown table (one line per row, ending in a newline); `|` in a cell
    is escaped so it cannot split the cell."""
    header = [_markdown_cell(str(column), float_format) for column in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_markdown_cell(v, float_format) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_summary(
    runs: pd.DataFrame,
    methods: Sequence[str],
    layout: Sequence[Mapping],
    figures: Mapping[str, str],
    tables: Mapping[str, str],
    settings: AggregateSettings,
) -> pd.DataFrame:
    """An aggregate job's outputs (`pipeline.aggregate`) from every classifier run: the
    tables at `tables` (name -> CSV path, and the Markdown summary) and the figures named
    in `figures` (name -> PNG path, a PDF beside each), which group methods by `layout`
    (each (dataset, method)'s figure labels and resolved alpha and M). Returns the summary.
    """
    # matplotlib only here: the workflow reads this module's checks at start-up (config).
    from . import figures as fig

    best = best_steps(runs, settings.metric, settings.selection, settings.report_split)
    summary = summarize(best)
    frames = {
        "summary": summary,
        "scores": overall_scores(best),
        "novelty": novelty_scores(best, settings.novelty),
        "paired": paired_deltas(best, settings.baseline),
        "areas": curve_areas(best),
        "per_class": per_class(runs, best),
        "runs": run_table(best),
        "validation": validation_curves(runs, settings.metric),
    }
    for name, frame in frames.items():
        Path(tables[name]).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(tables[name], index=False, float_format="%.6f")
    Path(tables["markdown"]).write_text(markdown_table(summary))
    layout = pd.DataFrame(list(layout))

    def labelled(label: str) -> list[str]:
        members = set(layout.loc[layout["figures"].map(lambda f: label in f), "method"])
        return [m for m in methods if m in members]

    def draw(name: str):
        if name == "accuracy":
            return fig.accuracy_figure(summary, methods)
        if name == "scores":
            return fig.score_figure(frames["scores"], methods)
        if name == "per-class":
            return fig.per_class_figure(frames["per_class"], methods)
        if name == "validation":
            return fig.validation_figure(frames["validation"], methods, settings.metric)
        if name == "novelty":
            return fig.novelty_figure(frames["novelty"], methods)
        if name == "paired":
            return fig.paired_figure(frames["paired"], methods)
        if name == "figure-11":
            grid, reference = data_balance_grid(best, layout, settings.baseline)
            return fig.grid_figure(grid, reference)
        label = name.removeprefix("figure-")
        members = labelled(label)
        part = summary[summary["method"].isin(members)]
        return fig.accuracy_figure(part, members, title=f"Figure {label}")

    for name, path in figures.items():
        fig.save_figure(draw(name), str(path).removesuffix(".png"))
    return summary
