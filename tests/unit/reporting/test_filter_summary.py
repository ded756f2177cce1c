"""What a dataset's filters keep (dafusion.reporting.filtering, the `filtering` job), and how the
report and the verdict show it (dafusion.reporting.filter_summary, report, verdict)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dafusion import pipeline
from dafusion.data.images import encode_png
from dafusion.data.shards import write_shard
from dafusion.jobs.io import write_parquet
from dafusion.reporting.filter_summary import filter_differences, keep_rate_summary
from dafusion.reporting.filtering import COLUMNS, filter_figure, keep_rates
from dafusion.reporting.report import _filter_items
from dafusion.reporting.verdict import verdict
from dafusion.stages.mixing import select_variants
from dafusion.stages.scoring import write_scores
from dafusion.stages.synthetic import INDEX_SCHEMA

META = {
    "set": "s", "strength": 0.5, "prompt": "p", "guidance_scale": 7.5, "scheduler": "ddim",
    "steps": 5, "seed": 0, "model_id": "tiny", "token_hash": "", "erasure": "",
}  # fmt: skip
NAMES = ["zero", "one"]
# (source, j) -> the classifier's confidence; source "b1" keeps none of its first two
CONFIDENCE = {
    ("a0", 0): 0.9, ("a0", 1): 0.2, ("a0", 2): 0.9,
    ("a1", 0): 0.6, ("a1", 1): 0.7, ("a1", 2): 0.1,
    ("b0", 0): 0.4, ("b0", 1): 0.8, ("b0", 2): 0.9,
    ("b1", 0): 0.3, ("b1", 1): 0.1, ("b1", 2): 0.9,
}  # fmt: skip
FILTER = {"by": "classifier", "min_confidence": 0.5}


def write_set(folder: Path, dropped: set[str] = frozenset()) -> Path:
    """Two classes (sources a* and b*) of two real images, three variants each; `dropped`
    keys were dropped by the safety checker (no shard, no score). Its classifier scores
    (CONFIDENCE) lie beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    samples, rows = [], []
    rng = np.random.default_rng(0)
    for (source, j), _ in CONFIDENCE.items():
        label = 0 if source.startswith("a") else 1
        key = f"{source}-{j:03d}"
        meta = {**META, "source_key": source, "j": j, "label": label, "class_name": NAMES[label]}
        if key in dropped:
            rows.append({"key": key, **meta, "shard": None, "dropped": True})
            continue
        image = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        samples.append({"key": key, "image": encode_png(image), "label": label, "meta": meta})
    written = [
        {**r, "dropped": False} for r in write_shard(folder, "shard-000000.tar", samples, "png")
    ]
    write_parquet(
        pd.DataFrame(written + rows).sort_values("key"), folder / "index.parquet", INDEX_SCHEMA
    )
    scores = pd.DataFrame(
        [
            {"key": f"{s}-{j:03d}", "confidence": c, "top1": 0}
            for (s, j), c in CONFIDENCE.items()
            if f"{s}-{j:03d}" not in dropped
        ]
    )
    write_scores(scores, folder / "scores-classifier.parquet", "classifier")
    return folder / "index.parquet"


@pytest.fixture
def sets(tmp_path):
    """Two methods' sets of one split: `daf` (M = 2) and `rg` (M = 3, a0-000 dropped)."""
    daf = write_set(tmp_path / "daf")
    rg = write_set(tmp_path / "rg", dropped={"a0-000"})
    cell = (0, 2)
    sets = {"daf": {cell: (str(daf), 2)}, "rg": {cell: (str(rg), 3)}}
    scores = {
        "classifier": {
            m: {cell: str(Path(path).parent / "scores-classifier.parquet")}
            for m, path in (("daf", daf), ("rg", rg))
        }
    }
    return sets, scores, cell


def test_keep_rates_count_what_the_runs_draw(sets):
    sets, scores, cell = sets
    rates = keep_rates(sets, scores, {"daf-f": FILTER}, {"daf-f": "daf"}, "digits")
    assert list(rates.columns) == COLUMNS
    own = rates[rates["own"]].set_index("class_name")
    # M = 2: a0 keeps 1 of 2, a1 2 of 2; b0 1 of 2, b1 none (drawn as real)
    assert own.loc["zero", ["candidates", "kept", "sources", "emptied"]].tolist() == [4, 3, 2, 0]
    assert own.loc["one", ["candidates", "kept", "sources", "emptied"]].tolist() == [4, 1, 2, 1]
    assert own.loc["one", "keep_rate"] == pytest.approx(0.25)
    # exactly the run's selection (mixing.select_variants, as pipeline.train calls it)
    selection = select_variants(sets["daf"][cell][0], 2, FILTER)
    assert own["kept"].sum() == len(selection.rows) and len(selection.emptied) == 1
    # the same filter on another method's set, at that method's M, less its dropped image
    other = rates[~rates["own"]].set_index("class_name")
    assert other.loc["zero", ["candidates", "kept"]].tolist() == [5, 3]
    assert set(rates["criteria"]) == {"classifier: confidence >= 0.5"}


def test_the_summary_is_a_ratio_of_sums_and_the_figure_shows_kept_and_dropped(sets):
    sets, scores, cell = sets
    rates = keep_rates(sets, scores, {"daf-f": FILTER}, {"daf-f": "daf"}, "digits")
    twice = pd.concat([rates, rates.assign(seed=1, kept=rates["candidates"])])
    summary = keep_rate_summary(twice).set_index(["method", "class_name"])
    assert summary.loc[("daf", "one"), "keep_rate"] == pytest.approx((1 + 4) / (4 + 4))
    figure = filter_figure(sets, scores, {"daf-f": FILTER}, {"daf-f": "daf"}, cell, classes=2)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == [
        "zero\nconfidence 0.90", "one\nconfidence 0.80",  # kept: the first by key
        "zero\nconfidence 0.20", "one\nconfidence 0.40",  # dropped
    ]  # fmt: skip
    assert [ax.get_ylabel() for ax in figure.axes[::2]] == ["daf-f\nkept", "daf-f\ndropped"]


def test_the_filtering_job_writes_its_table_and_figure(sets, tmp_path):
    sets, scores, cell = sets
    table, figure = tmp_path / "filtering-digits.csv", tmp_path / "filtering-digits.png"
    pipeline.filtering(
        [sets["daf"][cell][0], sets["rg"][cell][0]],
        [scores["classifier"]["daf"][cell], scores["classifier"]["rg"][cell]],
        filters={"daf-f": FILTER}, own={"daf-f": "daf"}, methods={"daf": 2, "rg": 3},
        cells=[list(cell)], scorers=["classifier"], shown=list(cell), table=str(table),
        figure=str(figure), dataset="digits",
    )  # fmt: skip
    written = pd.read_csv(table)
    assert len(written) == 2 * 2 and set(written["dataset"]) == {"digits"}
    assert figure.stat().st_size > 1000 and figure.with_suffix(".pdf").is_file()


def _runs(values: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    """The aggregate's runs table: (method, shots) -> a value per seed."""
    return pd.DataFrame(
        [
            {"dataset": "digits", "method": m, "seed": seed, "shots": shots, "value": v}
            for (m, shots), per_seed in values.items()
            for seed, v in enumerate(per_seed)
        ]
    )


def test_a_filtered_method_is_paired_with_its_twin_by_seed():
    runs = _runs({("daf", 1): [0.5, 0.6, 0.7], ("daf-f", 1): [0.6, 0.6, 0.9]})
    compared = filter_differences(runs, {"digits": {"daf-f": "daf"}})
    (row,) = compared.to_dict("records")
    assert row["twin"] == "daf" and row["num_pairs"] == 3
    assert row["filtered"] == pytest.approx(0.7) and row["unfiltered"] == pytest.approx(0.6)
    deltas = np.array([0.1, 0.0, 0.2])
    half = deltas.std(ddof=1) / np.sqrt(3)
    assert row["delta_mean"] == pytest.approx(0.1)
    assert (row["ci68_high"] - row["ci68_low"]) / 2 == pytest.approx(half)
    assert filter_differences(runs, {}).empty


def test_the_verdict_and_the_report_set_a_filter_beside_its_twin(sets, tmp_path):
    sets, scores, _ = sets
    runs = _runs({("daf", 1): [0.5, 0.6, 0.7], ("daf-f", 1): [0.6, 0.6, 0.9]})
    compared = filter_differences(runs, {"digits": {"daf-f": "daf"}})
    summary = pd.DataFrame(
        {"dataset": "digits", "method": ["daf", "daf-f"], "shots": 1, "accuracy_mean": [0.6, 0.7]}
    )
    empty = pd.DataFrame(columns=["dataset", "method", "shots"])
    (text,) = verdict(summary, empty, empty, ["daf", "daf-f"], "baseline", filtered=compared)
    assert (
        "Filters: daf-f +0.10 ± 0.06 against daf unfiltered (the filter helps: the interval "
        "excludes zero)." in text
    )
    table = tmp_path / "filtering-digits.csv"
    keep_rates(sets, scores, {"daf-f": FILTER}, {"daf-f": "daf"}, "digits").to_csv(table)
    figure = tmp_path / "filtering-digits.png"
    Image.new("RGB", (4, 4)).save(figure)
    filters = {
        "digits": {
            "daf-f": {"filter": "classifier: confidence >= 0.5", "twin": "daf"},
            "rg-f": {"filter": "clip: top 70% per class", "twin": None},
        }
    }
    items, _ = _filter_items(
        runs, [str(table)], [str(figure)], filters, "accuracy", {"filtering": "caption"}
    )
    titles = [item.title for item in items]
    assert titles == [
        "Accuracy with and without the filter",
        "Share of images each filter keeps, per class",
        "Real images the filter leaves without a variant",
        "Kept and dropped: digits",
    ]
    side = items[0].frame
    assert side.loc[0, "filtered"] == "0.700 ± 0.100" and side.loc[0, "unfiltered twin"] == "daf"
    assert "Without an unfiltered twin in this config: rg-f (digits)." in items[0].caption
    shares = items[1].frame
    assert list(shares.columns) == ["daf", "rg"]
    assert shares.loc[("digits", "daf-f (classifier: confidence >= 0.5)", "one"), "daf"] == 0.25
    emptied = items[2].frame.set_index("filter")
    assert emptied.loc["daf-f", ["real images with variants", "drawn as real"]].tolist() == [4, 1]
    assert _filter_items(runs, [], [], {}, "accuracy", {})[0] == []  # no filter: no section
