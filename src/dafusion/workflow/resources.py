"""One job's resources: threads, memory, GPUs and wall time.

Wall times come from the cost model beside this module (`dafusion.workflow.runtime`): each
stage's one work formula, with a margin for a cluster's time limit. The rules read these as
`PLAN.resources`; none is a result setting, so changing one reruns nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..jobs.devices import will_use_cuda
from .runtime import (
    COSTS,
    DEVICE_SCORERS,
    Cost,
    class_count,
    erase_seconds,
    for_family,
    generate_seconds,
    invert_seconds,
    minutes,
    most_steps,
    rows,
    score_seconds,
    train_seconds,
)

if TYPE_CHECKING:
    from .plan import Plan


@dataclasses.dataclass(frozen=True)
class Resources:
    """The resources of every job of a plan."""

    plan: Plan

    @property
    def costs(self) -> dict[str, Cost]:
        """The per-unit costs of the plan's model family (`runtime.for_family`)."""
        return for_family(COSTS, self.plan.family)

    def gpus(self, device: str) -> int:
        """1 for a job that will compute on CUDA (GPU jobs then queue for --resources gpu=N,
        and each claims a GPU of its own when it starts)."""
        return int(will_use_cuda(device))

    def model_threads(self) -> int:
        """Threads of a job that runs the diffusion model: the tiny model's operations are too
        small to share across threads, and most of its jobs' time is single-threaded start-up
        (imports, loading), so one thread each lets two of them run at once on two cores."""
        return 1 if self.plan.model.embedded else 2

    def model_mem_mb(self, full_size: int) -> int:
        """Memory of a job that loads the diffusion model: the tiny model's jobs peak at 1.2
        GB (the embedded default's benchmark files), a full-size model's at `full_size`."""
        return 2000 if self.plan.model.embedded else full_size

    def index_mem_mb(self, dataset: str) -> int:
        """COCO's annotation files and ImageNet's file lists need more memory than the rest."""
        return 16000 if self.plan.datasets[dataset].kind in ("coco", "imagenet") else 4000

    def gpu_jobs(self) -> list[str]:
        """The sections whose jobs will compute on CUDA, as `section.device (value)`."""
        sections: list[tuple[str, Any]] = [
            ("model", self.plan.model),
            ("classifier", self.plan.classifier),
        ]
        if any(set(self.plan.scorers(d)) & set(DEVICE_SCORERS) for d in self.plan.datasets):
            sections.append(("scoring", self.plan.scoring))
        return [
            f"{section}.device ({settings.device})"
            for section, settings in sections
            if will_use_cuda(settings.device)
        ]

    def gpu_limit_error(self, local: bool, resources: Mapping[str, Any]) -> str | None:
        """Why the run must stop before any job, or None. GPU jobs queue for the `gpu`
        resource (the profile's gpu=1) and each claims a GPU of its own
        (dafusion.jobs.devices.claim_device), waiting while every GPU is taken. Any --resources on
        the command line replaces the profile's list, and without a gpu limit every GPU job
        would start at once, holding cores and memory while it waits for a GPU. A cluster
        (`local` false) gives each job its own GPU."""
        if not local or "gpu" in resources:
            return None
        keys = self.gpu_jobs()
        if not keys:
            return None
        return (
            f"GPU jobs ({', '.join(keys)}) would all start at once: --resources replaced "
            "the profile's gpu=1. Add gpu=1 to --resources (one GPU job at a time), or "
            "gpu=N on a machine with N GPUs (each GPU job claims one of its own)"
        )

    # Wall times, from the job's input manifests.

    def generate_minutes(
        self, dataset: str, set: str, split: str, attempt: int, *, parts: int | str
    ) -> int:
        """A generate job: its share of a set's images (`parts`, also as the wildcard's
        text), each at its largest t0's steps."""
        generation = self.plan.sets.generation(dataset, set)
        strengths = self.plan.methods[self.plan.sets.methods(dataset, set)[0]].strengths
        assert strengths is not None  # a synthetic set's methods all have them
        steps = most_steps(generation.num_inference_steps, strengths)
        seconds = generate_seconds(generation, rows(split), steps, self.costs) / int(parts)
        return minutes(seconds, attempt)

    def gather_minutes(self, attempt: int) -> int:
        """A gather_synthetic job: it reads the parts' rows and writes the index."""
        return minutes(0, attempt)

    def invert_minutes(self, split: str, attempt: int) -> int:
        seconds = invert_seconds(self.plan.inversion, class_count(split), self.costs)
        return minutes(seconds, attempt)

    def lora_minutes(self, split: str, attempt: int) -> int:
        """A lora job: an inversion of lora.steps steps (its backward reaches the LoRA's
        weights inside the UNet, which inversion's backward passes through anyway)."""
        inversion = self.plan.inversion.replace(steps=self.plan.lora.steps)
        return minutes(invert_seconds(inversion, class_count(split), self.costs), attempt)

    def erase_minutes(self, pool: str, attempt: int) -> int:
        # UCE needs no class count (and so no pool) for its estimate.
        classes = class_count(pool) if self.plan.erasure.method == "esd" else 0
        return minutes(erase_seconds(self.plan.erasure, classes, self.costs), attempt)

    def score_minutes(self, scorer: str, index: str, attempt: int) -> int:
        """A scoring job: every image of its set (the index's rows) through the scorer."""
        return minutes(score_seconds(scorer, rows(index), self.costs), attempt)

    def train_minutes(self, dataset: str, method: str, val: str, test: str, attempt: int) -> int:
        images = rows(val) + rows(test)
        seconds = train_seconds(self.plan.classifier_for(dataset, method), images)
        return minutes(seconds, attempt)
