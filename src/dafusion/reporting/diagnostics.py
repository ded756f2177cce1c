"""Diagnostics of a workflow run: textual-inversion loss curves, the erasure check, and the
time and memory each rule took (Snakemake's benchmark files)."""

from __future__ import annotations

import math
import re
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
# A loss table's file name: `seed{seed}-shots{shots}-loss.parquet` (workflow.paths).
LOSS_FILE = re.compile(r"seed(?P<seed>.+?)-shots(?P<shots>.+)-loss\.parquet")


def loss_title(path: str | Path) -> str:
    """A loss table's panel title in words, from its path (`{dataset}/tokens/[{eraser}/]`
    `seed{seed}-shots{shots}-loss.parquet`): "seed 0, 4 examples per class", and for tokens
    learned against an erased UNet "seed 0, 1 example per class, class names erased (ESD)"
    ("... erased together (ESD)" for one joint delta); for tokens learned with a LoRA
    (`{dataset}/lora/`, learner: lora) "seed 0, 4 examples per class, tokens with a LoRA". A
    file named otherwise keeps its stem."""
    path = Path(path)
    found = LOSS_FILE.fullmatch(path.name)
    if found is None:
        return path.stem
    shots = found["shots"]
    if shots == "all":
        examples = "every training image"
    else:
        examples = f"{shots} example{'' if shots == '1' else 's'} per class"
    title = f"seed {found['seed']}, {examples}"
    if path.parent.name == "lora":  # {dataset}/lora/: the LoRA learner's
        return title + ", tokens with a LoRA"
    if path.parent.name != "tokens":  # {dataset}/tokens/{eraser}/: the eraser's folder
        method, _, scope = path.parent.name.partition("-")
        together = " together" if scope == "joint" else ""
        title += f", class names erased{together} ({method.upper()})"
    return title


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
    and class: `delta, class_name, erased, erased_fraction`, deltas and classes in the
    check's order (the dataset's labels), each delta's erased classes first.

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
    first = {
        column: {value: n for n, value in enumerate(pd.unique(table[column]))}
        for column in ("delta", "class_name")
    }
    order = table.assign(
        delta=table["delta"].map(first["delta"]),
        class_name=table["class_name"].map(first["class_name"]),
        erased=~table["erased"],
    ).sort_values(["delta", "erased", "class_name"], kind="stable")
    return table.loc[order.index].reset_index(drop=True)


def failed_erasures(check: pd.DataFrame, threshold: float = ERASED_ENOUGH) -> pd.DataFrame:
    """The rows of an erasure check where a delta erased a class but moved that class's
    prompt less than `threshold` of the way toward the empty prompt: erasures that did not
    work (too few iterations, too small a learning rate)."""
    return check[check["erased"] & (check["erased_fraction"] < threshold)]


def erasure_figure(check: pd.DataFrame, threshold: float = ERASED_ENOUGH):
    """The erasure check (`erasure_summary`'s columns) as a heatmap, one row per class
    prompt and one column per delta, both in the check's order (the dataset's labels: the
    erase stage writes its classes and deltas so), so that a delta per class puts the erased
    cells on the diagonal. The cells of the classes a delta erases are outlined, and those
    below `threshold` (`failed_erasures`) outlined in red and struck through. Values are
    written in the cells where there is room, over a white patch where struck through. The
    colour scale is centred at 0 and reaches at least -0.5 and 1, with ticks on both sides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.ticker import MaxNLocator

    table = erasure_summary(check)
    classes = list(pd.unique(check["class_name"]))
    deltas = list(pd.unique(check["delta"]))
    grid = table.pivot(index="class_name", columns="delta", values="erased_fraction")
    values = grid.reindex(index=classes, columns=deltas).to_numpy(dtype="float64")
    erased = table.pivot(index="class_name", columns="delta", values="erased")
    erased = erased.reindex(index=classes, columns=deltas).fillna(False).to_numpy(dtype=bool)
    cell = 0.42 if max(len(classes), len(deltas)) <= 12 else 0.16
    fig, ax = plt.subplots(
        figsize=(2.6 + cell * len(deltas), 1.6 + cell * len(classes)), layout="constrained"
    )
    # Limits at tenths; below 0 at least -0.5, so that a small negative value (the prompt
    # moved a little away from the empty prompt) is not as dark as a complete erasure.
    top = max(1.0, math.ceil(float(np.nanmax(values, initial=1.0)) * 10) / 10)
    bottom = min(-0.5, math.floor(float(np.nanmin(values, initial=0.0)) * 10) / 10)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=bottom, vmax=top)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="PuOr_r", norm=norm, aspect="auto")
    annotate = max(len(classes), len(deltas)) <= 12
    for i, j in zip(*np.nonzero(erased), strict=True):
        failed = values[i, j] < threshold
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, linewidth=1.5,
                                   edgecolor="#D55E00" if failed else "black"))  # fmt: skip
        if failed:
            ax.plot([j - 0.45, j + 0.45], [i - 0.45, i + 0.45], color="#D55E00", linewidth=1.2)
    if annotate:
        for i, j in np.ndindex(values.shape):
            if not np.isnan(values[i, j]):
                struck = erased[i, j] and values[i, j] < threshold
                dark = abs(norm(values[i, j]) - 0.5) > 0.35 and not struck
                # Over the strike-through, the number on a white patch stays legible.
                patch = {"boxstyle": "square,pad=0.15", "facecolor": "w", "edgecolor": "none"}
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="w" if dark else "k", bbox=patch if struck else None,
                        zorder=3)  # fmt: skip
    ax.set_xticks(range(len(deltas)), labels=deltas, rotation=90, fontsize=FONTSIZE)
    ax.set_yticks(range(len(classes)), labels=classes, fontsize=FONTSIZE)
    ax.set_xlabel("delta (the class it erases)", fontsize=FONTSIZE)
    ax.set_ylabel("class of the check prompt", fontsize=FONTSIZE)
    failed = len(failed_erasures(table, threshold))
    ax.set_title(
        f"{failed} of {int(erased.sum())} erasures below {threshold:g}", fontsize=FONTSIZE + 1,
        color="#D55E00" if failed else "black",
    )  # fmt: skip
    bar = fig.colorbar(image, ax=ax, label="erased fraction")
    # TwoSlopeNorm gives each side half the bar: ticks on each side at its own spacing.
    steps = [1, 2, 2.5, 5, 10]  # tick spacings of 0.1, 0.2, 0.25, 0.5: 1 is always one
    below = MaxNLocator(nbins=3, steps=steps).tick_values(bottom, 0.0)
    above = MaxNLocator(nbins=6, steps=steps).tick_values(0.0, top)
    ticks = [t for t in np.concatenate([below, above]) if bottom - 1e-9 <= t <= top + 1e-9]
    bar.set_ticks(sorted({round(float(t), 6) for t in ticks}))
    bar.ax.tick_params(labelsize=FONTSIZE)
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
