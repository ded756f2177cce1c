"""Wall times for a cluster (README, Running on a cluster): every rule's `runtime`.

In minutes (Slurm's unit), an estimate that scales with the job's work. Per-unit costs
measured on one H200 with Stable Diffusion v1.4's full-size architecture (README,
Benchmarks), times RUNTIME_MARGIN for slower GPUs, plus RUNTIME_START_MIN for start-up and
model loading; the tiny model on a CPU costs about as much per unit. Never below
RUNTIME_START_MIN. A retry (profiles/slurm: retries) asks for `attempt` times the estimate,
so a job killed at its time limit gets more the next time.

The work is read from the job's input manifests when Snakemake asks for the job's
resources; while a manifest is yet to be made, `rows` and `class_count` raise a
FileNotFoundError naming it, which Snakemake takes as 'resources to be determined'. No
workflow step imports this module (the Snakefile does).
"""

from __future__ import annotations

import errno
import math
import os

from .settings import ClassifierSettings, ErasureSettings, GenerationSettings, InversionSettings

RUNTIME_MARGIN = 4
RUNTIME_START_MIN = 10
# 3.57 images/s at 50 denoising steps (bfloat16, batch 32)
GENERATE_S_PER_IMAGE_STEP = 0.0056
# 20 steps x 4 classes x batch 4 in 3.7 s (float16)
INVERT_S_PER_SAMPLE_STEP = 0.0116
# faithful ESD: 1,257 s per class for 1000 iterations at 50 DDIM steps
ESD_S_PER_ITERATION = 1.26
# ResNet-50, 256 px, 20 classes: 400 steps in 5.2 s
TRAIN_S_PER_STEP = 0.013
# not measured: a ResNet-50 forward of one 256 px image, with margin
EVAL_S_PER_IMAGE = 0.002


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
    return classifier.steps * TRAIN_S_PER_STEP + evaluations * eval_images * EVAL_S_PER_IMAGE
