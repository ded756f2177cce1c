"""The filters' tables as the report shows them (docs/filtering.md): what each keeps per
class over every split (from the `filtering` jobs' tables, `reporting.filtering`), and a
filtered method's accuracy beside its unfiltered twin's (from the aggregate's per-run
table). Needs pandas only: the report job imports it, not the filtering job's images.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


def keep_rate_summary(rates: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, filter, method and class of the `filtering` jobs' tables, over every
    split: the images kept of the candidates (`keep_rate`, a ratio of sums, so that each
    image counts once), and the real images emptied of the real images with candidates;
    `own` marks the filter's own images."""
    keys = ["dataset", "filter", "criteria", "method", "own", "label", "class_name"]
    sums = rates.groupby(keys, sort=False)[["candidates", "kept", "sources", "emptied"]].sum()
    sums["keep_rate"] = sums["kept"] / sums["candidates"].where(sums["candidates"] > 0)
    return sums.reset_index()


def filter_differences(runs: pd.DataFrame, twins: Mapping[str, Mapping[str, str]]) -> pd.DataFrame:
    """A filtered method's accuracy beside its unfiltered twin's (`twins`: dataset ->
    filtered method -> twin), from the aggregate's per-run table (`runs.csv`: one reported
    value per run): per dataset, filtered method and shots, each one's mean over seeds
    and the paired difference (filtered minus twin, by seed), each ± one standard error,
    and the number of seeds both ran."""
    rows = []
    for dataset, pairs in twins.items():
        mine = runs[runs["dataset"] == dataset]
        for method, twin in pairs.items():
            left = mine[mine["method"] == method][["seed", "shots", "value"]]
            right = mine[mine["method"] == twin][["seed", "shots", "value"]]
            paired = left.merge(right, on=["seed", "shots"], suffixes=("", "_twin"))
            for shots, cell in paired.groupby("shots", sort=True):
                n = len(cell)
                delta = cell["value"] - cell["value_twin"]
                rows.append(
                    {
                        "dataset": dataset,
                        "method": method,
                        "twin": twin,
                        "shots": shots,
                        "filtered": cell["value"].mean(),
                        "filtered_se": _se(cell["value"]),
                        "unfiltered": cell["value_twin"].mean(),
                        "unfiltered_se": _se(cell["value_twin"]),
                        "delta_mean": delta.mean(),
                        "ci68_low": delta.mean() - _se(delta),
                        "ci68_high": delta.mean() + _se(delta),
                        "num_pairs": n,
                    }
                )
    columns = [
        "dataset", "method", "twin", "shots", "filtered", "filtered_se", "unfiltered",
        "unfiltered_se", "delta_mean", "ci68_low", "ci68_high", "num_pairs",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _se(values: pd.Series) -> float:
    """One standard error of the mean (0 for a single value)."""
    if len(values) < 2:
        return 0.0
    return float(values.std(ddof=1) / np.sqrt(len(values)))
