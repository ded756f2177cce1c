"""The grid's sizes, as the config gives them: each dataset's classes, the source images of
its synthetic sets over every seed and shot count, and their synthetic images. What the
estimate (`estimate`, `footprint`, `schedule`) counts its work and outputs in."""

from __future__ import annotations

from .plan import Plan

# Classes of the kinds whose entry may not say (`classes:` sets the others).
KIND_CLASSES = {"pascal": 20, "leafy_spurge": 2, "digits": 10}


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


def set_sources(plan: Plan, dataset: str) -> int:
    """The source images of a dataset's synthetic set over every seed and shot count:
    every class with `shots` training images per cell."""
    return dataset_classes(plan, dataset) * sum(int(k) for k in plan.shots) * len(plan.seeds)


def set_images(plan: Plan, dataset: str, name: str) -> int:
    """The images of a synthetic set over every seed and shot count."""
    return set_sources(plan, dataset) * plan.sets.generation(dataset, name).num_synthetic


def check_numbers(plan: Plan) -> None:
    if "all" in plan.shots:
        raise ValueError("config key 'examples_per_class': the estimate needs numbers, not 'all'")
