"""The report's verdict (dafusion.reporting.verdict) on hand-made tables whose winner, paired
differences and unfinished cells are known."""

from __future__ import annotations

import pandas as pd
import pytest

from dafusion.reporting.aggregate import best_steps, paired_deltas, summarize, validation_curves
from dafusion.reporting.verdict import unfinished, verdict

METHODS = ["baseline", "real-guidance", "da-fusion"]


def _runs(values: dict[tuple[str, int, int], list[float]]) -> pd.DataFrame:
    """Classifier runs of one dataset: (method, seed, shots) -> val accuracy at steps 100,
    200, 300 (test = val), as the classifier's run tables hold them."""
    rows = []
    for (method, seed, shots), curve in values.items():
        for step, value in zip((100, 200, 300), curve, strict=True):
            for split in ("val", "test"):
                rows.append(
                    {"dataset": "digits", "method": method, "seed": seed, "shots": shots,
                     "step": step, "split": split, "metric": "mean_class_accuracy",
                     "value": value}
                )  # fmt: skip
    return pd.DataFrame(rows)


def _tables(values):
    runs = _runs(values)
    best = best_steps(runs)
    return (
        summarize(best),
        paired_deltas(best, "baseline"),
        unfinished(best, validation_curves(runs, "mean_class_accuracy")),
    )


# At 4 shots Real Guidance beats the baseline by 0.10 on both seeds (its interval excludes
# zero) and is still rising at step 300; DA-Fusion is 0.04 above on one seed and 0.02 below
# on the other (the interval includes zero). At 1 shot the baseline is best and DA-Fusion is
# 0.2 below on both seeds.
CASE = {
    ("baseline", 0, 4): [0.5, 0.7, 0.6],
    ("baseline", 1, 4): [0.5, 0.6, 0.5],
    ("real-guidance", 0, 4): [0.5, 0.6, 0.8],
    ("real-guidance", 1, 4): [0.5, 0.55, 0.7],
    ("da-fusion", 0, 4): [0.5, 0.74, 0.6],
    ("da-fusion", 1, 4): [0.5, 0.58, 0.5],
    ("baseline", 0, 1): [0.4, 0.3, 0.3],
    ("baseline", 1, 1): [0.6, 0.3, 0.3],
    ("da-fusion", 0, 1): [0.2, 0.1, 0.1],
    ("da-fusion", 1, 1): [0.4, 0.1, 0.1],
}


def test_the_verdict_names_the_winner_each_difference_and_its_interval():
    summary, paired, late = _tables(CASE)
    one, four = verdict(summary, paired, late, METHODS, "baseline")
    assert one.startswith("digits, 1 example per class: baseline is best (0.50).")
    assert "da-fusion \u22120.20 ± 0.00 (below the baseline: the interval excludes zero)" in one
    assert "Still improving" not in one  # every 1-shot run peaked at its first step
    assert four.startswith("digits, 4 examples per class: real-guidance is best (0.75).")
    assert "Against the baseline (0.65): real-guidance +0.10 ± 0.00 (above the baseline" in four
    assert "da-fusion +0.01 ± 0.03 (the interval includes zero)" in four
    assert four.endswith("Still improving at the last step: real-guidance.")


def test_methods_with_the_same_mean_tie():
    case = {("baseline", 0, 4): [0.5, 0.6, 0.5], ("da-fusion", 0, 4): [0.6, 0.5, 0.5]}
    summary, paired, late = _tables(case)
    (text,) = verdict(summary, paired, late, METHODS, "baseline")
    assert text.startswith("digits, 4 examples per class: baseline and da-fusion tie for best")


def test_a_method_above_the_baseline_on_every_seed_is_named_best_and_its_interval_excludes_zero():
    case = {
        ("baseline", 0, 4): [0.5, 0.6, 0.6],
        ("baseline", 1, 4): [0.4, 0.5, 0.5],
        ("real-guidance", 0, 4): [0.6, 0.72, 0.7],
        ("real-guidance", 1, 4): [0.5, 0.58, 0.55],
    }
    summary, paired, late = _tables(case)
    (text,) = verdict(summary, paired, late, METHODS, "baseline")
    assert text.startswith("digits, 4 examples per class: real-guidance is best (0.65).")
    assert "real-guidance +0.10 ± 0.02 (above the baseline: the interval excludes zero)" in text
    assert "Still improving" not in text


def test_unfinished_cells_are_those_whose_selected_step_is_the_last():
    _, _, late = _tables(CASE)
    assert late.to_dict("records") == [
        {"dataset": "digits", "method": "real-guidance", "shots": 4, "last_step": 300}
    ]


def test_one_seed_has_no_interval_and_no_baseline_means_no_differences():
    case = {("baseline", 0, 4): [0.5, 0.6, 0.7], ("da-fusion", 0, 4): [0.5, 0.8, 0.7]}
    summary, paired, late = _tables(case)
    (text,) = verdict(summary, paired, late, METHODS, "baseline")
    assert "da-fusion +0.10 ± 0.00 (one seed: no interval)" in text
    assert text.endswith("Still improving at the last step: baseline.")
    (alone,) = verdict(
        summary[summary["method"] != "baseline"], paired.iloc[:0], late, METHODS, "baseline"
    )
    assert alone == "digits, 4 examples per class: da-fusion is best (0.80)."


@pytest.mark.parametrize(("shots", "words"), [(1, "1 example per class"), ("all", "every")])
def test_shot_counts_in_words(shots, words):
    summary = pd.DataFrame(
        [{"dataset": "d", "method": "baseline", "shots": shots, "accuracy_mean": 0.5}]
    )
    (text,) = verdict(summary, summary.iloc[:0], summary.iloc[:0], METHODS, "baseline")
    assert words in text


def test_the_report_shows_findings_as_a_list_first(tmp_path):
    from dafusion.reporting.report import Findings, Section, Table, write_report

    page = tmp_path / "report.html"
    sections = [
        Section("Verdict", [Findings(["digits: a < b.", "second."])]),
        Section("Accuracy", [Table(pd.DataFrame({"a": [1, 2]}), "t", "c")]),
    ]
    write_report(page, "results", sections)
    html = page.read_text()
    assert '<ul class="findings"><li>digits: a &lt; b.</li><li>second.</li></ul>' in html
    assert html.index('id="verdict"') < html.index('id="accuracy"')
