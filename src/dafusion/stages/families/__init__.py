"""Model families: which kind of checkpoint a model is, read from its own files, and how
each family conditions its UNet.

A diffusers checkpoint names its pipeline class in `model_index.json`; that class says how
a prompt is encoded and which conditioning the UNet takes:

- `stable-diffusion` (`StableDiffusionPipeline`: SD 1.x and 2.x): one CLIP text encoder,
  the UNet conditioned on its last hidden states;
- `sdxl` (`StableDiffusionXLPipeline`, SDXL base): two CLIP text encoders whose penultimate
  hidden states are concatenated, plus the second one's pooled embedding and each image's
  size (`add_time_ids`) through the UNet's added conditioning.

What the UNet predicts (`epsilon`, or `v_prediction` for SD 2.x at 768 px) is the
scheduler's `prediction_type`, read here too. Each family's conditioning lives in its own
module (`stable_diffusion`, `sdxl`), loaded by `conditioner`; a new family (a flow-matching
one, say) is one more such module and one more entry in `SUPPORTED`.

This module reads JSON only (no torch): the workflow checks the family while it starts.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .conditioning import Conditioner


@dataclass(frozen=True)
class Family:
    """A model family the stages drive, as a checkpoint's files declare it."""

    name: str
    pipeline: str
    prediction_type: str
    # SDXL's pipelines condition on zeros, not on the encoded empty prompt, for the
    # unconditional half of classifier-free guidance when this is set (model_index.json).
    force_zeros_for_empty_prompt: bool = False


# model_index.json's `_class_name` -> the family's name, for the families the stages drive.
SUPPORTED = {
    "StableDiffusionPipeline": "stable-diffusion",
    "StableDiffusionImg2ImgPipeline": "stable-diffusion",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
}
# The module (under dafusion.stages.families) and class that condition each family's UNet.
CONDITIONERS = {
    "stable-diffusion": ("stable_diffusion", "StableDiffusion"),
    "sdxl": ("sdxl", "StableDiffusionXL"),
}
PREDICTION_TYPES = ("epsilon", "v_prediction")


def model_family(folder: str | Path) -> Family:
    """The family of the diffusers checkpoint in `folder` (its `model_index.json` and
    `scheduler/scheduler_config.json`); a ValueError that names what it found otherwise."""
    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    pipeline = index.get("_class_name", "(none)")
    components = sorted(  # entries like "unet": ["diffusers", "UNet2DConditionModel"]
        k for k, v in index.items() if isinstance(v, list) and v and v[0] is not None
    )
    if pipeline not in SUPPORTED:
        raise ValueError(
            f"'{folder}' is a {pipeline} checkpoint (components: {', '.join(components)}), "
            f"not a model family this workflow drives: {', '.join(sorted(set(SUPPORTED)))} "
            "(Stable Diffusion 1.x, 2.x and SDXL base)"
        )
    name = SUPPORTED[pipeline]
    if name == "sdxl" and (
        "text_encoder" not in components or index.get("requires_aesthetics_score")
    ):
        raise ValueError(
            f"'{folder}' is an SDXL refiner (components: {', '.join(components)}): it has one "
            "text encoder and is conditioned on an aesthetic score; the stages drive SDXL base "
            "checkpoints (two text encoders, size conditioning)"
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
    # The SDXL pipelines' default when model_index.json does not say.
    zeros = bool(index.get("force_zeros_for_empty_prompt", name == "sdxl"))
    return Family(name, pipeline, prediction, zeros)


def conditioner(family: Family) -> Conditioner:
    """The object that encodes prompts and conditions the UNet for `family` (imports torch)."""
    module, cls = CONDITIONERS[family.name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)(family)


# The files a VAE other than the checkpoint's is read from (AutoencoderKL.save_pretrained's
# layout, weights as safetensors only).
VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


def vae_source(setting: str, base_dir: str | Path = ".") -> tuple[Path, str | None]:
    """Where `model.vae` set to a VAE's folder or hub id reads it: (folder, subfolder).

    A VAE's own folder (`config.json` at its top, as madebyollin/sdxl-vae-fp16-fix ships)
    or a diffusers model's (`vae/config.json`), local (relative to `base_dir`) or a hub id in
    the local Hugging Face cache (never downloaded). File look-ups only, as the rest of this
    module: the start-up checks call it too. An OSError that names the key otherwise."""
    path = Path(base_dir) / Path(setting).expanduser()
    subfolders: tuple[str | None, ...] = (None, "vae")
    if path.is_dir():
        for sub in subfolders:
            folder = path / sub if sub else path
            if all((folder / name).is_file() for name in VAE_FILES):
                return path, sub
        raise OSError(
            f"config key 'model.vae': '{path}' holds no VAE: neither it nor its vae/ has "
            f"{' and '.join(VAE_FILES)} (as AutoencoderKL.save_pretrained writes them; pickle "
            "weights are never loaded)"
        )
    if setting.startswith(("/", ".", "~")) or setting.count("/") != 1:
        raise OSError(
            f"config key 'model.vae': directory '{path}' does not exist; give 'checkpoint', "
            "'float32', a VAE's local folder or a hub id such as madebyollin/sdxl-vae-fp16-fix"
        )
    from huggingface_hub import try_to_load_from_cache

    for sub in subfolders:
        prefix = f"{sub}/" if sub else ""
        try:
            found = [try_to_load_from_cache(setting, prefix + name) for name in VAE_FILES]
        except ValueError:  # not a valid repo id
            break
        paths = [f for f in found if isinstance(f, str)]
        if len(paths) == len(found):
            folder = Path(paths[0]).parent  # the cache's snapshot folder
            return (folder.parent, sub) if sub else (folder, None)
    raise OSError(
        f"config key 'model.vae': '{setting}' is 'checkpoint', 'float32', a local folder "
        "or a hub id in the local Hugging Face cache (HF_HOME, default ~/.cache/huggingface), "
        f"with {' and '.join(VAE_FILES)}; it is none of these, and nothing is downloaded here. "
        f"On a machine with internet run `hf download {setting}` and copy the cache over"
    )


def vae_upcast(family: Family, vae_config: dict) -> bool:
    """Whether a VAE runs in float32 under float16, as diffusers' pipelines of `family` run
    it: SDXL's when its config sets `force_upcast` (AutoencoderKL's default; SDXL base's
    VAE overflows in float16; madebyollin/sdxl-vae-fp16-fix sets it false). Stable
    Diffusion 1.x/2.x pipelines never upcast."""
    return family.name == "sdxl" and bool(vae_config.get("force_upcast", True))
