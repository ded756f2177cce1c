"""What a config's whole grid costs: GPU-hours per stage, disk, and wall-clock time on N
GPUs, the README's and docs/cluster.md's tables.

Each stage's hours are the sum over the grid's jobs of the work formula that also sets the
job's time limit (`dafusion.workflow.runtime`'s `*_seconds`, at per-unit costs measured on one GPU,
docs/benchmarks.md), without the limit's margin and start-up. Computed, not written by
hand, so that it follows the grid (methods sharing a synthetic set count once,
`Plan.sets`) and the costs; a test keeps the docs' tables equal to this module's
output. An estimate: every class of a dataset with `shots` training images per cell (the
few-shot draw), each synthetic image at its method's mean denoising steps. Classifier
evaluations are counted but not in the hours: their images are the datasets' evaluation
splits, which the config does not size (the data does); the table gives their GPU-hours
per 1,000 images a run evaluates instead.

The disk is `dafusion.workflow.footprint`'s, the wall-clock time on N GPUs
`dafusion.workflow.schedule`'s; the grid's sizes are `dafusion.workflow.grid`'s.

    python -m dafusion.workflow.estimate config/paper.yaml
    python -m dafusion.workflow.estimate config/paper.yaml --gpus 4 16
    python -m dafusion.workflow.estimate config/paper.yaml --costs costs.json  # gpu.sh's
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from . import runtime
from .config import SCHEMA, validate_config
from .footprint import disk_table
from .grid import check_numbers, dataset_classes, set_images, set_sources
from .plan import Plan
from .runtime import DEVICE_SCORERS
from .schedule import DEFAULT_GPUS, wall_clock_table

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class Stage:
    """One stage's GPU jobs, its work in words, its estimated GPU-hours and the per-unit
    costs they come from (`runtime.COSTS` keys)."""

    name: str
    jobs: int
    work: str
    hours: float
    costs: tuple[str, ...]


# GPU-hours of evaluations are given per this many evaluation images (the module's doc).
EVAL_IMAGES_SHOWN = 1000


def stages(plan: Plan, costs: Mapping[str, runtime.Cost] = runtime.COSTS) -> list[Stage]:
    """Each GPU stage of the grid: jobs, work and GPU-hours at the per-unit `costs` (the
    model family's, `runtime.for_family`)."""
    check_numbers(plan)
    costs = runtime.for_family(costs, plan.family)
    cells = len(plan.seeds) * len(plan.shots)
    inversion, erasure = plan.inversion, plan.erasure
    sets = images = token_files = token_classes = runs = train_steps = evals = 0
    erase_classes = deltas = score_jobs = scored = 0
    seconds = {"generate": 0.0, "invert": 0.0, "erase": 0.0, "train": 0.0, "eval": 0.0}
    seconds["score"] = 0.0
    scorers: set[str] = set()
    image_steps, train_costs = 0.0, set()
    for dataset in plan.datasets:
        classes = dataset_classes(plan, dataset)
        for name, methods in plan.sets.by_name(dataset).items():
            generation = plan.sets.generation(dataset, name)
            strengths = plan.methods[methods[0]].strengths
            assert strengths is not None  # a set's methods are SDEdit's, which need strengths
            steps = runtime.mean_steps(generation.num_inference_steps, strengths)
            sources = set_sources(plan, dataset)
            sets += cells
            images += sources * generation.num_synthetic
            image_steps += sources * generation.num_synthetic * steps
            seconds["generate"] += runtime.generate_seconds(generation, sources, steps, costs)
            # the scorers a filter reads, on the GPU: one light job per set, split and scorer
            for scorer in set(plan.scorers(dataset)) & set(DEVICE_SCORERS):
                scorers.add(scorer)
                score_jobs += cells
                scored += sources * generation.num_synthetic
                seconds["score"] += runtime.score_seconds(
                    scorer, sources * generation.num_synthetic, costs
                )
        # invert, invert_erased, lora: the lora jobs at inversion's unit cost, lora.steps each
        kinds = {plan.token_job(dataset, m) for m in plan.token_methods(dataset)}
        token_files += len(kinds) * cells
        token_classes += len(kinds) * cells * classes
        for kind in kinds:
            learn = inversion.replace(steps=plan.token_steps(kind))
            seconds["invert"] += cells * runtime.invert_seconds(learn, classes, costs)
        if dataset in plan.erased_datasets():
            erase_classes += classes
            deltas += runtime.erase_deltas(erasure, classes)
            seconds["erase"] += runtime.erase_seconds(erasure, classes, costs)
        for method, spec in plan.methods.items():
            if spec.runs_on(dataset):
                classifier = plan.classifier_for(dataset, method)
                runs += cells
                train_steps += cells * classifier.steps
                evals += cells * runtime.evaluations(classifier)
                # no evaluation images: their number is the data's (the module's doc)
                seconds["train"] += cells * runtime.train_seconds(classifier, 0, costs)
                seconds["eval"] += cells * runtime.eval_seconds(
                    classifier, EVAL_IMAGES_SHOWN, costs
                )
                train_costs.add(runtime.train_cost_key(classifier, costs))
    hours = {stage: s / 3600 for stage, s in seconds.items()}
    esd = erasure.method == "esd"
    return [
        Stage(
            "generate", sets,
            f"{images:,} synthetic images × {image_steps / max(images, 1):.1f} denoising "
            "steps on average", hours["generate"], ("generate",),
        ),
        Stage(
            "invert", token_files,
            f"{inversion.steps} steps × {inversion.batch_size} samples × {token_classes:,} "
            "classes", hours["invert"], ("invert",),
        ),
        Stage(
            "erase", len(plan.erased_datasets()),
            f"{deltas} ESD fine-tunings × {erasure.iterations} iterations at "
            f"{erasure.ddim_steps} DDIM steps" if esd
            else f"{erase_classes} classes in closed form (UCE)",
            hours["erase"], ("erase",) if esd else (),
        ),
        Stage(
            "train", runs,
            f"{train_steps:,} classifier steps; {evals:,} evaluations, not in the hours: "
            f"{hours['eval']:,.1f} GPU-hours more per {EVAL_IMAGES_SHOWN:,} images in each "
            "run's evaluation splits",
            hours["train"], (*sorted(train_costs), "eval"),
        ),
    ] + ([  # only where a filter reads the classifier or clip scores
        Stage(
            "score", score_jobs,
            f"{scored:,} scorings of synthetic images ({', '.join(sorted(scorers))}), each "
            "at the cost of a classifier's evaluation image", hours["score"], ("eval",),
        ),
    ] if score_jobs else [])  # fmt: skip


def hours_table(plan: Plan, costs: Mapping[str, runtime.Cost] = runtime.COSTS) -> str:
    """The stages as a markdown table: jobs, work, per-unit costs, where each was measured,
    GPU-hours."""
    rows = stages(plan, costs)
    costs = runtime.for_family(costs, plan.family)
    lines = [
        "| stage | GPU jobs | work | per-unit cost | measured | GPU-hours (estimated) |",
        "|---|---|---|---|---|---|",
    ]
    for s in rows:
        cost = "; ".join(f"{costs[k].seconds:.3g} s {runtime.UNITS[k]}" for k in s.costs)
        where = "; ".join(costs[k].measured or costs[k].basis or "not measured" for k in s.costs)
        lines.append(
            f"| `{s.name}` | {s.jobs:,} | {s.work} | {cost or '—'} | {where or '—'} "
            f"| {s.hours:,.1f} |"
        )
    total = sum(s.hours for s in rows)
    lines.append(f"| total | {sum(s.jobs for s in rows):,} | | | | {total:,.0f} |")
    return "\n".join(lines) + "\n"


def table(
    plan: Plan,
    costs: Mapping[str, runtime.Cost] = runtime.COSTS,
    gpus: Sequence[int] = DEFAULT_GPUS,
) -> str:
    """The command's output, the README's and docs/cluster.md's tables: GPU-hours per
    stage (`hours_table`), disk (`disk_table`) and wall-clock time on `gpus` GPUs
    (`wall_clock_table`)."""
    return "\n".join(
        [hours_table(plan, costs), disk_table(plan), wall_clock_table(plan, costs, gpus)]
    )


def run_summary(plan: Plan, costs: Mapping[str, runtime.Cost] = runtime.COSTS) -> str:
    """What a run of the whole grid will make, in one line, said before it starts: the
    synthetic images, the most disk they take (raw RGB; PNG shards are smaller), and the
    GPU-hours at the per-unit costs. Where the number of images depends on the data
    (`examples_per_class: all`, or a dataset whose number of classes the config does not
    say), it is given per real image."""
    sets = [(d, name) for d in plan.datasets for name in plan.sets.by_name(d)]
    if not sets:
        return "this config's grid makes no synthetic images"
    try:
        images = sum(set_images(plan, d, name) for d, name in sets)
        hours = sum(s.hours for s in stages(plan, costs))
    except ValueError:  # counts that only the data gives
        most = max(plan.sets.generation(d, name).num_synthetic for d, name in sets)
        return (
            f"this config's grid makes up to {most:,} synthetic images per real image at "
            f"{plan.model.resolution} px"
        )
    raw = images * plan.model.resolution**2 * 3
    size = f"{raw / 1e9:,.1f} GB" if raw >= 1e9 else f"{raw / 1e6:,.1f} MB"
    return (
        f"this config's grid makes {images:,} synthetic images at {plan.model.resolution} px "
        f"(at most {size} of shards) and takes about {hours:,.1f} GPU-hours at the per-unit "
        "costs of docs/benchmarks.md (`python -m dafusion.workflow.estimate` for each stage)"
    )


def plan_of(config_paths: Sequence[str | Path]) -> Plan:
    """The plan of config files merged in order, without the checks that need the data,
    the model or the weights on disk (`validate_config` looks at none)."""
    merged: dict = {}
    for path in config_paths:
        _merge(merged, yaml.safe_load(Path(path).read_text()) or {})
    return Plan.from_config(validate_config(merged, SCHEMA))


def _merge(config: dict, update: Mapping) -> None:
    """Snakemake's merge of `--configfile a b`: nested mappings key by key."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            _merge(config[key], value)
        else:
            config[key] = value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dafusion.workflow.estimate", description=__doc__
    )
    parser.add_argument("configs", nargs="+", help="config files, merged in order")
    parser.add_argument(
        "--costs",
        help="a costs file (benchmarks/gpu.sh writes one) whose per-unit costs replace the "
        "repository's (src/dafusion/workflow/costs.json)",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        nargs="+",
        default=list(DEFAULT_GPUS),
        metavar="N",
        help="GPU counts of the wall-clock table (default: 1 8 64)",
    )
    args = parser.parse_args(argv)
    if min(args.gpus) < 1:
        parser.error("--gpus: each count must be at least 1")
    costs = runtime.read_costs(args.costs, runtime.COSTS) if args.costs else runtime.COSTS
    sys.stdout.write(table(plan_of(args.configs), costs, args.gpus))
    return 0


if __name__ == "__main__":
    sys.exit(main())
