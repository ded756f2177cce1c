"""The cost model: each stage's work in seconds (`*_seconds`), and from it every rule's
`runtime` on a cluster (README, Running on a cluster).

One work formula per stage, from the job's settings and size, at per-unit costs (costs.json)
measured on one H200 with Stable Diffusion v1.4's full-size architecture
(docs/benchmarks.md; `benchmarks/gpu.sh` measures them all); the tiny model on a CPU costs
about as much per unit. A job's time limit (`minutes`, in Slurm's unit) is its work times
RUNTIME_MARGIN for slower GPUs, plus RUNTIME_START_MIN for start-up and model loading, never
below RUNTIME_START_MIN; a retry (profiles/slurm: retries) asks for `attempt` times that, so
a job killed at its time limit gets more the next time. `dafusion.workflow.estimate` sums the same
formulas over a config's grid, without the margin.

The work is read from the job's input manifests when Snakemake asks for the job's
resources; while a manifest is yet to be made, `rows` and `class_count` raise a
FileNotFoundError naming it, which Snakemake takes as 'resources to be determined'. No
workflow step imports this module (the Snakefile does).
"""

from __future__ import annotations

import errno
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..settings import (
    ClassifierSettings,
    ErasureSettings,
    GenerationSettings,
    InversionSettings,
    denoising_steps,
)

RUNTIME_MARGIN = 4
RUNTIME_START_MIN = 10
# The per-unit costs (seconds per unit), where each was measured, in costs.json beside this
# module; `benchmarks/gpu.sh` writes a file of the same form from its runs.
COSTS_FILE = Path(__file__).with_name("costs.json")
UNITS = {
    "generate": "per image and denoising step",
    "invert": "per class, sample and step",
    "erase": "per faithful ESD iteration at 50 DDIM steps",
    "train": "per classifier step",
    "train_tf32": "per classifier step, classifier.precision tf32",
    "train_bf16": "per classifier step, classifier.precision bf16",
    "eval": "per evaluated image",
    # Another family's costs of the stages that run its UNet (`for_family`).
    "generate_sdxl": "per image and denoising step, SDXL base at 1024 px",
    "invert_sdxl": "per class, sample and step, SDXL base at 1024 px",
    "erase_sdxl": "per faithful ESD iteration at 50 DDIM steps, SDXL base at 1024 px",
}
# The stages whose cost depends on the model family (dafusion.stages.families); the
# Stable Diffusion 1.x/2.x family's are the plain keys.
FAMILY_STAGES = ("generate", "invert", "erase")


@dataclass(frozen=True)
class Cost:
    """Seconds per unit of a stage's work (UNITS), and where they were measured (None: not
    measured, a guess, whose `basis` says how it was made)."""

    seconds: float
    measured: str | None
    basis: str | None = None


def read_costs(path: str | os.PathLike, base: Mapping[str, Cost] | None = None) -> dict[str, Cost]:
    """The per-unit costs of a costs file, over `base`'s (a file of `benchmarks/gpu.sh` holds
    only what it measured)."""
    entries = json.loads(Path(path).read_text())
    costs = dict(base or {})
    for key, entry in entries.items():
        if key not in UNITS:
            raise ValueError(f"{path}: unknown cost '{key}' (known: {', '.join(UNITS)})")
        seconds = entry.get("seconds")
        if not isinstance(seconds, int | float) or seconds <= 0:
            raise ValueError(f"{path}: cost '{key}' needs seconds > 0, not {seconds!r}")
        costs[key] = Cost(float(seconds), entry.get("measured"), entry.get("basis"))
    missing = [key for key in ("generate", "invert", "erase", "train", "eval") if key not in costs]
    if missing:
        raise ValueError(f"{path}: no cost for {', '.join(missing)}")
    return costs


COSTS = read_costs(COSTS_FILE)


def for_family(costs: Mapping[str, Cost], family: str) -> dict[str, Cost]:
    """`costs` with the family's own cost of each stage that runs its UNet in place of the
    plain key (`generate_sdxl` as `generate` for SDXL), where `costs` has one."""
    own = {
        stage: costs[f"{stage}_{family}"] for stage in FAMILY_STAGES if f"{stage}_{family}" in costs
    }
    return {**costs, **own}


# The DDIM steps ESD's `erase` cost was measured at (UNITS).
ESD_MEASURED_DDIM_STEPS = 50


def train_cost_key(classifier: ClassifierSettings, costs: Mapping[str, Cost] = COSTS) -> str:
    """The cost of a classifier step at its precision; float32's (`train`) where that one is
    not in `costs` (tf32 and bf16 are faster)."""
    key = f"train_{classifier.precision}"
    return key if key in costs else "train"


def _exists(path: str | os.PathLike) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "not made yet", str(path))


def rows(path: str | os.PathLike) -> int:
    """The number of rows of a parquet file."""
    import pyarrow.parquet as pq

    _exists(path)
    return pq.read_metadata(path).num_rows


def class_count(path: str | os.PathLike) -> int:
    """The number of classes (labels) in a manifest."""
    import pyarrow.parquet as pq

    _exists(path)
    return len(pq.read_table(path, columns=["label"]).column("label").unique())


def minutes(seconds: float, attempt: int) -> int:
    """A job's time limit for `seconds` of work, on its `attempt`-th try."""
    estimate = RUNTIME_START_MIN + RUNTIME_MARGIN * seconds / 60
    return math.ceil(estimate) * attempt


def mean_steps(num_inference_steps: int, strengths: Sequence[float]) -> float:
    """The denoising steps an image takes on average: each image's t0 is drawn uniformly
    from `strengths` (dafusion.stages.synthetic.draw_strength), so a grid's total is its images
    times this."""
    return sum(denoising_steps(num_inference_steps, s) for s in strengths) / len(strengths)


def most_steps(num_inference_steps: int, strengths: Sequence[float]) -> int:
    """The denoising steps of the largest t0: a bound on any one image's, for one job's time
    limit (a job's images may draw the large t0 more often than the mean says)."""
    return max(denoising_steps(num_inference_steps, s) for s in strengths)


def generate_seconds(
    generation: GenerationSettings,
    images: int,
    steps: float,
    costs: Mapping[str, Cost] = COSTS,
) -> float:
    """A synthetic set: source images x M x `steps` denoising steps per synthetic image
    (`mean_steps` or `most_steps`: SDEdit at t0 runs the last floor(S t0) of S steps)."""
    return images * generation.num_synthetic * steps * costs["generate"].seconds


def invert_seconds(
    inversion: InversionSettings, classes: int, costs: Mapping[str, Cost] = COSTS
) -> float:
    """Steps x classes x batch size (one joint inversion trains every class each step)."""
    return inversion.steps * classes * inversion.batch_size * costs["invert"].seconds


def erase_deltas(erasure: ErasureSettings, classes: int) -> int:
    """The ESD fine-tunings of a dataset: one delta per class, one for `scope: joint`."""
    return classes if erasure.scope == "class" else 1


def erase_seconds(
    erasure: ErasureSettings, classes: int, costs: Mapping[str, Cost] = COSTS
) -> float:
    """ESD: iterations x deltas, each iteration in proportion to `ddim_steps`: it samples
    x_t down about half of the DDIM steps (dafusion.stages.erasure.sample_until), about 25 guided
    UNet calls at the measured 50 against its training step's few, so the sampling is most
    of its time. UCE is closed form (seconds)."""
    if erasure.method != "esd":
        return 0
    per_iteration = costs["erase"].seconds * erasure.ddim_steps / ESD_MEASURED_DDIM_STEPS
    return erasure.iterations * erase_deltas(erasure, classes) * per_iteration


def evaluations(classifier: ClassifierSettings) -> int:
    """A run's evaluations: every eval_interval-th step and the last
    (dafusion.stages.classifier)."""
    return math.ceil(classifier.steps / classifier.eval_interval)


def eval_seconds(
    classifier: ClassifierSettings, eval_images: int, costs: Mapping[str, Cost] = COSTS
) -> float:
    """A run's evaluations of its `eval_images` evaluation images (val and test)."""
    return evaluations(classifier) * eval_images * costs["eval"].seconds


# The scorers that run a network on the job's device (`scoring.device`); `change` compares
# pixels on the CPU.
DEVICE_SCORERS = ("classifier", "clip")


def score_seconds(scorer: str, images: int, costs: Mapping[str, Cost] = COSTS) -> float:
    """A scoring job: each of the set's images through the scorer's network once, at the
    cost of a classifier evaluation image (a CLIP image tower is of a ResNet-50's size);
    `change`, which runs no network, counts nothing."""
    return images * costs["eval"].seconds if scorer in DEVICE_SCORERS else 0.0


def train_seconds(
    classifier: ClassifierSettings, eval_images: int, costs: Mapping[str, Cost] = COSTS
) -> float:
    """A classifier run: its steps at its precision's cost, and its evaluations."""
    step = costs[train_cost_key(classifier, costs)].seconds
    return classifier.steps * step + eval_seconds(classifier, eval_images, costs)
