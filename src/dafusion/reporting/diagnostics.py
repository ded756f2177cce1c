"""Diagnostics of a workflow run: textual-inversion loss curves, the erasure check, and the
time and memory each rule took (Snakemake's benchmark files)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from itertools import cycle
from pathlib import Path

import numpy as np
import pandas as pd

OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
LINESTYLES = ("-", "--", ":", "-.")
PANELS_PER_ROW = 2
LEGEND_CLASSES = 10
FONTSIZE = 8
# An erasure works when it moves its class's prompt at least this far toward the empty
# prompt's prediction (1 = all the way; `erasure_summary`).
ERASED_ENOUGH = 0.5


def moving_average(values: np.ndarray, smooth: int) -> np.ndarray:
    """Trailing mean over the last `smooth` values; the first values average fewer (the
    window is clipped at the curve's start), so every step keeps a value."""
    if smooth < 1:
        raise ValueError(f"smooth must be at least 1, got {smooth}")
    return pd.Series(values, dtype="float64").rolling(smooth, min_periods=1).mean().to_numpy()


def _styles(n: int) -> list[tuple[str, str]]:
    """Colour-blind-safe (colour, line style) pairs: the palette, then again dashed, ..."""
    pairs = cycle((c, ls) for ls in LINESTYLES for c in OKABE_ITO)
    return [next(pairs) for _ in range(n)]


def loss_figure(curves: Mapping[str, pd.DataFrame], smooth: int = 10):
    """One panel per loss table (`step, class_name, token, loss`, keyed by a label), one
    line per class: the moving average over `smooth` steps, over the raw curve drawn faint.

    At most PANELS_PER_ROW panels a row, so the page's width keeps the text legible; a class
    has one style in every panel, and one legend below the panels names the first classes
    (the title counts the rest).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("no loss curves given")
    ncols = min(PANELS_PER_ROW, len(curves))
    nrows = math.ceil(len(curves) / ncols)
    classes = list(pd.unique(pd.concat([t["class_name"] for t in curves.values()])))
    styles = dict(zip(classes, _styles(len(classes)), strict=True))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.5 * ncols, 1.0 + 2.8 * nrows), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for ax in axes.flat[len(curves) :]:
        ax.axis("off")
    for ax, (label, table) in zip(axes.flat, curves.items(), strict=False):
        for name in pd.unique(table["class_name"]):
            colour, style = styles[name]
            curve = table[table["class_name"] == name].sort_values("step")
            steps, loss = curve["step"].to_numpy(), curve["loss"].to_numpy(dtype="float64")
            ax.plot(steps, loss, color=colour, alpha=0.2, linewidth=0.8)
            ax.plot(steps, moving_average(loss, smooth), color=colour, linestyle=style)
        ax.set_title(label, fontsize=FONTSIZE + 1)
        ax.set_xlabel("step", fontsize=FONTSIZE)
        ax.set_ylabel("textual-inversion loss", fontsize=FONTSIZE)
        ax.tick_params(labelsize=FONTSIZE)
        ax.grid(alpha=0.3)
    named = classes[:LEGEND_CLASSES]
    handles = [
        plt.Line2D([], [], color=styles[n][0], linestyle=styles[n][1], label=n) for n in named
    ]
    fig.legend(handles=handles, title="class", loc="outside lower center", frameon=False,
               ncols=min(len(named), 5), fontsize=FONTSIZE, title_fontsize=FONTSIZE)  # fmt: skip
    hidden = len(classes) - len(named)
    more = f"; {hidden} more classes not in the legend" if hidden > 0 else ""
    fig.suptitle(f"Moving average over {smooth} steps{more}", fontsize=FONTSIZE + 1)
    return fig


def erasure_summary(check: pd.DataFrame) -> pd.DataFrame:
    """The erasure check (an eraser's `check.parquet`) as a display table, one row per delta
    and class: `delta, class_name, erased, erased_fraction`, sorted by delta, its erased
    classes first.

    `erased_fraction` is unchanged from the check: the fraction of the way the UNet's noise
    prediction for the check prompt ("a photo of a {class}") moved, with the delta applied,
    from the base model's prediction toward the base's prediction for the empty prompt
    (projected on that direction, summed over fixed probes). 1 = the class prompt acts like
    the empty prompt, 0 = untouched; ESD's training target lies at 1 + negative_guidance.
    `erased` says whether the delta erases that class: high there, near 0 elsewhere (the
    other classes' values are the collateral damage).
    """
    columns = ["delta", "class_name", "erased", "erased_fraction"]
    missing = [c for c in columns if c not in check.columns]
    if missing:
        raise ValueError(
            f"not an erasure check table: no column {', '.join(missing)} "
            f"(its columns: {', '.join(map(str, check.columns))})"
        )
    table = check[columns].astype({"erased": bool})
    table = table.sort_values(["delta", "erased", "class_name"], ascending=[True, False, True])
    return table.reset_index(drop=True)


def failed_erasures(check: pd.DataFrame, threshold: float = ERASED_ENOUGH) -> pd.DataFrame:
    """The rows of an erasure check where a delta erased a class but moved that class's
    prompt less than `threshold` of the way toward the empty prompt: erasures that did not
    work (too few iterations, too small a learning rate)."""
    return check[check["erased"] & (check["erased_fraction"] < threshold)]


def erasure_figure(check: pd.DataFrame, threshold: float = ERASED_ENOUGH):
    """The erasure check (`erasure_summary`'s columns) as a heatmap, one row per class
    prompt and one column per delta; the cells of the classes a delta erases are outlined,
    and those below `threshold` (`failed_erasures`) are crossed out in red. Values are
    written in the cells where there is room."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    table = erasure_summary(check)
    classes = sorted(table["class_name"].unique())
    deltas = list(pd.unique(table.sort_values("delta")["delta"]))
    grid = table.pivot(index="class_name", columns="delta", values="erased_fraction")
    values = grid.reindex(index=classes, columns=deltas).to_numpy(dtype="float64")
    erased = table.pivot(index="class_name", columns="delta", values="erased")
    erased = erased.reindex(index=classes, columns=deltas).fillna(False).to_numpy(dtype=bool)
    cell = 0.42 if max(len(classes), len(deltas)) <= 12 else 0.16
    fig, ax = plt.subplots(
        figsize=(2.6 + cell * len(deltas), 1.6 + cell * len(classes)), layout="constrained"
    )
    top = max(1.0, float(np.nanmax(values, initial=1.0)))
    bottom = min(-0.1, float(np.nanmin(values, initial=0.0)))
    norm = TwoSlopeNorm(vcenter=0.0, vmin=bottom, vmax=top)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="PuOr_r", norm=norm, aspect="auto")
    annotate = max(len(classes), len(deltas)) <= 12
    for i, j in zip(*np.nonzero(erased), strict=True):
        failed = values[i, j] < threshold
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, linewidth=1.5,
                                   edgecolor="#D55E00" if failed else "black"))  # fmt: skip
        if failed:
            ax.plot([j - 0.4, j + 0.4], [i - 0.4, i + 0.4], color="#D55E00", linewidth=1.2)
    if annotate:
        for i, j in np.ndindex(values.shape):
            if not np.isnan(values[i, j]):
                dark = abs(norm(values[i, j]) - 0.5) > 0.35
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="w" if dark else "k")  # fmt: skip
    ax.set_xticks(range(len(deltas)), labels=deltas, rotation=90, fontsize=FONTSIZE)
    ax.set_yticks(range(len(classes)), labels=classes, fontsize=FONTSIZE)
    ax.set_xlabel("delta (the class it erases)", fontsize=FONTSIZE)
    ax.set_ylabel("class of the check prompt", fontsize=FONTSIZE)
    failed = len(failed_erasures(table, threshold))
    ax.set_title(
        f"{failed} of {int(erased.sum())} erasures below {threshold:g}", fontsize=FONTSIZE + 1,
        color="#D55E00" if failed else "black",
    )  # fmt: skip
    fig.colorbar(image, ax=ax, label="erased fraction")
    return fig


def rule_name(path: Path, root: Path) -> str:
    """The rule of a benchmark file, from its path under the benchmarks folder: the folder
    after the dataset (`{dataset}/generate/{set}/seed0-shots1/part-0-of-1.tsv` -> generate),
    or the file's stem for shallower files (`aggregate.tsv`, `digits/index_dataset.tsv`)."""
    parts = Path(path).relative_to(root).parts
    return parts[1] if len(parts) >= 3 else Path(path).stem


def _read_benchmark(path: Path) -> pd.Series:
    """One benchmark file's mean over its rows (repeated benchmarks); "NA", "-" or any other
    non-numeric value counts as missing."""
    raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    values = raw.apply(lambda column: pd.to_numeric(column.str.strip(), errors="coerce"))
    return values.mean(numeric_only=True)


def _total(values: pd.Series) -> float:
    """Sum of the known values; NaN, not 0, when none is known."""
    return values.sum(min_count=1)


def benchmark_table(files: Iterable[Path], root: Path) -> pd.DataFrame:
    """Per rule: number of jobs, total and longest wall time (s), peak resident memory (MB,
    Snakemake's `max_rss`) and total CPU time (s), slowest rule first. Missing values are
    left out of the totals and maxima."""
    rows = []
    for path in files:
        means = _read_benchmark(path)
        rows.append(
            {
                "rule": rule_name(path, root),
                "wall_s": means.get("s", np.nan),
                "max_rss_mb": means.get("max_rss", np.nan),
                "cpu_s": means.get("cpu_time", np.nan),
            }
        )
    columns = ["rule", "jobs", "wall_s_total", "wall_s_max", "max_rss_mb_max", "cpu_s_total"]
    if not rows:
        return pd.DataFrame(columns=columns)
    table = (
        pd.DataFrame(rows)
        .groupby("rule")
        .agg(
            jobs=("rule", "size"),
            wall_s_total=("wall_s", _total),
            wall_s_max=("wall_s", "max"),
            max_rss_mb_max=("max_rss_mb", "max"),
            cpu_s_total=("cpu_s", _total),
        )
    )
    table = table.reset_index().sort_values(["wall_s_total", "rule"], ascending=[False, True])
    return table[columns].reset_index(drop=True)
