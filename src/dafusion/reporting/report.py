"""One self-contained HTML report: figures embedded as data URIs, tables as HTML, no scripts.

The page must open anywhere (an e-mail attachment, an offline laptop, a CI artifact), so it
carries everything inline and references nothing outside itself. `results_report` lays out
the workflow's results page (`pipeline.report`).
"""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..jobs.io import atomic_path

MAX_FIGURE_WIDTH = 900
MISSING_CELL = "\u2014"  # em dash: a gap in a pivot table, not an empty string

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; line-height: 1.5;
  color: #1a1a1a; background: #fff; max-width: 1000px; margin: 0 auto; padding: 1rem 1.5rem; }
header { border-bottom: 1px solid #ddd; margin-bottom: 1rem; }
h1 { margin-bottom: 0.25rem; }
h2 { border-bottom: 1px solid #eee; padding-bottom: 0.2rem; margin-top: 2rem; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 0.1rem 1rem;
  font-size: 0.9rem; color: #444; }
dl.meta dt { font-weight: 600; }
dl.meta dd { margin: 0; font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
nav ol { padding-left: 1.5rem; }
a { color: #0072B2; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9rem; color: #333; text-align: left; padding: 0.3rem 0; }
.table-wrap { overflow-x: auto; margin: 0.3rem 0 0; }
table { border-collapse: collapse; font-size: 0.9rem; max-width: 100%; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; vertical-align: top;
  overflow-wrap: anywhere; }
th { background: #f5f5f5; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap;
  overflow-wrap: normal; }
figcaption .shared { color: #555; }
.findings li { margin: 0.4rem 0; }
.banner { border: 2px solid #D55E00; background: #fff4ec; padding: 0.6rem 1rem;
  margin: 1rem 0; font-weight: 600; }
pre { background: #f7f7f7; border: 1px solid #eee; padding: 0.6rem; font-size: 0.8rem;
  overflow-x: auto; }
"""


@dataclass(frozen=True)
class Figure:
    """A PNG file shown at its own size (scaled down to fit the page)."""

    path: Path
    title: str
    caption: str


@dataclass(frozen=True)
class Table:
    """A data frame shown as an HTML table; floats formatted with `float_format`."""

    frame: pd.DataFrame
    title: str
    caption: str
    float_format: str = "{:.3f}"


@dataclass(frozen=True)
class Preformatted:
    """Text shown as written (a config file), monospaced, with a title and caption."""

    text: str
    title: str
    caption: str


@dataclass(frozen=True)
class Findings:
    """Sentences written from the results (`verdict`), shown as a list."""

    lines: Sequence[str]


@dataclass(frozen=True)
class Section:
    """A titled part of the report, listed in the table of contents."""

    title: str
    items: Sequence[Figure | Table | Preformatted | Findings]
    intro: str = ""


def write_report(
    path: str | Path,
    title: str,
    sections: Sequence[Section],
    meta: Mapping[str, str] | None = None,
    banner: str | None = None,
) -> None:
    """Write `sections` as one self-contained HTML page at `path`, atomically. Sections
    without items are left out (a reader looks for nothing that is not there); `banner`,
    when given, is a warning shown above everything but the title."""
    sections = [section for section in sections if section.items]
    ids = section_ids([section.title for section in sections])
    body = [_render_header(title, meta or {})]
    if banner:
        body.append(f'<p class="banner" role="alert">{_esc(banner)}</p>')
    body.append(_render_toc(sections, ids))
    body += [_render_section(section, id_) for section, id_ in zip(sections, ids, strict=True)]
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n</head>\n"
        "<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )
    _write_atomic(Path(path), page)


def section_ids(titles: Sequence[str]) -> list[str]:
    """Unique anchors from titles ("Main results" -> "main-results", then "main-results-2")."""
    used: set[str] = set()
    ids = []
    for title in titles:
        base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
        candidate, n = base, 1
        while candidate in used:
            n += 1
            candidate = f"{base}-{n}"
        used.add(candidate)
        ids.append(candidate)
    return ids


def _esc(text: object) -> str:
    """HTML-escape any text, quotes included (it also goes into attributes)."""
    return html.escape(str(text), quote=True)


def _render_header(title: str, meta: Mapping[str, str]) -> str:
    rows = "".join(f"<dt>{_esc(key)}</dt><dd>{_esc(value)}</dd>" for key, value in meta.items())
    listing = f'\n<dl class="meta">{rows}</dl>' if rows else ""
    return f"<header>\n<h1>{_esc(title)}</h1>{listing}\n</header>"


def _render_toc(sections: Sequence[Section], ids: Sequence[str]) -> str:
    links = "".join(
        f'<li><a href="#{id_}">{_esc(section.title)}</a></li>'
        for section, id_ in zip(sections, ids, strict=True)
    )
    return f"<nav>\n<h2>Contents</h2>\n<ol>{links}</ol>\n</nav>"


def _render_section(section: Section, id_: str) -> str:
    parts = [f'<section id="{id_}">', f"<h2>{_esc(section.title)}</h2>"]
    parts += [f"<p>{_esc(p.strip())}</p>" for p in re.split(r"\n\s*\n", section.intro) if p.strip()]
    for item in section.items:
        if isinstance(item, Figure):
            parts.append(_render_figure(item, section.title))
        elif isinstance(item, Preformatted):
            parts.append(_render_preformatted(item))
        elif isinstance(item, Findings):
            items = "".join(f"<li>{_esc(line)}</li>" for line in item.lines)
            parts.append(f'<ul class="findings">{items}</ul>')
        else:
            parts.append(_render_table(item))
    parts.append("</section>")
    return "\n".join(parts)


def _render_figure(figure: Figure, section_title: str) -> str:
    """The PNG inline as base64, with its real size (at most MAX_FIGURE_WIDTH wide)."""
    path = Path(figure.path)
    if not path.is_file():
        raise FileNotFoundError(f"figure {str(path)!r} of section {section_title!r} does not exist")
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        if image.format != "PNG":
            raise ValueError(f"figure {str(path)!r} is {image.format}, not PNG")
        width, height = image.size
    if width > MAX_FIGURE_WIDTH:
        width, height = MAX_FIGURE_WIDTH, max(1, round(height * MAX_FIGURE_WIDTH / width))
    payload = base64.b64encode(data).decode("ascii")
    return (
        f'<figure>\n<img src="data:image/png;base64,{payload}" alt="{_esc(figure.title)}" '
        f'width="{width}" height="{height}">\n'
        f"<figcaption><b>{_esc(figure.title)}</b> {_esc(figure.caption)}</figcaption>\n</figure>"
    )


def _render_preformatted(item: Preformatted) -> str:
    return (
        f"<figure>\n<figcaption><b>{_esc(item.title)}</b> {_esc(item.caption)}</figcaption>\n"
        f"<pre>{_esc(item.text)}</pre>\n</figure>"
    )


def _render_table(table: Table) -> str:
    """A plain HTML table; a meaningful index (not 0..n-1) becomes leading columns. A label
    column with the same value in every row of a table of several rows is left out and
    named in the caption instead ("split: val; metric: mean_class_accuracy";
    `constant_columns`): the columns that differ keep the page's width, and the reader is
    told once what every row shares."""
    frame = table.frame
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index()
    shared = constant_columns(frame)
    named = "; ".join(
        f"{_column_label(frame.columns[i])}: {_cell_text(frame.iat[0, i], table.float_format)[0]}"
        for i in shared
    )
    frame = frame.iloc[:, [i for i in range(frame.shape[1]) if i not in shared]]
    header = "".join(f"<th>{_esc(_column_label(column))}</th>" for column in frame.columns)
    rows = []
    for values in frame.itertuples(index=False, name=None):
        cells = "".join(_render_cell(value, table.float_format) for value in values)
        rows.append(f"<tr>{cells}</tr>")
    every_row = f' <span class="shared">In every row: {_esc(named)}.</span>' if named else ""
    # The caption above the table at the page's width (a <caption> takes the table's width:
    # squeezed over a narrow table, scrolled away beside a wide one).
    return (
        f'<figure class="table">\n'
        f"<figcaption><b>{_esc(table.title)}</b> {_esc(table.caption)}{every_row}</figcaption>\n"
        f'<div class="table-wrap">\n<table>\n'
        f"<thead><tr>{header}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n"
        "</table>\n</div>\n</figure>"
    )


def constant_columns(frame: pd.DataFrame) -> list[int]:
    """Positions of the label columns that hold one value in every row (missing values count
    as one value), when `frame` has several rows and not every column is so: a single row,
    or rows that are all alike, keep every column. Float columns are measurements, not
    labels: they stay, equal or not (a method whose accuracies tie keeps its column)."""
    if len(frame) < 2:
        return []
    constant = []
    for i in range(frame.shape[1]):
        values = frame.iloc[:, i]
        if pd.api.types.is_float_dtype(values.dtype):
            continue
        try:
            distinct = values.nunique(dropna=False)
        except TypeError:  # unhashable cells (lists): compare what the reader would see
            distinct = values.map(str).nunique(dropna=False)
        if distinct == 1:
            constant.append(i)
    return constant if len(constant) < frame.shape[1] else []


def _column_label(column: object) -> str:
    """Flatten MultiIndex columns ("accuracy", "mean") to "accuracy / mean"."""
    if isinstance(column, tuple):
        return " / ".join(str(part) for part in column if str(part))
    return str(column)


def _cell_text(value: object, float_format: str) -> tuple[str, bool]:
    """A cell's text (floats with `float_format`, gaps as a dash) and whether it is a
    number."""
    if value is None or value is pd.NA or value is pd.NaT:
        return MISSING_CELL, False
    if isinstance(value, (bool, np.bool_)):
        return str(value), False
    if isinstance(value, numbers.Integral):
        return str(int(value)), True
    if isinstance(value, numbers.Real):
        if math.isnan(value):
            return MISSING_CELL, False
        return float_format.format(value), True
    return str(value), False


def _render_cell(value: object, float_format: str) -> str:
    """Numbers right-aligned and never wrapped (floats with `float_format`), gaps as a dash,
    the rest as text that wraps where the table would not fit."""
    text, number = _cell_text(value, float_format)
    return f'<td class="num">{_esc(text)}</td>' if number else f"<td>{_esc(text)}</td>"


def in_label_order(pivot: pd.DataFrame, classes: pd.DataFrame) -> pd.DataFrame:
    """A pivot of the per-class table indexed by (dataset, shots, class_name), its classes
    in each dataset's label order: the order they first appear in `classes` (the per-class
    table, which `aggregate.per_class` writes in label order), not alphabetical."""
    first = dict.fromkeys(zip(classes["dataset"], classes["class_name"], strict=True))
    rank = {key: n for n, key in enumerate(first)}
    groups = {key: n for n, key in enumerate(dict.fromkeys(k[:2] for k in pivot.index))}
    order = sorted(pivot.index, key=lambda k: (groups[k[:2]], rank[k[0], k[2]]))
    return pivot.reindex(pd.MultiIndex.from_tuples(order, names=pivot.index.names))


def _filter_items(
    runs: pd.DataFrame,
    tables: Sequence[str],
    figures: Sequence[str],
    filters: Mapping[str, Mapping[str, Mapping]],
    values: str,
    captions: Mapping[str, str],
) -> tuple[list[Figure | Table], pd.DataFrame]:
    """The report's Filters section: accuracy with and without each filter (beside its
    unfiltered twin, where the config has one), what each filter keeps per class, the real
    images it leaves without a variant, and its kept and dropped images; and the
    comparison table, for the verdict."""
    from .filter_summary import filter_differences, keep_rate_summary

    twins = {
        dataset: {m: spec["twin"] for m, spec in methods.items() if spec.get("twin")}
        for dataset, methods in filters.items()
    }
    compared = filter_differences(runs, twins)
    if not tables:
        return [], compared
    items: list[Figure | Table] = []
    lonely = [
        f"{m} ({dataset})"
        for dataset, methods in filters.items()
        for m, spec in methods.items()
        if not spec.get("twin")
    ]
    if len(compared) or lonely:

        def interval(mean: pd.Series, se: pd.Series) -> pd.Series:
            return mean.map("{:.3f}".format) + " ± " + se.map("{:.3f}".format)

        words = {
            (dataset, m): spec["filter"]
            for dataset, methods in filters.items()
            for m, spec in methods.items()
        }
        side = pd.DataFrame(
            {
                "dataset": compared["dataset"],
                "method": compared["method"],
                "filter": [
                    words[d, m]
                    for d, m in zip(compared["dataset"], compared["method"], strict=True)
                ],
                "unfiltered twin": compared["twin"],
                "shots": compared["shots"],
                "filtered": interval(compared["filtered"], compared["filtered_se"]),
                "unfiltered": interval(compared["unfiltered"], compared["unfiltered_se"]),
                "difference": interval(
                    compared["delta_mean"], (compared["ci68_high"] - compared["ci68_low"]) / 2
                ),
                "seeds": compared["num_pairs"],
            }
        )
        none = f" Without an unfiltered twin in this config: {', '.join(lonely)}." if lonely else ""
        items.append(
            Table(side, "Accuracy with and without the filter", f"Values: {values}. Each "
                  "method with a filter beside its unfiltered twin: the method of the config "
                  "that reads the same synthetic set with the same M and classifier settings "
                  "and no filter. Mean ± one standard error over seeds; the difference is "
                  "paired by seed (filtered minus unfiltered)." + none)
        )  # fmt: skip
    rates = pd.concat([pd.read_csv(path) for path in tables], ignore_index=True)
    summary = keep_rate_summary(rates)
    if len(summary):
        own = summary[summary["own"]]
        summary["filter"] = summary["filter"] + " (" + summary["criteria"] + ")"
        pivot = summary.pivot_table(
            index=["dataset", "filter", "label", "class_name"], columns="method",
            values="keep_rate", sort=False,
        ).sort_index(level=["dataset", "filter", "label"], sort_remaining=False)  # fmt: skip
        pivot = pivot.reset_index(level="label", drop=True)
        pivot = pivot[list(dict.fromkeys(summary["method"]))]
        items.append(
            Table(pivot, "Share of images each filter keeps, per class", "Per class, the "
                  "share of each method's synthetic images (the first M variants its runs "
                  "read, over every seed and examples per class) that the filter keeps; one "
                  "column per synthetic set and M, named by a method that reads it (methods "
                  "that read one set with one M draw from the same images). In the column of "
                  "the filtered method's own images, exactly what its runs draw; in the "
                  "others, what the same filter would keep of that method's images. "
                  "tables/filtering-<dataset>.csv holds every split and the counts.")
        )  # fmt: skip
        emptied = own.groupby(["dataset", "filter"], sort=False)[["sources", "emptied"]].sum()
        emptied["share"] = emptied["emptied"] / emptied["sources"].where(emptied["sources"] > 0)
        emptied = emptied.reset_index().rename(
            columns={"sources": "real images with variants", "emptied": "drawn as real"}
        )
        items.append(
            Table(emptied, "Real images the filter leaves without a variant", "Per method "
                  "with a filter, over every seed and examples per class: the real images "
                  "whose variants the filter drops all of. Such an image is drawn as real "
                  "where the run would have drawn a synthetic variant.")
        )  # fmt: skip
    items += [
        Figure(
            Path(p),
            f"Kept and dropped: {Path(p).stem.removeprefix('filtering-')}",
            captions["filtering"],
        )
        for p in figures
    ]
    return items, compared


def _write_atomic(path: Path, text: str) -> None:
    """Readers never see half a page: written beside `path`, then renamed into place."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def results_report(
    tables: Mapping[str, str],
    figures: Mapping[str, str],
    galleries: Sequence[str],
    recognition: Sequence[str],
    curves: Sequence[str],
    erasure: Sequence[str],
    captions: Mapping[str, str],
    benchmarks: str,
    config: Mapping,
    code: str,
    output: str,
    config_output: str,
    filtering: Sequence[str] = (),
    filtering_figures: Sequence[str] = (),
    filters: Mapping[str, Mapping[str, Mapping]] | None = None,
) -> None:
    """The results page (`pipeline.report`): every figure and table of the run, with
    captions, and the provenance that makes it a research record: the resolved config
    (saved as `config_output` too), the model, the code fingerprint and the library
    versions. Its header says what the values are (metric, split, step selection), read
    from the summary table; a banner says so when a random-weight model made the images.
    `filtering`, `filtering_figures`: the `filtering` jobs' keep-rate tables and figures;
    `filters`: per dataset, each filtered method's filter in words and its unfiltered twin
    (`ReportContents.filter_report`)."""
    # Imported here: `write_report` alone needs neither matplotlib (figures) nor the run's
    # records, so a page without the workflow's results imports none of them.
    from ..provenance import library_versions
    from .diagnostics import benchmark_table
    from .figures import measure
    from .record import LIBRARIES, banner, config_text, write_config
    from .verdict import unfinished, verdict

    def figure(name: str, title: str) -> Figure:
        return Figure(Path(figures[name]), title, captions[name])

    def table(name: str, title: str, text: str) -> Table:
        return Table(pd.read_csv(tables[name]), title, text)

    def values_of(name: str, what: str) -> str:
        return f"The values of the figure above, {what}: tables/{name}.csv."

    runs = pd.read_csv(tables["summary"])
    values = ", ".join(measure(runs)) if len(runs) else "none"
    accuracy = [figure("accuracy", "Accuracy against examples per class")]
    accuracy += [
        Figure(
            Path(p),
            f"Recognized by the reference classifier: {Path(p).stem.removeprefix('recognition-')}",
            captions["recognition"],
        )
        for p in recognition
    ]
    accuracy += [
        figure(name, f"Figure {name.removeprefix('figure-')} of the paper")
        for name in figures
        if name.startswith("figure-") and name != "figure-11"
    ]
    accuracy.append(
        table("summary", "Summary", f"Values: {values}. Per dataset, method and examples per "
              "class: the mean over seeds, its 68% interval (± one standard error) and the "
              "number of seeds; the split, metric and selection say what was averaged (columns, "
              "or in the caption where every row has the same). "
              "tables/summary.csv and tables/summary.md hold it.")
    )  # fmt: skip
    classes = pd.read_csv(tables["per_class"])
    by_class = classes.pivot_table(
        index=["dataset", "shots", "class_name"], columns="method", values="accuracy_mean"
    )
    by_class = by_class[[m for m in dict.fromkeys(runs["method"]) if m in by_class.columns]]
    by_class = in_label_order(by_class, classes)
    per_class = [
        figure("per-class", "Accuracy per class"),
        Table(by_class, "Accuracy per class, every shot count", "Mean over seeds of each "
              "class's accuracy at the selected step, one column per method; "
              "tables/per_class.csv adds the 68% intervals and seed counts."),
    ]  # fmt: skip
    run_rows = pd.read_csv(tables["runs"])
    by_run = run_rows.pivot_table(index=["dataset", "method", "seed"], columns="shots",
                                  values="value")  # fmt: skip
    by_run.columns = [f"{shots} per class" for shots in by_run.columns]
    per_run = [
        Table(by_run, "Every run", f"Values: {values}. One row per dataset, method and seed, "
              "one column per number of examples per class: each run's value before any "
              "averaging; tables/runs.csv adds the step it was read at."),
        figure("validation", "Validation curves"),
    ]  # fmt: skip
    late = unfinished(run_rows, pd.read_csv(tables["validation"]))
    if len(late):
        per_run.append(
            Table(late, "Still improving at the last step", "The cells whose selected step is "
                  "the last one evaluated: their validation curves may still be rising, so "
                  "their values say how fast a method fits, not where it ends. More "
                  "classifier.steps would tell.")
        )  # fmt: skip
    scores = [figure("scores", "Overall normalized score")]
    scores.append(table("scores", "Overall normalized score, values", values_of(
        "scores", "with the number of trials")))  # fmt: skip
    if "novelty" in figures:
        scores += [figure("novelty", "Concept novelty")]
        scores.append(table("novelty", "Concept novelty, values", values_of(
            "novelty", "per bin and method")))  # fmt: skip
    paired = (
        [figure("paired", "Paired improvement over the baseline")] if "paired" in figures else []
    )
    paired.append(table("paired", "Paired improvement, values", "Per dataset, method and "
                        "examples per class: the mean paired difference to the baseline "
                        "over seeds, ± one standard error (tables/paired.csv)."))  # fmt: skip
    paired.append(
        table("areas", "Area under the accuracy curve", f"Values: {values}. Per dataset and "
              "method: the area under the value against log2 examples per class (trapezoid "
              "rule) divided by the log2 range, so a mean value over shot counts; mean ± one "
              "standard error over seeds.")
    )  # fmt: skip
    filtered, compared = _filter_items(
        run_rows, filtering, filtering_figures, filters or {}, values, captions
    )
    ablations = [figure("figure-11", "Data balance (Figure 11)")] if "figure-11" in figures else []
    images = [
        Figure(Path(p), f"Gallery: {Path(p).stem.removeprefix('gallery-')}", captions["gallery"])
        for p in galleries
    ]
    diagnostics = [
        Figure(
            Path(p),
            f"Inversion loss: {Path(p).stem.removeprefix('inversion-loss-')}",
            captions["inversion"],
        )
        for p in curves
    ]
    diagnostics += [
        Figure(
            Path(p), f"Erasure check: {Path(p).stem.removeprefix('erasure-')}", captions["erasure"]
        )  # fmt: skip
        for p in erasure
    ]
    root = Path(benchmarks)
    timings = benchmark_table(sorted(root.rglob("*.tsv")), root)
    diagnostics.append(
        Table(
            timings,
            "Time and memory per rule",
            "From Snakemake's benchmark files (results/benchmarks/): jobs per rule, their "
            "summed and longest wall time, the largest peak resident memory (MB) and the "
            "summed CPU time. This report's own job is not counted.",
            float_format="{:.1f}",
        )
    )
    pretrained = config["model"]["pretrained"]
    versions = pd.DataFrame(library_versions(LIBRARIES).items(), columns=["library", "version"])
    provenance = [
        Table(pd.DataFrame({"item": ["model", "code fingerprint"], "value": [pretrained, code]}),
              "Model and code", "The model every generative stage loaded (model.pretrained), "
              "and a digest of the code every rule ran (dafusion.provenance): the same "
              "fingerprint, the same code."),
        Table(versions, "Library versions", "As installed where this report was written."),
        Preformatted(config_text(config), "Resolved config", "Every setting the results "
                     "depend on, defaults filled in (execution knobs left out); saved as "
                     "results/config.yaml, which --configfile reads."),
    ]  # fmt: skip
    methods = list(config["methods"])
    found = verdict(
        runs, pd.read_csv(tables["paired"]), late, methods, config["aggregate"]["baseline"],
        filtered=compared,
    )  # fmt: skip
    sections = [
        Section(
            "Verdict",
            [Findings(found)] if found else [],
            "Per dataset and examples per "
            "class, from the tables below: the best method, each method's difference from "
            "the baseline paired by seed (mean ± one standard error), whether that interval "
            "excludes zero, and the methods still improving at their last evaluated step.",
        ),
        Section("Accuracy", accuracy, "Few-shot classification accuracy of every method."),
        Section("Per-class accuracy", per_class, "Which classes each method gets right."),
        Section("Runs", per_run, "Every classifier run, and how its training went."),
        Section("Normalized scores", scores, "Scores comparable across datasets."),
        Section("Improvement over the baseline", paired, "Per-seed paired differences."),
        Section(
            "Filters",
            filtered,
            "What each method's filter keeps of the synthetic images, and the accuracy it "
            "gives beside the same method unfiltered (docs/filtering.md). Thresholds are "
            "chosen a priori, never on validation accuracy.",
        ),
        Section("Ablations", ablations, "Figure 11's alpha x M grid."),
        Section("Synthetic images", images, "What the generated images look like."),
        Section("Diagnostics", diagnostics, "Inversion, erasure, time and memory."),
        Section("Provenance", provenance, "What made these results."),
    ]
    meta = {
        "values": values,
        "datasets": ", ".join(sorted(runs["dataset"].unique())),
        "methods": ", ".join(dict.fromkeys(runs["method"])),
        "seeds per point": str(int(runs["num_seeds"].max())) if len(runs) else "0",
        "model": pretrained,
        "generated": time.strftime("%Y-%m-%d %H:%M"),
    }
    write_config(config_output, config)
    write_report(output, "DA-Fusion results", sections, meta, banner=banner(pretrained))
