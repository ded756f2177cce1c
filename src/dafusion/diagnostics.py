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
PANELS_PER_ROW = 4
LEGEND_CLASSES = 10
FONTSIZE = 8


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

    Only the first classes are named in the legend; the panel's title counts the rest.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("no loss curves given")
    ncols = min(PANELS_PER_ROW, len(curves))
    nrows = math.ceil(len(curves) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(curves) :]:
        ax.axis("off")
    for ax, (label, table) in zip(axes.flat, curves.items(), strict=False):
        classes = list(pd.unique(table["class_name"]))
        styles = _styles(len(classes))
        for n, name in enumerate(classes):
            colour, style = styles[n]
            curve = table[table["class_name"] == name].sort_values("step")
            steps, loss = curve["step"].to_numpy(), curve["loss"].to_numpy(dtype="float64")
            ax.plot(steps, loss, color=colour, alpha=0.2, linewidth=0.8, label="_raw")
            shown = name if n < LEGEND_CLASSES else f"_{name}"
            ax.plot(steps, moving_average(loss, smooth), color=colour, linestyle=style, label=shown)
        hidden = len(classes) - LEGEND_CLASSES
        ax.set_title(label + (f" (+{hidden} more)" if hidden > 0 else ""), fontsize=FONTSIZE + 1)
        ax.set_xlabel("step", fontsize=FONTSIZE)
        ax.set_ylabel("textual-inversion loss", fontsize=FONTSIZE)
        ax.tick_params(labelsize=FONTSIZE)
        ax.grid(alpha=0.3)
        if classes:
            ax.legend(title="class", fontsize=FONTSIZE - 1, title_fontsize=FONTSIZE)
    fig.suptitle(f"Textual-inversion loss, moving average over {smooth} steps", fontsize=10)
    fig.tight_layout()
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
