"""Figures of run statistics (`dafusion.reporting.aggregate`): accuracy curves, normalized
scores, paired differences and the data-balance grid. Every method keeps one colour
(Okabe-Ito, safe for colour-blind readers) and one marker in every figure, given the same
list of methods. Every figure names its metric, split and step selection, read from the
table it draws."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from ..jobs.io import atomic_path
from ..settings import METRIC_NAMES, measure_names

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

# Okabe & Ito (2008); yellow last, it is the hardest to see on white.
OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442")
# Nine markers against eight colours: the (colour, marker) pair stays unique for 72 methods.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
PANEL_WIDTH = 4.5  # inches per panel: text at 8 pt and more stays legible at print size
PANEL_HEIGHT = 3.4
SMALL = 8  # the smallest font size used


def measure(table: pd.DataFrame) -> tuple[str, str]:
    """`settings.measure_names` of an aggregate table, read from its split, metric and
    selection columns (`aggregate.LABELS`; a table pooling datasets may hold several splits)."""

    def joined(column: str) -> str:
        parts = {part for value in table[column] for part in str(value).split("/")}
        return "/".join(sorted(parts))

    return measure_names(joined("metric"), joined("selection"), joined("split"))


def method_styles(methods: Sequence[str]) -> dict[str, dict]:
    """A colour and a marker per method, by its position in `methods`: pass the same list to
    every figure so that a method looks the same in all of them."""
    return {
        method: {"color": OKABE_ITO[i % len(OKABE_ITO)], "marker": MARKERS[i % len(MARKERS)]}
        for i, method in enumerate(methods)
    }


def _log2_shots(ax, shots: Sequence[int]) -> None:
    """A log2 x-axis whose ticks are exactly the shot counts, written as integers."""
    shots = sorted({int(s) for s in shots})
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, labels=[str(s) for s in shots])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("examples per class")


def _curves(ax, part: pd.DataFrame, column: str, methods: Sequence[str], styles: dict) -> None:
    """One line per method of `column` against shots with its 68% interval: a band, or error
    bars where the line has a single point (a band would have no width)."""
    for method in methods:
        line = part[part["method"] == method].sort_values("shots")
        if line.empty:
            continue
        style = styles[method]
        x, y = line["shots"].to_numpy(), line[column].to_numpy()
        low, high = line["ci68_low"].to_numpy(), line["ci68_high"].to_numpy()
        ax.plot(x, y, label=method, **style)
        if len(line) == 1:
            ax.errorbar(x, y, yerr=[y - low, high - y], color=style["color"], capsize=3)
        else:
            ax.fill_between(x, low, high, color=style["color"], alpha=0.2, linewidth=0)


def _legend(fig: Figure) -> None:
    """One legend for the figure, below the panels so it hides neither data nor the title."""
    handles, labels = fig.axes[0].get_legend_handles_labels()
    for ax in fig.axes[1:]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        fig.legend(
            handles, labels, fontsize=SMALL, loc="outside lower center",
            ncols=min(len(labels), 2 * len(fig.axes)), frameon=False,
        )  # fmt: skip


def _panels(count: int) -> tuple[Figure, list]:
    """A row of `count` panels (at least one), constrained layout."""
    count = max(count, 1)
    fig, axes = plt.subplots(
        1, count, figsize=(PANEL_WIDTH * count, PANEL_HEIGHT), squeeze=False, layout="constrained"
    )
    return fig, list(axes[0])


def accuracy_figure(
    summary: pd.DataFrame, methods: Sequence[str], title: str | None = None
) -> Figure:
    """Accuracy against examples per class (`aggregate.summarize`), one panel per dataset, one
    line per method with its 68% interval over seeds; each panel's y-axis names the metric, the
    split it is reported on and the step selection. Methods absent from `summary` are
    skipped."""
    styles = method_styles(methods)
    datasets = sorted(summary["dataset"].unique())
    fig, axes = _panels(len(datasets))
    for ax, dataset in zip(axes, datasets, strict=False):
        part = summary[summary["dataset"] == dataset]
        _curves(ax, part, "accuracy_mean", methods, styles)
        _log2_shots(ax, part["shots"])
        ax.set_title(dataset)
        ax.set_ylabel("\n".join(measure(part)))
        ax.grid(alpha=0.3)
    _legend(fig)
    fig.suptitle(title or "Few-shot accuracy\nmean and 68% interval over seeds", fontsize=10)
    return fig


def per_class_figure(table: pd.DataFrame, methods: Sequence[str]) -> Figure:
    """Per-class accuracy (`aggregate.per_class`) at each dataset's largest number of examples
    per class: one panel per dataset, one row per class from the top in the table's order
    (`aggregate.per_class` writes a dataset's classes in label order), one marker per method
    with its 68% interval over seeds."""
    styles = method_styles(methods)
    datasets = sorted(table["dataset"].unique())
    classes = max((table.loc[table["dataset"] == d, "class_name"].nunique() for d in datasets),
                  default=1)  # fmt: skip
    fig, axes = plt.subplots(
        1, max(len(datasets), 1), squeeze=False, layout="constrained",
        figsize=(PANEL_WIDTH * max(len(datasets), 1), 1.4 + 0.22 * classes),
    )  # fmt: skip
    shown = [m for m in methods if m in set(table["method"])]
    for ax, dataset in zip(axes[0], datasets, strict=False):
        part = table[table["dataset"] == dataset]
        part = part[part["shots"] == part["shots"].max()]
        names = list(pd.unique(part["class_name"]))  # the table's order: the labels'
        offset = 0.6 / max(len(shown), 1)
        for i, method in enumerate(shown):
            rows = part[part["method"] == method].set_index("class_name").reindex(names)
            y = np.arange(len(names)) + (i - (len(shown) - 1) / 2) * offset
            mean = rows["accuracy_mean"].to_numpy()
            xerr = [mean - rows["ci68_low"].to_numpy(), rows["ci68_high"].to_numpy() - mean]
            ax.errorbar(mean, y, xerr=xerr, linestyle="none", label=method, capsize=2,
                        markersize=4, **styles[method])  # fmt: skip
        ax.set_yticks(range(len(names)), labels=names, fontsize=SMALL)
        ax.invert_yaxis()
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel(f"accuracy of the class ({'/'.join(sorted(set(part['split'])))})")
        ax.set_title(f"{dataset}, {int(part['shots'].max())} examples per class", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    _legend(fig)
    return fig


def validation_figure(curves: pd.DataFrame, methods: Sequence[str], metric: str) -> Figure:
    """Validation curves (`aggregate.validation_curves`): `metric` on val against the training
    step, one row of panels per dataset and one panel per number of examples per class, one
    line per method with its 68% band over seeds."""
    styles = method_styles(methods)
    datasets = sorted(curves["dataset"].unique())
    shots = sorted(curves["shots"].unique())
    fig, axes = plt.subplots(
        max(len(datasets), 1), max(len(shots), 1), squeeze=False, sharey=True,
        figsize=(3.0 * max(len(shots), 1), 1.0 + 2.2 * max(len(datasets), 1)),
        layout="constrained",
    )  # fmt: skip
    for row, dataset in zip(axes, datasets, strict=False):
        for ax, count in zip(row, shots, strict=True):
            part = curves[(curves["dataset"] == dataset) & (curves["shots"] == count)]
            for method in methods:
                line = part[part["method"] == method].sort_values("step")
                if line.empty:
                    continue
                color = styles[method]["color"]
                ax.plot(line["step"], line["value_mean"], label=method, color=color,
                        marker=styles[method]["marker"], markersize=3)  # fmt: skip
                ax.fill_between(line["step"], line["ci68_low"], line["ci68_high"],
                                color=color, alpha=0.2, linewidth=0)  # fmt: skip
            ax.set_title(f"{dataset}, {count} per class", fontsize=9)
            ax.set_xlabel("training step", fontsize=SMALL)
            ax.tick_params(labelsize=SMALL)
            ax.grid(alpha=0.3)
        row[0].set_ylabel(f"{METRIC_NAMES.get(metric, metric)} (val)", fontsize=SMALL)
    _legend(fig)
    return fig


def paired_figure(deltas: pd.DataFrame, methods: Sequence[str]) -> Figure:
    """Paired accuracy difference to the baseline (`aggregate.paired_deltas`) against examples
    per class, one panel per dataset, with its 68% interval over seeds and a dashed zero line.
    Pass the same `methods` as to the other figures (the baseline included) to keep colours."""
    styles = method_styles(methods)
    datasets = sorted(deltas["dataset"].unique())
    fig, axes = _panels(len(datasets))
    for ax, dataset in zip(axes, datasets, strict=False):
        part = deltas[deltas["dataset"] == dataset]
        ax.axhline(0.0, color="0.4", linestyle="--", linewidth=1)
        _curves(ax, part, "delta_mean", methods, styles)
        _log2_shots(ax, part["shots"])
        ax.set_title(dataset)
        what, selection = measure(part)
        ax.set_ylabel(f"{what} \N{MINUS SIGN} baseline\n{selection}")
        ax.grid(alpha=0.3)
    _legend(fig)
    fig.suptitle("Paired difference to the baseline\nmean and 68% interval over seeds", fontsize=10)
    return fig


def _score_label(table: pd.DataFrame) -> str:
    """The normalized score's axis label on three short lines: on one, the default measure
    ("mean per-class accuracy (val)") ran past a one-panel figure's edge."""
    return "normalized score of\n{}\n{}".format(*measure(table))


def score_figure(overall: pd.DataFrame, methods: Sequence[str] | None = None) -> Figure:
    """Overall normalized score per method (`aggregate.overall_scores`) as horizontal bars from
    the top, with the 68% interval over trials and the value written beside each bar. Given
    `methods`, it draws those in that order with the colours of the other figures; otherwise
    every method of the frame, in its order."""
    methods = list(overall["method"]) if methods is None else list(methods)
    styles = method_styles(methods)
    overall = overall.set_index("method").reindex(methods).dropna(subset=["score_mean"])
    overall = overall.reset_index()
    mean = overall["score_mean"].to_numpy()
    low, high = overall["ci68_low"].to_numpy(), overall["ci68_high"].to_numpy()
    y = np.arange(len(overall))
    fig, ax = plt.subplots(
        figsize=(PANEL_WIDTH, 1.0 + 0.35 * max(len(overall), 1)), layout="constrained"
    )
    ax.barh(
        y,
        mean,
        xerr=[mean - low, high - mean],
        color=[styles[m]["color"] for m in overall["method"]],
        capsize=3,
        error_kw={"ecolor": "0.3"},
    )
    for row, value, end in zip(y, mean, high, strict=True):
        ax.text(end + 0.02, row, f"{value:.3f}", va="center", fontsize=SMALL)
    ax.set_yticks(y, labels=list(overall["method"]))
    ax.invert_yaxis()
    ax.set_xlim(0.0, max(1.15, float(np.max(high, initial=0.0)) + 0.15))
    ax.set_xlabel(_score_label(overall))
    ax.set_title("Overall normalized score\nmean and 68% interval over trials", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return fig


def novelty_figure(novelty: pd.DataFrame, methods: Sequence[str]) -> Figure:
    """Normalized score per concept-novelty bin (`aggregate.novelty_scores`, Figure 6): groups
    of bars, bins in the frame's order, one bar per method with its 68% interval."""
    styles = method_styles(methods)
    bins = list(dict.fromkeys(novelty["bin"]))
    shown = [m for m in methods if m in set(novelty["method"])]
    width = 0.8 / max(len(shown), 1)
    fig, ax = plt.subplots(
        figsize=(max(PANEL_WIDTH, 0.9 + 0.3 * len(bins) * len(shown)), PANEL_HEIGHT),
        layout="constrained",
    )
    for i, method in enumerate(shown):
        part = novelty[novelty["method"] == method]
        x = np.array([bins.index(b) for b in part["bin"]]) + (i - (len(shown) - 1) / 2) * width
        mean = part["score_mean"].to_numpy()
        yerr = [mean - part["ci68_low"].to_numpy(), part["ci68_high"].to_numpy() - mean]
        ax.bar(x, mean, width, yerr=yerr, label=method, color=styles[method]["color"], capsize=2)
    ax.set_xticks(range(len(bins)), labels=bins)
    ax.set_ylabel(_score_label(novelty))
    ax.set_ylim(bottom=0.0)
    ax.set_title("Normalized score by concept novelty\nmean and 68% interval", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    _legend(fig)
    return fig


def grid_figure(grid: pd.DataFrame, reference: str) -> Figure:
    """Data-balance ablation (`aggregate.ablation_grid`, Figure 11) as a heatmap: rows the
    synthetic probability alpha, columns the synthetic images per real image M, each cell the
    mean paired difference to `reference` +- one standard error (one method per cell:
    `aggregate.grid_references`); a diverging colour map centred at 0 with symmetric limits,
    so colour shows sign and size alike. A design that varies one factor at a time (the
    original's: M at alpha = 0.5, alpha at M = 10) leaves cells without a method: they say
    "not run", so that a blank is not read as a missing result."""
    cell = ["synthetic_probability", "num_synthetic"]
    alphas = sorted(grid["synthetic_probability"].unique())
    sizes = sorted(grid["num_synthetic"].unique())
    by_cell = grid.set_index(cell)
    delta = np.full((len(alphas), len(sizes)), np.nan)
    error = np.full_like(delta, np.nan)
    for (alpha, size), row in by_cell.iterrows():
        i, j = alphas.index(alpha), sizes.index(size)
        delta[i, j] = row["delta_mean"]
        error[i, j] = row["ci68_high"] - row["delta_mean"]
    limit = float(np.nanmax(np.abs(delta), initial=0.0)) or 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    fig, ax = plt.subplots(
        figsize=(PANEL_WIDTH, 1.6 + 0.7 * max(len(alphas), 1)), layout="constrained"
    )
    image = ax.imshow(np.ma.masked_invalid(delta), cmap="PuOr", norm=norm, aspect="auto")
    for i, j in zip(*np.nonzero(~np.isnan(delta)), strict=True):
        dark = abs(delta[i, j]) > 0.6 * limit  # the colour map's ends are dark
        text = f"{delta[i, j]:+.3f}\n\N{PLUS-MINUS SIGN}{error[i, j]:.3f}"
        ax.text(j, i, text, ha="center", va="center", fontsize=SMALL, color="w" if dark else "k")
    for i, j in zip(*np.nonzero(np.isnan(delta)), strict=True):
        ax.text(j, i, "not run", ha="center", va="center", fontsize=SMALL, color="0.5")
    ax.set_xticks(range(len(sizes)), labels=[str(int(m)) for m in sizes])
    ax.set_yticks(range(len(alphas)), labels=[f"{a:g}" for a in alphas])
    ax.set_xlabel("synthetic images per real image M")
    ax.set_ylabel("synthetic probability \N{GREEK SMALL LETTER ALPHA}")
    what, selection = measure(grid)
    ax.set_title(
        f"{what}, {selection}\nrelative to {reference}\nmean \N{PLUS-MINUS SIGN} standard error",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, label=f"{what} difference")
    return fig


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """Write `fig` to `stem`.png (150 dpi) and `stem`.pdf, each through a temporary file in the
    same folder renamed into place (a crash leaves no half-written figure), then close it."""
    stem = Path(stem)
    paths = []
    try:
        for fmt in ("png", "pdf"):
            path = stem.with_name(f"{stem.name}.{fmt}")
            with atomic_path(path) as tmp:
                # No creation date in the PDF: the same figure gives the same bytes.
                metadata = {"CreationDate": None} if fmt == "pdf" else None
                fig.savefig(tmp, format=fmt, dpi=150, metadata=metadata)
            paths.append(path)
    finally:
        plt.close(fig)
    return paths
