import pandas as pd
import pytest

from dafusion.aggregate import accuracy_figure, best_steps, plot, summarize


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


def test_best_step_per_run_and_68_interval(tmp_path):
    best = best_steps(_runs())
    assert best.set_index("seed")["step"].to_dict() == {0: 400, 1: 600}
    summary = summarize(best)
    row = summary.iloc[0]
    assert row["accuracy_mean"] == pytest.approx(0.7)
    assert row["ci68_high"] - row["accuracy_mean"] == pytest.approx(0.1)  # std 0.1414 / sqrt(2)
    assert row["num_seeds"] == 2
    plot(summary, tmp_path / "fig.png", ["m"])
    assert (tmp_path / "fig.png").stat().st_size > 1000


def test_select_on_val_report_on_test():
    runs = _runs()
    test = runs[runs["metric"] == "accuracy"].assign(split="test")
    test["value"] = test["value"] / 2
    runs = pd.concat([runs, test])
    best = best_steps(runs, report_split="test")
    assert best.set_index("seed")["step"].to_dict() == {0: 400, 1: 600}  # chosen on val
    assert best.set_index("seed")["value"].to_dict() == pytest.approx({0: 0.3, 1: 0.4})
    assert set(best["split"]) == {"test"}
    original = best_steps(runs, report_split="val")
    assert original.set_index("seed")["value"].to_dict() == pytest.approx({0: 0.6, 1: 0.8})
    # A dataset without a test split reports val.
    assert set(best_steps(_runs(), report_split="test")["split"]) == {"val"}
    assert summarize(best)["split"].tolist() == ["test"]


def test_figure_names_the_reported_split():
    runs = _runs()
    test = runs[runs["metric"] == "accuracy"].assign(split="test")
    summary = summarize(best_steps(pd.concat([runs, test]), report_split="test"))
    assert accuracy_figure(summary, ["m"]).axes[0].get_ylabel() == "accuracy (test)"
    summary = summarize(best_steps(runs, report_split="test"))  # no test split: val
    assert accuracy_figure(summary, ["m"]).axes[0].get_ylabel() == "accuracy (val)"
