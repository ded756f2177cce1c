from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import NO_CHROMIUM, chromium_path, render
from PIL import Image

from dafusion.reporting.report import (
    Figure,
    Preformatted,
    Section,
    Table,
    constant_columns,
    in_label_order,
    section_ids,
    write_report,
)

NASTY = '<b>&"'  # must reach the reader as text, never as markup


class Page(HTMLParser):
    """The parts of a report the tests look at: every tag's attributes, text, table rows."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.texts: dict[str, list[str]] = {}  # tag -> text of each element (leaf tags only)
        self.rows: list[list[str]] = []
        self.open: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self.rows[-1].append("")
        if tag not in ("img", "meta"):
            self.open.append(tag)
            self.texts.setdefault(tag, []).append("")

    def handle_endtag(self, tag):
        self.open.pop()

    def handle_data(self, data):
        for tag in self.open:  # the text counts for every enclosing element
            self.texts[tag][-1] += data
        if self.open and self.open[-1] in ("td", "th"):
            self.rows[-1][-1] += data

    def attrs(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


@pytest.fixture
def figures(tmp_path) -> dict[str, Path]:
    """A small PNG and one wider than the page (1800 x 600 -> shown at 900 x 300)."""
    small = np.zeros((80, 120, 3), dtype=np.uint8)
    small[:, :60, 0] = 230
    wide = np.full((600, 1800, 3), 86, dtype=np.uint8)
    wide[::7, :, 2] = 233
    paths = {"small": tmp_path / "small.png", "wide": tmp_path / "wide.png"}
    Image.fromarray(small).save(paths["small"])
    Image.fromarray(wide).save(paths["wide"])
    return paths


@pytest.fixture
def table() -> Table:
    frame = pd.DataFrame(
        {
            "method": ["baseline", NASTY],
            "accuracy": [0.51234, float("nan")],
            "num_seeds": [5, 3],
        }
    )
    return Table(
        frame, title="Summary & more", caption=f"Cell {NASTY} stays text.", float_format="{:.2f}"
    )


@pytest.fixture
def report(tmp_path, figures, table) -> Path:
    sections = [
        Section(
            "Accuracy",
            [
                Figure(figures["small"], title=f"Small {NASTY}", caption="Caption a < b."),
                Figure(figures["wide"], title="Wide", caption='Quotes "here".'),
            ],
            intro="First paragraph.\n\nSecond & last.",
        ),
        Section("Accuracy", [table]),
        Section("Concept novelty", [], intro="Needs the embeddings."),
        Section(
            "Provenance", [Preformatted(f"seeds: [0]\nprompt: {NASTY}\n", "Config", "As run.")]
        ),
    ]
    path = tmp_path / "out" / "nested" / "report.html"
    meta = {"config": f"configs/{NASTY}.yaml", "date": "2024-05-01"}
    write_report(
        path, title=f"DA-Fusion {NASTY}", sections=sections, meta=meta, banner=f"Random {NASTY}."
    )
    return path


def test_figures_embed_the_exact_png_bytes_at_their_size(report, figures):
    images = Page(report.read_text(encoding="utf-8")).attrs("img")
    prefix = "data:image/png;base64,"
    assert [image["src"][: len(prefix)] for image in images] == [prefix, prefix]
    assert base64.b64decode(images[0]["src"][len(prefix) :]) == figures["small"].read_bytes()
    assert base64.b64decode(images[1]["src"][len(prefix) :]) == figures["wide"].read_bytes()
    assert [(image["width"], image["height"]) for image in images] == [
        ("120", "80"),
        ("900", "300"),
    ]
    assert [image["alt"] for image in images] == [f"Small {NASTY}", "Wide"]


def test_all_text_is_escaped(report):
    text = report.read_text(encoding="utf-8")
    page = Page(text)
    assert NASTY not in text
    assert "<b>&amp;" not in text  # the NASTY cell, half escaped
    assert page.texts["title"] == [f"DA-Fusion {NASTY}"]
    assert page.texts["h1"] == [f"DA-Fusion {NASTY}"]
    assert page.texts["dd"] == [f"configs/{NASTY}.yaml", "2024-05-01"]
    # every caption above or below its item, tables' too, in document order
    assert page.texts["figcaption"] == [
        f"Small {NASTY} Caption a < b.",
        'Wide Quotes "here".',
        f"Summary & more Cell {NASTY} stays text.",
        "Config As run.",
    ]
    # the figure and table titles are the only <b> elements, in document order
    assert page.texts["b"] == [f"Small {NASTY}", "Wide", "Summary & more", "Config"]
    assert page.texts["pre"] == [f"seeds: [0]\nprompt: {NASTY}\n"]


def test_table_cells_are_formatted(report):
    rows = Page(report.read_text(encoding="utf-8")).rows
    assert rows == [
        ["method", "accuracy", "num_seeds"],
        ["baseline", "0.51", "5"],
        [NASTY, "\u2014", "3"],
    ]


def test_page_is_self_contained(report):
    text = report.read_text(encoding="utf-8")
    page = Page(text)
    assert text.startswith("<!DOCTYPE html>")
    assert page.attrs("meta")[0] == {"charset": "utf-8"}
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert [name for name, _ in page.tags if name in ("script", "link", "iframe", "object")] == []
    assert re.findall(r'src="(?!data:image/png;base64,)', text) == []
    assert all(attrs["href"].startswith("#") for attrs in page.attrs("a"))


def test_toc_links_every_section_by_a_unique_id(report):
    page = Page(report.read_text(encoding="utf-8"))
    assert [attrs["href"] for attrs in page.attrs("a")] == [
        "#accuracy",
        "#accuracy-2",
        "#provenance",
    ]
    assert [attrs["id"] for attrs in page.attrs("section")] == [
        "accuracy",
        "accuracy-2",
        "provenance",
    ]
    assert page.texts["a"] == ["Accuracy", "Accuracy", "Provenance"]


def test_section_ids():
    titles = ["Main results", "Main results", "Main results 2", "§", " Figure 6: novelty! "]
    assert section_ids(titles) == [
        "main-results",
        "main-results-2",
        "main-results-2-2",
        "section",
        "figure-6-novelty",
    ]


def test_sections_without_items_are_left_out(report):
    page = Page(report.read_text(encoding="utf-8"))
    assert "Concept novelty" not in report.read_text(encoding="utf-8")
    assert page.texts["h2"] == ["Contents", "Accuracy", "Accuracy", "Provenance"]
    # the banner, then the intro paragraphs of the sections shown
    assert page.texts["p"] == [f"Random {NASTY}.", "First paragraph.", "Second & last."]


def test_the_banner_comes_before_the_contents_and_only_when_given(report, figures):
    page = Page(report.read_text(encoding="utf-8"))
    banners = [attrs for attrs in page.attrs("p") if attrs.get("class") == "banner"]
    assert banners == [{"class": "banner", "role": "alert"}]
    # below the title, above the contents
    order = [
        name
        for name, attrs in page.tags
        if name in ("header", "nav", "section") or attrs.get("class") == "banner"
    ]
    assert order == ["header", "p", "nav", "section", "section", "section"]
    write_report(report, "Plain", [Section("Only", [Figure(figures["small"], "Small", "")])])
    assert 'class="banner"' not in report.read_text(encoding="utf-8")


def test_missing_figure_names_file_and_section(tmp_path):
    missing = tmp_path / "figures" / "novelty.png"
    out = tmp_path / "report.html"
    sections = [Section("Concept novelty", [Figure(missing, title="Novelty", caption="")])]
    with pytest.raises(FileNotFoundError) as error:
        write_report(out, "Report", sections)
    assert (
        str(error.value) == f"figure {str(missing)!r} of section 'Concept novelty' does not exist"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_write_is_atomic_and_replaces(report, figures):
    assert sorted(path.name for path in report.parent.iterdir()) == ["report.html"]
    write_report(report, "Second", [Section("Only", [Figure(figures["small"], "Small", "")])])
    assert sorted(path.name for path in report.parent.iterdir()) == ["report.html"]
    assert Page(report.read_text(encoding="utf-8")).texts["title"] == ["Second"]
    assert report.stat().st_mode & 0o777 == 0o644


@pytest.mark.browser
def test_report_renders_in_chromium(report, figures):
    if chromium_path() is None:
        pytest.skip(NO_CHROMIUM)
    result = render(report)
    assert result["images"] == [
        {"alt": f"Small {NASTY}", "natural_width": 120, "complete": True},
        {"alt": "Wide", "natural_width": 1800, "complete": True},
    ]
    assert result["console_errors"] == []
    assert result["page_errors"] == []


def test_columns_alike_in_every_row_move_to_the_caption(tmp_path):
    """A label column with one value in every row (split, metric, selection of a summary)
    is named once in the caption instead of filling the table's width; a single row keeps
    them all, and measurements (floats) stay in the table even where they tie."""
    frame = pd.DataFrame(
        {
            "dataset": ["digits", "digits"],
            "method": ["baseline", "da-fusion"],
            "accuracy_mean": [0.5, 0.625],
            "ci68_low": [0.25, 0.25],
            "num_seeds": [2, 2],
            "note": pd.Series([None, None], dtype=object),
            "split": ["val", "val"],
            "metric": ["mean_class_accuracy"] * 2,
            "selection": ["seed_mean"] * 2,
        }
    )
    assert constant_columns(frame) == [0, 4, 5, 6, 7, 8]
    assert constant_columns(frame.head(1)) == []
    assert constant_columns(frame[["dataset", "split"]]) == []  # rows alike: nothing to keep
    assert constant_columns(pd.DataFrame({"a": [[1], [1]], "b": [1, 2]})) == [0]  # unhashable
    indexed = frame.set_index(["dataset", "method"])  # an index counts as columns
    path = tmp_path / "report.html"
    tables = [Table(frame, "Summary", "Per method."), Table(frame.head(1), "One", "Row."),
              Table(indexed, "Indexed", "By method.")]  # fmt: skip
    write_report(path, "Report", [Section("Tables", tables)])
    page = Page(path.read_text(encoding="utf-8"))
    shared = (
        "In every row: dataset: digits; num_seeds: 2; note: \u2014; split: val; metric: "
        "mean_class_accuracy; selection: seed_mean."
    )
    assert page.texts["figcaption"] == [
        f"Summary Per method. {shared}",
        "One Row.",
        f"Indexed By method. {shared}",
    ]
    assert page.texts["span"] == [shared, shared]
    kept = [["method", "accuracy_mean", "ci68_low"], ["baseline", "0.500", "0.250"],
            ["da-fusion", "0.625", "0.250"]]  # fmt: skip
    assert page.rows[:3] == kept
    assert page.rows[3] == list(frame.columns)  # the single row keeps every column
    assert page.rows[5:] == kept


def test_the_per_class_pivot_keeps_each_datasets_label_order():
    """The per-class table (aggregate.per_class) lists a dataset's classes in label order;
    its pivot, which pandas sorts, is put back in that order, datasets and shots sorted."""
    order = {"d": ["zero", "one", "two"], "e": ["two", "zero"]}
    classes = pd.DataFrame(
        [
            {"dataset": d, "method": m, "shots": k, "class_name": c, "accuracy_mean": 0.5}
            for d in order for m in ("b", "m") for k in (1, 4) for c in order[d]
        ]
    )  # fmt: skip
    pivot = classes.pivot_table(
        index=["dataset", "shots", "class_name"], columns="method", values="accuracy_mean"
    )
    assert list(pivot.index)[:3] == [("d", 1, "one"), ("d", 1, "two"), ("d", 1, "zero")]
    ordered = in_label_order(pivot, classes)
    assert list(ordered.index) == [
        (d, k, c) for d in order for k in (1, 4) for c in order[d]
    ]  # fmt: skip
    assert ordered.index.names == ["dataset", "shots", "class_name"]
    assert list(ordered.columns) == ["b", "m"]


# Columns enough, and values long enough, to overflow a 1000-px page without wrapping.
WIDE = pd.DataFrame(
    {
        "dataset": ["digits", "leafy_spurge_with_a_long_name", "caltech101"],
        "method": ["da-fusion-erased-" * 3, "real-guidance", "baseline"],
        "shots": [1, 4, 16],
        **{f"measure_number_{i}_mean": [0.123456, 0.5, 0.75] for i in range(8)},
        "path": ["results/digits/synthetic/" + "0123456789abcdef" * 6] * 3,
        "note": ["a sentence that goes on " * 8, "short", "x"],
        "split": ["test", "val", "test"],
        "metric": ["mean_class_accuracy"] * 3,
        "selection": ["seed_mean"] * 3,
    }
)

TABLE_WIDTHS = """() => ({
    page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
    tables: Array.from(document.querySelectorAll("table")).map(table => ({
        table: table.scrollWidth,
        wrap: table.parentElement.clientWidth,
        scroll: table.parentElement.scrollWidth,
    })),
    // the lines each number's text takes (a range has one rectangle per line)
    numbers: Array.from(document.querySelectorAll("td.num")).map(cell => {
        const range = document.createRange();
        range.selectNodeContents(cell);
        return range.getClientRects().length;
    }),
    wrapped: Array.from(document.querySelectorAll("td:not(.num)")).filter(cell => {
        const range = document.createRange();
        range.selectNodeContents(cell);
        return range.getClientRects().length > 1;
    }).length,
})"""


@pytest.mark.browser
def test_every_table_fits_a_1400_px_window(tmp_path):
    """Opened in Chromium at 1400 x 900, no table is wider than its container and the page
    does not scroll sideways: long values wrap, numbers stay on one line."""
    if chromium_path() is None:
        pytest.skip(NO_CHROMIUM)
    from playwright.sync_api import sync_playwright

    path = tmp_path / "report.html"
    tables = [
        Table(WIDE, "Wide", "Many columns, long values."),
        Table(WIDE.set_index(["dataset", "method"]), "Indexed", "The index as columns."),
        Table(WIDE.head(1), "One row", "Every column kept."),
    ]
    write_report(path, "Report", [Section("Tables", tables)], meta={"config": "x" * 300})
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path())
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(path.resolve().as_uri(), wait_until="load")
            widths = page.evaluate(TABLE_WIDTHS)
        finally:
            browser.close()
    scroll, client = widths["page"]
    assert scroll <= client, widths
    assert len(widths["tables"]) == 3
    for table in widths["tables"]:
        assert table["table"] <= table["wrap"] and table["scroll"] <= table["wrap"], widths
    assert widths["numbers"] and set(widths["numbers"]) == {1}, widths  # numbers unbroken
    assert widths["wrapped"] > 0  # the long values wrap instead
