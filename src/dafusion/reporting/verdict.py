"""What a run found, in words: per dataset and number of examples per class, the best method
and each method's paired difference from the baseline, written from the aggregate's tables.

The report opens with it and `benchmarks/workflow.py` writes it into the README, so the
reading of a run is generated from the same numbers as its tables, never typed by hand.
A cell whose selected evaluation step is the last one evaluated is flagged: its curve may
still be rising, and its value says how fast a method fits rather than where it ends.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

MINUS = "\u2212"  # a typographic minus: "−0.04" reads as a number, "-0.04" as a dash


def unfinished(runs: pd.DataFrame, validation: pd.DataFrame) -> pd.DataFrame:
    """The (dataset, method, shots) cells of which a run's selected step is the last step its
    validation curve has (`runs`: the aggregate's runs table, one row per run with its
    selected `step`; `validation`: its validation table), with that `last_step`."""
    keys = ["dataset", "method", "shots"]
    last = (
        validation.groupby(keys, as_index=False)["step"].max().rename(columns={"step": "last_step"})
    )
    selected = runs[[*keys, "step"]].merge(last, on=keys)
    cells = selected.loc[selected["step"] == selected["last_step"], [*keys, "last_step"]]
    return cells.drop_duplicates(keys).reset_index(drop=True)


def _number(value: float, sign: bool = False) -> str:
    text = f"{value:+.2f}" if sign else f"{value:.2f}"
    return text.replace("-", MINUS)


def _shots(shots: object) -> str:
    if str(shots) == "all":
        return "every training image"
    return f"{shots} example{'' if str(shots) == '1' else 's'} per class"


def _order(methods: Sequence[str], present: Sequence[str]) -> list[str]:
    """`methods`' order (the config's), then any other method present, in its own order."""
    return [m for m in methods if m in present] + [m for m in present if m not in methods]


def _difference(method: str, row: pd.Series) -> str:
    """A method's paired difference with its interval (mean ± one standard error over seeds),
    and whether the interval excludes zero."""
    half = (row["ci68_high"] - row["ci68_low"]) / 2
    text = f"{method} {_number(row['delta_mean'], sign=True)} ± {_number(half)}"
    if int(row["num_pairs"]) < 2:
        return f"{text} (one seed: no interval)"
    if row["ci68_low"] > 0:
        return f"{text} (above the baseline: the interval excludes zero)"
    if row["ci68_high"] < 0:
        return f"{text} (below the baseline: the interval excludes zero)"
    return f"{text} (the interval includes zero)"


def _filtered(method: str, row: pd.Series) -> str:
    """A filtered method's paired difference from its unfiltered twin, with its interval."""
    half = (row["ci68_high"] - row["ci68_low"]) / 2
    text = (
        f"{method} {_number(row['delta_mean'], sign=True)} ± {_number(half)} against "
        f"{row['twin']} unfiltered"
    )
    if int(row["num_pairs"]) < 2:
        return f"{text} (one seed: no interval)"
    if row["ci68_low"] > 0:
        return f"{text} (the filter helps: the interval excludes zero)"
    if row["ci68_high"] < 0:
        return f"{text} (the filter hurts: the interval excludes zero)"
    return f"{text} (the interval includes zero)"


def verdict(
    summary: pd.DataFrame,
    paired: pd.DataFrame,
    late: pd.DataFrame,
    methods: Sequence[str],
    baseline: str,
    filtered: pd.DataFrame | None = None,
) -> list[str]:
    """One sentence group per (dataset, shots) of the summary table, in its order: the best
    method by mean (ties named together), each other method's paired difference from
    `baseline` (the paired table: mean ± one standard error over seeds, and whether that
    interval excludes zero), each filtered method's paired difference from its unfiltered
    twin (`filtered`: `aggregate.filter_differences`), and the methods still improving at
    their last evaluated step (`unfinished`'s cells)."""
    found = []
    for (dataset, shots), cell in summary.groupby(["dataset", "shots"], sort=False):
        order = _order(methods, list(dict.fromkeys(cell["method"])))
        means = cell.set_index("method")["accuracy_mean"]
        top = means.max()
        best = [m for m in order if means[m] == top]
        lead = " and ".join(best) + (" tie for best" if len(best) > 1 else " is best")
        text = f"{dataset}, {_shots(shots)}: {lead} ({_number(top)})."
        here = paired[(paired["dataset"] == dataset) & (paired["shots"] == shots)]
        if baseline in means and len(here):
            rows = here.set_index("method")
            differences = [_difference(m, rows.loc[m]) for m in order if m in rows.index]
            text += (
                f" Against the baseline ({_number(means[baseline])}): "
                + "; ".join(differences)
                + "."
            )
        if filtered is not None and len(filtered):
            twins = filtered[(filtered["dataset"] == dataset) & (filtered["shots"] == shots)]
            rows = twins.set_index("method")
            named = [_filtered(m, rows.loc[m]) for m in order if m in rows.index]
            if named:
                text += " Filters: " + "; ".join(named) + "."
        rising = late[(late["dataset"] == dataset) & (late["shots"] == shots)]
        names = [m for m in order if m in set(rising["method"])]
        if names:
            text += f" Still improving at the last step: {', '.join(names)}."
        found.append(text)
    return found
