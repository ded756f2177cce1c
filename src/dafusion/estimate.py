"""GPU-hours of a config's whole grid, from its plan and the per-unit costs of
`dafusion.runtime` (measured on one GPU, docs/benchmarks.md): the table in the README and
docs/cluster.md.

Computed, not written by hand, so that it follows the grid (methods sharing a synthetic set
count once, `Plan.synthetic_sets`) and the costs; a test keeps the docs' table equal to
this module's output. An estimate: no margin, start-up not counted, every class of a
dataset with `shots` training images per cell (the few-shot draw), and classifier
evaluations left out.

    python -m dafusion.estimate config/paper.yaml
    python -m dafusion.estimate config/paper.yaml --costs costs.json   # benchmarks/gpu.sh's
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import runtime
from .config import validate_config
from .plan import Plan
from .settings import denoising_steps

SCHEMA = Path(__file__).resolve().parents[2] / "workflow/schemas/config.schema.yaml"
# Classes of the kinds whose entry may not say (`classes:` sets the others).
KIND_CLASSES = {"pascal": 20, "leafy_spurge": 2, "digits": 10}


@dataclass(frozen=True)
class Stage:
    """One stage's GPU jobs, its work in words, its estimated GPU-hours and the per-unit
    costs they come from (`runtime.COSTS` keys)."""

    name: str
    jobs: int
    work: str
    hours: float
    costs: tuple[str, ...]


def dataset_classes(plan: Plan, dataset: str) -> int:
    """A dataset's number of classes: its `classes:` entry, or its kind's."""
    spec = plan.datasets[dataset]
    if isinstance(spec.classes, int):
        return spec.classes
    if spec.classes is not None:
        return len(spec.classes)
    try:
        return KIND_CLASSES[spec.kind]
    except KeyError:
        raise ValueError(
            f"config key 'datasets.{dataset}.classes': the estimate needs the number of "
            f"classes of kind '{spec.kind}'; set classes: N"
        ) from None


def mean_steps(num_inference_steps: int, strengths: Sequence[float]) -> float:
    """Denoising steps an image takes on average: t0 is drawn uniformly from `strengths`."""
    return sum(denoising_steps(num_inference_steps, s) for s in strengths) / len(strengths)


def set_images(plan: Plan, dataset: str, name: str) -> int:
    """The images of a synthetic set over every seed and shot count: every class with
    `shots` training images per cell."""
    shots = sum(int(k) for k in plan.shots) * len(plan.seeds)
    return dataset_classes(plan, dataset) * shots * plan.set_generation(dataset, name).num_synthetic


def stages(plan: Plan, costs: Mapping[str, runtime.Cost] = runtime.COSTS) -> list[Stage]:
    """Each GPU stage of the grid: jobs, work and GPU-hours at the per-unit `costs`."""
    if "all" in plan.shots:
        raise ValueError("config key 'examples_per_class': the estimate needs numbers, not 'all'")
    cells = len(plan.seeds) * len(plan.shots)
    sets = images = image_steps = 0.0
    token_files = token_classes = erase_classes = runs = train_steps = 0
    train_seconds, train_costs = 0.0, set()
    for dataset in plan.datasets:
        classes = dataset_classes(plan, dataset)
        for name, methods in plan.synthetic_sets(dataset).items():
            generation = plan.set_generation(dataset, name)
            count = set_images(plan, dataset, name)
            strengths = plan.methods[methods[0]].strengths
            sets += cells
            images += count
            image_steps += count * mean_steps(generation.num_inference_steps, strengths)
        kinds = {plan.methods[m].erased for m in plan.token_methods(dataset)}  # plain, erased
        token_files += len(kinds) * cells
        token_classes += len(kinds) * cells * classes
        if dataset in plan.erased_datasets():
            erase_classes += classes
        for method, spec in plan.methods.items():
            if spec.runs_on(dataset):
                classifier = plan.classifier_for(dataset, method)
                cost = runtime.train_cost_key(classifier, costs)
                runs += cells
                train_steps += cells * classifier.steps
                train_seconds += cells * classifier.steps * costs[cost].seconds
                train_costs.add(cost)
    inversion, erasure = plan.inversion, plan.erasure
    esd = erasure.method == "esd"
    return [
        Stage(
            "generate", int(sets),
            f"{images:,.0f} synthetic images × {image_steps / max(images, 1):.1f} denoising "
            "steps on average", image_steps * costs["generate"].seconds / 3600, ("generate",),
        ),
        Stage(
            "invert", token_files,
            f"{inversion.steps} steps × {inversion.batch_size} samples × {token_classes:,} "
            "classes", token_classes * inversion.steps * inversion.batch_size
            * costs["invert"].seconds / 3600, ("invert",),
        ),
        Stage(
            "erase", len(plan.erased_datasets()),
            f"{erase_classes} classes × {erasure.iterations} ESD iterations" if esd
            else f"{erase_classes} classes in closed form (UCE)",
            erase_classes * erasure.iterations * costs["erase"].seconds / 3600 if esd else 0,
            ("erase",) if esd else (),
        ),
        Stage(
            "train", runs, f"{train_steps:,} classifier steps (evaluations not counted)",
            train_seconds / 3600, tuple(sorted(train_costs)),
        ),
    ]  # fmt: skip


def table(plan: Plan, costs: Mapping[str, runtime.Cost] = runtime.COSTS) -> str:
    """The stages as the markdown table of the README and docs/cluster.md: jobs, work,
    per-unit costs, where each was measured, GPU-hours."""
    rows = stages(plan, costs)
    lines = [
        "| stage | GPU jobs | work | per-unit cost | measured | GPU-hours (estimated) |",
        "|---|---|---|---|---|---|",
    ]
    for s in rows:
        cost = "; ".join(f"{costs[k].seconds:.3g} s {runtime.UNITS[k]}" for k in s.costs)
        where = "; ".join(costs[k].measured or "not measured" for k in s.costs)
        lines.append(
            f"| `{s.name}` | {s.jobs:,} | {s.work} | {cost or '—'} | {where or '—'} "
            f"| {s.hours:,.1f} |"
        )
    total = sum(s.hours for s in rows)
    lines.append(f"| total | {sum(s.jobs for s in rows):,} | | | | {total:,.0f} |")
    return "\n".join(lines) + "\n"


def run_summary(plan: Plan, costs: Mapping[str, runtime.Cost] = runtime.COSTS) -> str:
    """What a run of the whole grid will make, in one line, said before it starts: the
    synthetic images, the most disk they take (raw RGB; PNG shards are smaller), and the
    GPU-hours at the per-unit costs. Where the number of images depends on the data
    (`examples_per_class: all`, or a dataset whose number of classes the config does not
    say), it is given per real image."""
    sets = [(d, name) for d in plan.datasets for name in plan.synthetic_sets(d)]
    if not sets:
        return "this config's grid makes no synthetic images"
    try:
        images = sum(set_images(plan, d, name) for d, name in sets)
        hours = sum(s.hours for s in stages(plan, costs))
    except ValueError:  # counts that only the data gives
        most = max(plan.set_generation(d, name).num_synthetic for d, name in sets)
        return (
            f"this config's grid makes up to {most:,} synthetic images per real image at "
            f"{plan.model.resolution} px"
        )
    raw = images * plan.model.resolution**2 * 3
    size = f"{raw / 1e9:,.1f} GB" if raw >= 1e9 else f"{raw / 1e6:,.1f} MB"
    return (
        f"this config's grid makes {images:,} synthetic images at {plan.model.resolution} px "
        f"(at most {size} of shards) and takes about {hours:,.1f} GPU-hours at the per-unit "
        "costs of docs/benchmarks.md (`python -m dafusion.estimate` for each stage)"
    )


def plan_of(config_paths: Sequence[str | Path]) -> Plan:
    """The plan of config files merged in order, without the checks that need the data,
    the model or the weights on disk (`validate_config(check_files=False)`)."""
    merged: dict = {}
    for path in config_paths:
        _merge(merged, yaml.safe_load(Path(path).read_text()) or {})
    return Plan.from_config(validate_config(merged, SCHEMA, check_files=False))


def _merge(config: dict, update: Mapping) -> None:
    """Snakemake's merge of `--configfile a b`: nested mappings key by key."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            _merge(config[key], value)
        else:
            config[key] = value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dafusion.estimate", description=__doc__)
    parser.add_argument("configs", nargs="+", help="config files, merged in order")
    parser.add_argument(
        "--costs",
        help="a costs file (benchmarks/gpu.sh writes one) whose per-unit costs replace the "
        "repository's (src/dafusion/costs.json)",
    )
    args = parser.parse_args(argv)
    costs = runtime.read_costs(args.costs, runtime.COSTS) if args.costs else runtime.COSTS
    sys.stdout.write(table(plan_of(args.configs), costs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
