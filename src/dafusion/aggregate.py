"""Aggregate classifier runs: best evaluation step per run, mean and 68% interval over seeds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def best_steps(
    runs: pd.DataFrame, metric: str = "accuracy", report_split: str = "test"
) -> pd.DataFrame:
    """One row per run: the evaluation step with the highest val `metric` (the paper's
    protocol), reporting `report_split`'s value at that step where the run has that split
    (the original code selects and reports on val: `report_split: val`)."""
    keys = ["dataset", "method", "seed", "shots"]
    val = runs[(runs["split"] == "val") & (runs["metric"] == metric)]
    best = val.loc[val.groupby(keys)["value"].idxmax(), [*keys, "step", "value"]]
    best = best.rename(columns={"value": "val_value"}).reset_index(drop=True)
    report = runs[(runs["split"] == report_split) & (runs["metric"] == metric)]
    report = report[[*keys, "step", "value"]]
    best = best.merge(report, on=[*keys, "step"], how="left")
    best["split"] = best["value"].notna().map({True: report_split, False: "val"})
    best["value"] = best["value"].fillna(best["val_value"])
    return best.drop(columns="val_value")


def summarize(best: pd.DataFrame) -> pd.DataFrame:
    """Mean and 68% interval (mean +- one standard error) over seeds."""

    def stats(values: pd.Series) -> pd.Series:
        n = len(values)
        mean = values.mean()
        sem = values.std(ddof=1) / np.sqrt(n) if n > 1 else 0.0
        return pd.Series(
            {"accuracy_mean": mean, "ci68_low": mean - sem, "ci68_high": mean + sem, "num_seeds": n}
        )

    grouped = best.groupby(["dataset", "method", "shots"])
    out = grouped["value"].apply(stats).unstack().reset_index()
    out["split"] = grouped["split"].agg(lambda s: "/".join(sorted(set(s)))).to_numpy()
    out["num_seeds"] = out["num_seeds"].astype(int)
    return out.sort_values(["dataset", "method", "shots"]).reset_index(drop=True)


def plot(summary: pd.DataFrame, path: str | Path, methods: Sequence[str]) -> None:
    """Write the accuracy figure (`accuracy_figure`) to `path`."""
    import matplotlib.pyplot as plt

    fig = accuracy_figure(summary, methods)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def accuracy_figure(summary: pd.DataFrame, methods: Sequence[str]):
    """Accuracy against examples per class, one panel per dataset, one line per method; each
    panel's y-axis names the split its accuracies are reported on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(summary["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        part = summary[summary["dataset"] == dataset]
        for method in methods:
            line = part[part["method"] == method].sort_values("shots")
            if line.empty:
                continue
            ax.plot(line["shots"], line["accuracy_mean"], marker="o", label=method)
            ax.fill_between(line["shots"], line["ci68_low"], line["ci68_high"], alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(part["shots"].unique()))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_title(dataset)
        ax.set_xlabel("examples per class")
        ax.set_ylabel(f"accuracy ({'/'.join(sorted(set(part['split'])))})")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(title="method", fontsize=8)
    fig.suptitle("Few-shot accuracy, mean and 68% interval over seeds", fontsize=10)
    fig.tight_layout()
    return fig
