"""GPU-hours of a config's whole grid, from its plan and the per-unit costs of
`dafusion.runtime` (measured on one GPU, docs/benchmarks.md): the table in docs/cluster.md.

Computed, not written by hand, so that it follows the grid (methods sharing a synthetic set
count once, `Plan.synthetic_sets`) and the costs; a test keeps the docs' table equal to
this module's output. An estimate: no margin, start-up not counted, every class of a
dataset with `shots` training images per cell (the few-shot draw), and classifier
evaluations left out.

    python -m dafusion.estimate config/paper.yaml
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
    """One stage's GPU jobs, its work in words, and its estimated GPU-hours."""

    name: str
    jobs: int
    work: str
    hours: float


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


def stages(plan: Plan) -> list[Stage]:
    """Each GPU stage of the grid: jobs, work and GPU-hours at the measured per-unit costs."""
    if "all" in plan.shots:
        raise ValueError("config key 'examples_per_class': the estimate needs numbers, not 'all'")
    cells = len(plan.seeds) * len(plan.shots)
    shots = sum(int(k) for k in plan.shots) * len(plan.seeds)  # images per class, all cells
    sets = images = image_steps = 0.0
    token_files = token_classes = erase_classes = runs = train_steps = 0
    for dataset in plan.datasets:
        classes = dataset_classes(plan, dataset)
        for name, methods in plan.synthetic_sets(dataset).items():
            generation = plan.set_generation(dataset, name)
            count = classes * shots * generation.num_synthetic
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
                runs += cells
                train_steps += cells * plan.classifier_for(dataset, method).steps
    inversion, erasure = plan.inversion, plan.erasure
    esd = erasure.method == "esd"
    return [
        Stage(
            "generate", int(sets),
            f"{images:,.0f} synthetic images × {image_steps / max(images, 1):.1f} denoising "
            "steps on average", image_steps * runtime.GENERATE_S_PER_IMAGE_STEP / 3600,
        ),
        Stage(
            "invert", token_files,
            f"{inversion.steps} steps × {inversion.batch_size} samples × {token_classes:,} "
            "classes", token_classes * inversion.steps * inversion.batch_size
            * runtime.INVERT_S_PER_SAMPLE_STEP / 3600,
        ),
        Stage(
            "erase", len(plan.erased_datasets()),
            f"{erase_classes} classes × {erasure.iterations} ESD iterations" if esd
            else f"{erase_classes} classes in closed form (UCE)",
            erase_classes * erasure.iterations * runtime.ESD_S_PER_ITERATION / 3600 if esd else 0,
        ),
        Stage(
            "train", runs, f"{train_steps:,} classifier steps (evaluations not counted)",
            train_steps * runtime.TRAIN_S_PER_STEP / 3600,
        ),
    ]  # fmt: skip


def table(plan: Plan) -> str:
    """The stages as the markdown table of docs/cluster.md."""
    rows = stages(plan)
    lines = ["| stage | GPU jobs | work | GPU-hours (estimated) |", "|---|---|---|---|"]
    lines += [f"| `{s.name}` | {s.jobs:,} | {s.work} | {s.hours:,.1f} |" for s in rows]
    total = sum(s.hours for s in rows)
    lines.append(f"| total | {sum(s.jobs for s in rows):,} | | {total:,.0f} |")
    return "\n".join(lines) + "\n"


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
    args = parser.parse_args(argv)
    sys.stdout.write(table(plan_of(args.configs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
