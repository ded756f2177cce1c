"""Model families: which kind of checkpoint a model is, read from its own files.

A diffusers checkpoint names its pipeline class in `model_index.json`; that class says how
a prompt is encoded and which conditioning the UNet takes. Stable Diffusion 1.x and 2.x are
one family in that sense (`StableDiffusionPipeline`: one CLIP text encoder, the UNet
conditioned on its hidden states); they differ in what the UNet predicts, which the
scheduler's `prediction_type` says (`epsilon`, or `v_prediction` for SD 2.x at 768 px), and
every stage reads it from there. Other families (SDXL's two text encoders, pooled
embeddings and size conditioning) are recognized and refused before any job.

Reads JSON only (no torch): the workflow checks the family while it starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Family:
    """A model family the stages drive, and the checkpoint's prediction type."""

    name: str
    pipeline: str
    prediction_type: str


# model_index.json's `_class_name` -> the family's name, for the families the stages drive.
SUPPORTED = {"StableDiffusionPipeline": "stable-diffusion"}
# Recognized, but their conditioning is not built into the stages yet.
SDXL = "SDXL (two text encoders, pooled embeddings, size conditioning)"
NOT_YET = {"StableDiffusionXLPipeline": SDXL, "StableDiffusionXLImg2ImgPipeline": SDXL}
PREDICTION_TYPES = ("epsilon", "v_prediction")


def model_family(folder: str | Path) -> Family:
    """The family of the diffusers checkpoint in `folder` (its `model_index.json` and
    `scheduler/scheduler_config.json`); a ValueError that names what it found otherwise."""
    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    pipeline = index.get("_class_name", "(none)")
    if pipeline in NOT_YET:
        raise ValueError(
            f"'{folder}' is a {pipeline} checkpoint, {NOT_YET[pipeline]}: this version drives "
            f"{', '.join(SUPPORTED)} checkpoints only (Stable Diffusion 1.x and 2.x)"
        )
    if pipeline not in SUPPORTED:
        components = sorted(  # entries like "unet": ["diffusers", "UNet2DConditionModel"]
            k for k, v in index.items() if isinstance(v, list) and v and v[0] is not None
        )
        raise ValueError(
            f"'{folder}' is a {pipeline} checkpoint (components: {', '.join(components)}), "
            f"not a model family this workflow drives: {', '.join(SUPPORTED)} "
            "(Stable Diffusion 1.x and 2.x)"
        )
    # A missing scheduler config is the files check's to report (workflow.machine).
    config = folder / "scheduler/scheduler_config.json"
    scheduler = json.loads(config.read_text()) if config.is_file() else {}
    prediction = scheduler.get("prediction_type", "epsilon")  # diffusers' default
    if prediction not in PREDICTION_TYPES:
        raise ValueError(
            f"'{folder}': its scheduler predicts '{prediction}'; the stages train and sample "
            f"{' or '.join(PREDICTION_TYPES)} models"
        )
    return Family(SUPPORTED[pipeline], pipeline, prediction)
