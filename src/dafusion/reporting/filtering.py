"""What the filters of a dataset keep (docs/filtering.md), the `filtering` job: per class,
the share of every synthetic method's images each filter keeps and the real images it
empties, and a figure of the images it keeps and drops. The report summarizes the table
and sets each filtered method's accuracy beside its unfiltered twin's
(`filter_summary`).

The selections are the runs' own (`stages.mixing.select_variants`, the same function the
train jobs call): a filter applied to its own method's set, with its M, keeps exactly the
images that method's runs draw. Applied to another method's set (with that method's M),
it says what the filter would keep there: how much of each method's images look like
their class to the scorer. Only what the workflow wrote is read: the sets' indices, shards
and scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..settings import FilterSettings
from ..stages.mixing import select_variants
from ..stages.scoring import SCORERS, read_scores
from .gallery import read_synthetic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# A set of one split: its index file and the M a method's runs read of it.
SetCell = tuple[str, int]
# Split -> set, per method; split -> scores file, per method, per scorer.
Sets = Mapping[str, Mapping[tuple[int, int | str], SetCell]]
Scores = Mapping[str, Mapping[str, Mapping[tuple[int, int | str], str]]]
# The keep-rate table's columns.
COLUMNS = [
    "dataset", "filter", "criteria", "method", "own", "seed", "shots", "label", "class_name",
    "candidates", "kept", "keep_rate", "sources", "emptied",
]  # fmt: skip


class _Reader:
    """Each index and scores file read once, however many filters read it."""

    def __init__(self) -> None:
        self.frames: dict[tuple[str, str], pd.DataFrame] = {}

    def index(self, path: str) -> pd.DataFrame:
        if (path, "") not in self.frames:
            self.frames[path, ""] = pd.read_parquet(path)
        return self.frames[path, ""]

    def scores(self, path: str, scorer: str) -> pd.DataFrame:
        if (path, scorer) not in self.frames:
            self.frames[path, scorer] = read_scores(path, scorer)
        return self.frames[path, scorer]


def keep_rates(
    sets: Sets,
    scores: Scores,
    filters: Mapping[str, Mapping | FilterSettings],
    own: Mapping[str, str],
    dataset: str = "",
) -> pd.DataFrame:
    """Per filter (named by its method), per method of `sets` whose images it is applied to
    (at that method's M; one method per set and M), per split (seed, shots) and class: the
    images the runs would draw without the filter (`candidates`), those it keeps and their
    ratio (`keep_rate`), the real images with candidates (`sources`) and those it leaves
    with none (`emptied`, drawn as real). `own` (filter -> method of `sets`) marks the
    rows of the filter's own images: exactly what its runs draw."""
    reader = _Reader()
    parts = []
    for name, value in filters.items():
        spec = value if isinstance(value, FilterSettings) else FilterSettings.from_config(value)
        for method, cells in sets.items():
            for (seed, shots), (index_path, size) in cells.items():
                table = reader.scores(scores[spec.by][method][seed, shots], spec.by)
                selection = select_variants(reader.index(index_path), size, spec, table)
                per = selection.per_class()
                sources = selection.candidates.groupby("label")["source_key"].nunique()
                per["sources"] = per["label"].map(sources).astype("int64")
                per.insert(0, "shots", shots)
                per.insert(0, "seed", seed)
                per.insert(0, "own", own[name] == method)
                per.insert(0, "method", method)
                per.insert(0, "criteria", spec.describe())
                per.insert(0, "filter", name)
                per.insert(0, "dataset", dataset)
                parts.append(per)
    if not parts:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(parts, ignore_index=True)[COLUMNS]


def _examples(
    rows: pd.DataFrame, scores: pd.DataFrame, column: str, labels: Sequence[int]
) -> dict[int, tuple[str, str, float]]:
    """Per label, the first image (by key) of `rows`: (key, class name, score)."""
    shown = rows.merge(scores[["key", column]], on="key").sort_values("key")
    shown = shown[shown["label"].isin(labels)].groupby("label").head(1)
    return {
        int(r.label): (str(r.key), str(r.class_name), float(getattr(r, column)))
        for r in shown.itertuples(index=False)
    }


def filter_figure(
    sets: Sets,
    scores: Scores,
    filters: Mapping[str, Mapping | FilterSettings],
    own: Mapping[str, str],
    cell: tuple[int, int | str],
    classes: int = 6,
) -> Figure:
    """Per filtered method, a row of images its filter keeps and a row of images it drops
    from its own images at split `cell` (those of the method `own` names for it), one
    column per class (the `classes` lowest labels), each the class's first such image by
    key, titled with its class and score; a class with no image of a row says so. The
    images come from the set's shards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .gallery import CELL_INCHES, FONTSIZE, TITLE_INCHES, _show

    reader = _Reader()
    panels = []
    for name, value in filters.items():
        spec = value if isinstance(value, FilterSettings) else FilterSettings.from_config(value)
        index_path, size = sets[own[name]][cell]
        column = SCORERS[spec.by].rank_by
        table = reader.scores(scores[spec.by][own[name]][cell], spec.by)
        selection = select_variants(reader.index(index_path), size, spec, table)
        kept = set(selection.rows["key"])
        dropped = selection.candidates[~selection.candidates["key"].isin(kept)]
        labels = sorted(selection.candidates["label"].unique())[:classes]
        rows = {
            "kept": _examples(selection.rows, table, column, labels),
            "dropped": _examples(dropped, table, column, labels),
        }
        keys = [key for row in rows.values() for key, _, _ in row.values()]
        images = read_synthetic(reader.index(index_path), Path(index_path).parent, keys)
        panels.append((name, spec, labels, rows, images, column))
    ncols = max([len(labels) for _, _, labels, _, _, _ in panels] or [1])
    nrows = 2 * max(len(panels), 1)
    fig, axes = plt.subplots(
        nrows, ncols, squeeze=False,
        figsize=(CELL_INCHES * ncols + 1.2, (CELL_INCHES + TITLE_INCHES) * nrows),
    )  # fmt: skip
    for ax in axes.flat:
        ax.axis("off")
    for p, (name, _, labels, rows, images, column) in enumerate(panels):
        for r, (which, examples) in enumerate(rows.items()):
            row = axes[2 * p + r]
            for c, label in enumerate(labels):
                ax = row[c]
                if label not in examples:
                    ax.text(0.5, 0.5, f"none {which}", ha="center", va="center", fontsize=FONTSIZE)
                    continue
                key, class_name, score = examples[label]
                ax.axis("on")
                _show(ax, images[key], f"{class_name}\n{column} {score:.2f}")
            first = row[0]  # carries the row's label, with or without an image
            if not (labels and labels[0] in examples):
                first.axis("on")
                for spine in first.spines.values():
                    spine.set_visible(False)
                first.set_xticks([])
                first.set_yticks([])
            first.set_ylabel(f"{name}\n{which}", fontsize=FONTSIZE)
    fig.suptitle(
        "; ".join(f"{name}: {spec.describe()}" for name, spec, *_ in panels), fontsize=FONTSIZE
    )
    fig.tight_layout()
    return fig
