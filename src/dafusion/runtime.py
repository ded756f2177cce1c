"""Wall times for a cluster (README, Running on a cluster): every rule's `runtime`.

In minutes (Slurm's unit), an estimate that scales with the job's work. Per-unit costs
(costs.json) measured on one H200 with Stable Diffusion v1.4's full-size architecture
(docs/benchmarks.md; `benchmarks/gpu.sh` measures them all), times RUNTIME_MARGIN for
slower GPUs, plus RUNTIME_START_MIN for start-up and model loading; the tiny model on a CPU
costs about as much per unit. Never below RUNTIME_START_MIN. A retry (profiles/slurm:
retries) asks for `attempt` times the estimate, so a job killed at its time limit gets more
the next time.

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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .settings import ClassifierSettings, ErasureSettings, GenerationSettings, InversionSettings

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
}


@dataclass(frozen=True)
class Cost:
    """Seconds per unit of a stage's work (UNITS), and where they were measured (None: not
    measured, a guess)."""

    seconds: float
    measured: str | None


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
        costs[key] = Cost(float(seconds), entry.get("measured"))
    missing = [key for key in ("generate", "invert", "erase", "train", "eval") if key not in costs]
    if missing:
        raise ValueError(f"{path}: no cost for {', '.join(missing)}")
    return costs


COSTS = read_costs(COSTS_FILE)
GENERATE_S_PER_IMAGE_STEP = COSTS["generate"].seconds
INVERT_S_PER_SAMPLE_STEP = COSTS["invert"].seconds
ESD_S_PER_ITERATION = COSTS["erase"].seconds
TRAIN_S_PER_STEP = COSTS["train"].seconds
EVAL_S_PER_IMAGE = COSTS["eval"].seconds


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


def generate_seconds(generation: GenerationSettings, images: int) -> float:
    """A synthetic set: source images x M x denoising steps."""
    work = images * generation.num_synthetic * generation.num_inference_steps
    return work * GENERATE_S_PER_IMAGE_STEP


def invert_seconds(inversion: InversionSettings, classes: int) -> float:
    """Steps x classes x batch size (one joint inversion trains every class each step)."""
    return inversion.steps * classes * inversion.batch_size * INVERT_S_PER_SAMPLE_STEP


def erase_seconds(erasure: ErasureSettings, classes: int) -> float:
    """ESD: iterations x classes (one delta per class; one for `scope: joint`), scaled by the
    DDIM steps it samples with; UCE is closed form (seconds)."""
    if erasure.method != "esd":
        return 0
    deltas = classes if erasure.scope == "class" else 1
    per_iteration = ESD_S_PER_ITERATION * erasure.ddim_steps / 50
    return erasure.iterations * deltas * per_iteration


def train_seconds(classifier: ClassifierSettings, eval_images: int) -> float:
    """Steps, plus an evaluation of the validation (and test) images every eval_interval."""
    evaluations = classifier.steps // classifier.eval_interval + 1
    step = COSTS[train_cost_key(classifier)].seconds
    return classifier.steps * step + evaluations * eval_images * EVAL_S_PER_IMAGE
