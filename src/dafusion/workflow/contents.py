"""What the aggregate job draws and the report shows, for one plan: the figures (by the
methods' `figures:` labels), the galleries, recognition rates, inversion loss curves,
erasure checks and filters' keep rates that exist for this config, each as the report
job's inputs, and the captions as Snakemake's report renders them. The rules read it as
`PLAN.report`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from . import paths

if TYPE_CHECKING:
    from .plan import Plan

# Figure labels drawn as the alpha x M grid (Figure 11) rather than as accuracy against
# examples per class: "11" and the methods it is paired with.
GRID_LABELS = ("11", "11-reference")
# The aggregate's tables (each a csv under tables/).
TABLES = ("summary", "scores", "novelty", "paired", "areas", "per_class", "runs", "validation")


@dataclasses.dataclass(frozen=True)
class ReportContents:
    """The aggregate's figures and the report's inputs and captions of a plan."""

    plan: Plan

    def figure_labels(self) -> list[str]:
        """The methods' figure labels (`figures:`), in order of first appearance."""
        labels: list[str] = []
        for method in self.plan.methods.values():
            for label in map(str, method.figures):
                if label not in labels:
                    labels.append(label)
        return labels

    def has_baseline(self) -> bool:
        return self.plan.aggregate.baseline in self.plan.methods

    def aggregate_figures(self) -> list[str]:
        """Names of the figures the aggregate job draws (each as .png and .pdf): every label
        but the grid's as accuracy against examples per class; "11" as the alpha x M grid,
        paired with the "11-reference" methods (or the baseline). The novelty figure only
        where at least two novelty bins hold datasets of this config: with one, its bars
        would be the scores figure's again."""
        labels = self.figure_labels()
        names = ["accuracy", "per-class", "validation", "scores"]
        names += [f"figure-{label}" for label in labels if label not in GRID_LABELS]
        bins = self.plan.aggregate.novelty.values()
        if sum(bool(set(datasets) & set(self.plan.datasets)) for datasets in bins) >= 2:
            names.append("novelty")
        if self.has_baseline() and len(self.plan.methods) > 1:
            names.append("paired")
        if "11" in labels and ("11-reference" in labels or self.has_baseline()):
            names.append("figure-11")
        return names

    def method_layout(self) -> list[dict[str, Any]]:
        """Per (dataset, method) the resolved settings the figures group runs by."""
        rows = []
        for d in self.plan.datasets:
            for m, method in self.plan.methods.items():
                if not method.runs_on(d):
                    continue
                classifier = self.plan.classifier_for(d, m)
                rows.append(
                    {
                        "dataset": d,
                        "method": m,
                        "figures": [str(label) for label in method.figures],
                        "strengths": list(method.strengths or ()) if method.synthetic else [],
                        "num_synthetic": (
                            self.plan.generation_for(d, m).num_synthetic if method.synthetic else 0
                        ),
                        "synthetic_probability": classifier.synthetic_probability,
                    }
                )
        return rows

    def gallery_split(self) -> tuple[int, int]:
        """The split a dataset's gallery shows: the first seed, the most examples per
        class."""
        return self.plan.seeds[0], max(int(k) for k in self.plan.shots if k != "all")

    def gallery_methods(self, dataset: str) -> list[str]:
        """The synthetic methods of a dataset whose images the gallery and the recognition
        rates show: a method with a filter and an unfiltered twin is left out (its images
        are the twin's; the Filters section shows what it keeps of them)."""
        return [
            m
            for m in self.plan.synthetic_methods()
            if self.plan.methods[m].runs_on(dataset)
            and (self.plan.methods[m].filter is None or self.filter_twin(dataset, m) is None)
        ]

    def gallery_datasets(self) -> list[str]:
        return [d for d in self.plan.datasets if self.gallery_methods(d)]

    def gallery_inputs(self, dataset: str) -> dict[str, Any]:
        seed, shots = self.gallery_split()
        return {
            "split": self.plan.split_path(dataset, seed, shots),
            "indices": [
                self.plan.sets.method_index(dataset, m, seed, shots)
                for m in self.gallery_methods(dataset)
            ],
        }

    def recognition_datasets(self) -> list[str]:
        """Datasets of digits with synthetic images: the reference classifier scores them."""
        return [d for d in self.gallery_datasets() if self.plan.datasets[d].kind == "digits"]

    def synthetic_sizes(self, dataset: str) -> dict[str, int]:
        """Each synthetic method of a dataset and the M its runs read (its set may hold more)."""
        return {
            m: self.plan.generation_for(dataset, m).num_synthetic
            for m in self.gallery_methods(dataset)
        }

    def recognition_inputs(self, dataset: str) -> dict[str, Any]:
        """Every split of the dataset, and each method's set per split in the same order."""
        cells = [(seed, shots) for seed in self.plan.seeds for shots in self.plan.shots]
        return {
            "splits": [self.plan.split_path(dataset, seed, shots) for seed, shots in cells],
            "indices": [
                self.plan.sets.method_index(dataset, m, seed, shots)
                for m in self.synthetic_sizes(dataset)
                for seed, shots in cells
            ],
        }

    # Filters (docs/filtering.md): what each keeps, and accuracy beside its unfiltered twin.

    def filtering_datasets(self) -> list[str]:
        """The datasets a method with a filter runs on: each gets a `filtering` job."""
        return [d for d in self.plan.datasets if self.plan.filtered_methods(d)]

    def filtering_cells(self) -> list[tuple[int, int | str]]:
        return [(seed, shots) for seed in self.plan.seeds for shots in self.plan.shots]

    def filtering_sets(self, dataset: str) -> dict[str, str]:
        """The images a dataset's filters are applied to: one synthetic method per set and M
        (methods of one set and M draw from the same images), by preference one without a
        filter, in config order; and for each method, the one that stands for its images."""
        plan = self.plan
        sizes = {
            m: plan.generation_for(dataset, m).num_synthetic
            for m in plan.synthetic_methods()
            if plan.methods[m].runs_on(dataset)
        }
        ranked = sorted(sizes, key=lambda m: plan.methods[m].filter is not None)
        chosen: dict[tuple[str, int], str] = {}
        for method in ranked:
            chosen.setdefault((plan.sets.name(dataset, method), sizes[method]), method)
        return {m: chosen[plan.sets.name(dataset, m), sizes[m]] for m in sizes}

    def filtering_methods(self, dataset: str) -> dict[str, int]:
        """`filtering_sets`' methods, each with its M, in config order."""
        standing = set(self.filtering_sets(dataset).values())
        return {
            m: self.plan.generation_for(dataset, m).num_synthetic
            for m in self.plan.synthetic_methods()
            if m in standing
        }

    def filtering_inputs(self, dataset: str) -> dict[str, Any]:
        """A dataset's `filtering` job reads the set of each of `filtering_methods` per
        split (in that order, then `filtering_cells`') and, in the same order per scorer in
        use (`Plan.scorers`), the sets' scores: what each filter keeps of every method's
        images, not only of its own method's."""
        cells = self.filtering_cells()
        methods = list(self.filtering_methods(dataset))
        return {
            "indices": [
                self.plan.sets.method_index(dataset, m, seed, shots)
                for m in methods
                for seed, shots in cells
            ],
            "scores": [
                self.plan.scores_path(dataset, self.plan.sets.name(dataset, m), seed, shots, scorer)
                for scorer in self.plan.scorers(dataset)
                for m in methods
                for seed, shots in cells
            ],
        }

    def filtering_params(self, dataset: str) -> dict[str, Any]:
        """What a `filtering` job's outputs depend on besides its inputs: each filter (by
        method) and the method of `filtering_methods` that stands for its own images, each
        of those methods' M, the splits and scorers its inputs list, and the split whose
        images it shows (the gallery's)."""
        seed, shots = self.gallery_split()
        standing = self.filtering_sets(dataset)
        filters = {}
        for method in self.plan.filtered_methods(dataset):
            spec = self.plan.filter_of(method)
            assert spec is not None  # a filtered method's
            filters[method] = spec.result_params()
        return {
            "filters": filters,
            "own": {method: standing[method] for method in filters},
            "methods": self.filtering_methods(dataset),
            "cells": [[s, k] for s, k in self.filtering_cells()],
            "scorers": self.plan.scorers(dataset),
            "shown": [seed, shots],
        }

    def filter_twin(self, dataset: str, method: str) -> str | None:
        """The method a filtered method's accuracy is shown beside: the first method of the
        config (on this dataset) that reads the same synthetic set with the same M and the
        same classifier settings, and no filter; None where the config has none."""
        plan = self.plan
        name = plan.sets.name(dataset, method)
        size = plan.generation_for(dataset, method).num_synthetic
        classifier = plan.classifier_for(dataset, method).result_params()
        for other in plan.sets.methods(dataset, name):
            if other == method or plan.methods[other].filter is not None:
                continue
            if (
                plan.generation_for(dataset, other).num_synthetic == size
                and plan.classifier_for(dataset, other).result_params() == classifier
            ):
                return other
        return None

    def filter_report(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The report's params: per dataset, each filtered method's filter in words and
        its unfiltered twin (`filter_twin`, None where there is none)."""
        report: dict[str, dict[str, dict[str, Any]]] = {}
        for dataset in self.filtering_datasets():
            for method in self.plan.filtered_methods(dataset):
                spec = self.plan.filter_of(method)
                assert spec is not None  # a filtered method's
                report.setdefault(dataset, {})[method] = {
                    "filter": spec.describe(),
                    "twin": self.filter_twin(dataset, method),
                }
        return report

    def loss_curves(self, dataset: str) -> list[str]:
        """The first seed's inversion loss tables of a dataset (plain and erased tokens)."""
        seed = self.plan.seeds[0]
        return sorted(
            {
                paths.tokens_losses(self.plan.tokens_path(dataset, m, seed, k))
                for m in self.plan.token_methods(dataset)
                for k in self.plan.shots
            }
        )

    def inputs(self) -> dict[str, Any]:
        """What the report shows: the aggregate's tables and figures, the galleries, the
        inversion loss curves, the erasure check heatmaps and the filters' keep rates with
        their kept and dropped images."""
        return {
            **{name: self.plan.path(paths.TABLE, name=name) for name in TABLES},
            "figures": [
                self.plan.path(paths.FIGURE, name=name) for name in self.aggregate_figures()
            ],
            "galleries": [
                self.plan.path(paths.GALLERY, dataset=d) for d in self.gallery_datasets()
            ],
            "recognition": [
                self.plan.path(paths.RECOGNITION_FIGURE, dataset=d)
                for d in self.recognition_datasets()
            ],
            "curves": [
                self.plan.path(paths.INVERSION_CURVES, dataset=d)
                for d in self.plan.datasets
                if self.loss_curves(d)
            ],
            "erasure": [
                self.plan.path(paths.ERASURE_FIGURE, dataset=d) for d in self.plan.erased_datasets()
            ],
            "filtering": [
                self.plan.path(paths.FILTERING, dataset=d) for d in self.filtering_datasets()
            ],
            "filtering_figures": [
                self.plan.path(paths.FILTERING_FIGURE, dataset=d) for d in self.filtering_datasets()
            ],
        }

    def captions(self, captions: Mapping[str, str]) -> dict[str, str]:
        """Caption texts by figure name, and by name for the report's other items, rendered
        as Snakemake's report renders them (`render_caption`)."""
        rendered = {
            key: render_caption(text, self.plan.aggregate.measure())
            for key, text in captions.items()
        }
        return {
            name: rendered[caption_key(name, captions)] for name in self.aggregate_figures()
        } | rendered


def read_captions(folder: str | Path) -> dict[str, str]:
    """The caption texts (workflow/report/*.rst) by name."""
    return {path.stem: path.read_text().strip() for path in sorted(Path(folder).glob("*.rst"))}


def caption_key(name: str, captions: Mapping[str, str]) -> str:
    """The caption of a figure name (figure-5 and the like are accuracy figures)."""
    key = {"figure-11": "grid"}.get(name, name)
    return key if key in captions else "accuracy"


def render_caption(text: str, measure: str) -> str:
    """A caption as Snakemake's report renders it (Jinja2, with the aggregate job's
    params.measure): the same text in results/report.html as in `snakemake --report`."""
    import jinja2

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    params = SimpleNamespace(measure=measure)
    return env.from_string(text).render(snakemake=SimpleNamespace(params=params))
