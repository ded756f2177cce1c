"""LoRA adapters on the UNet: built, saved and loaded with diffusers' own peft plumbing.

A `learner: lora` method's class tokens are learned together with a small LoRA on the UNet's
attention projections (`dafusion.stages.lora_learner`); its generate jobs load the adapter
here. The LoRA is built as diffusers' train_dreambooth_lora.py builds it (l. 940-947:
`LoraConfig(r, lora_alpha, init_lora_weights="gaussian", target_modules)` and
`unet.add_adapter`) and saved as that script saves it (l. 1411-1422:
`get_peft_model_state_dict`, `convert_state_dict_to_diffusers`, `save_lora_weights`), so
`pipe.load_lora_weights(folder)` loads it; the engine loads it through the same loader
(`load_adapter`). `lora.alpha` is folded into the up matrices when saving (diffusers'
loaders read alpha = rank where a file records none), so every diffusers version applies
the trained scale.

This module imports no other stage: a generate job's code (`dafusion.provenance`) holds it,
not the learner's.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..settings import LoraSettings

log = logging.getLogger(__name__)

# The file diffusers' `save_lora_weights` writes and `load_lora_weights(folder)` reads.
ADAPTER_FILE = "pytorch_lora_weights.safetensors"


def refuse_other_families(components: Any) -> None:
    """The LoRA learner drives the Stable Diffusion 1.x/2.x family (a workflow run refuses
    another family at start-up: `dafusion.workflow.machine`)."""
    if getattr(components, "text_encoder_2", None) is not None:
        raise ValueError(
            "the LoRA learner is built for Stable Diffusion 1.x and 2.x (one text encoder); "
            "this model has two (SDXL)"
        )


def add_lora(unet: Any, settings: LoraSettings) -> dict[str, torch.nn.Parameter]:
    """A trainable LoRA on the UNet's attention projections; returns its parameters by name
    (float32 whatever the UNet's dtype, as diffusers' `cast_training_params` leaves them)."""
    from peft import LoraConfig

    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.scale_alpha,
        init_lora_weights="gaussian",
        target_modules=list(settings.projections),
    )
    unet.add_adapter(config)
    params = {name: p for name, p in unet.named_parameters() if "lora_" in name}
    for p in params.values():
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def adapter_state(unet: torch.nn.Module, settings: LoraSettings) -> dict[str, torch.Tensor]:
    """The LoRA's weights as diffusers saves them (`convert_state_dict_to_diffusers` of the
    peft state dict), with alpha / rank folded into each up matrix, on the CPU in float32."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    scale = settings.scale_alpha / settings.rank
    state = {}
    for key, value in get_peft_model_state_dict(unet).items():
        value = value.detach().to("cpu", torch.float32)
        if "lora_B" in key and scale != 1.0:
            value = value * scale
        state[key] = value.contiguous()
    return convert_state_dict_to_diffusers(state)


def save_adapter(folder: str | Path, state: Mapping[str, torch.Tensor]) -> None:
    """Write the adapter folder with diffusers' `save_lora_weights`, atomically: written
    under a temporary name, then renamed into place."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        StableDiffusionPipeline.save_lora_weights(
            str(tmp), unet_lora_layers=dict(state), safe_serialization=True
        )
        for path in tmp.iterdir():  # safetensors writes 0600: results are readable as usual
            path.chmod(0o644)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def adapter_hash(folder: str | Path) -> str:
    """sha256 of an adapter folder's weights file (a generate job's fingerprint holds it)."""
    from .tokens import file_hash

    return file_hash(Path(folder) / ADAPTER_FILE)


def load_adapter(components: Any, folder: str | Path) -> None:
    """Load a saved adapter into the UNet as `pipe.load_lora_weights(folder)` does
    (diffusers' `lora_state_dict` and `load_lora_into_unet`), at scale 1."""
    from diffusers import StableDiffusionPipeline

    refuse_other_families(components)
    path = Path(folder)
    if not (path / ADAPTER_FILE).is_file():
        raise FileNotFoundError(
            f"LoRA adapter '{path / ADAPTER_FILE}' is missing; rerun the lora job that "
            f"writes it (snakemake {path} --forcerun lora)"
        )
    state, alphas = StableDiffusionPipeline.lora_state_dict(str(path))
    StableDiffusionPipeline.load_lora_into_unet(state, alphas, unet=components.unet)
    log.info("LoRA adapter %s loaded into the UNet", path)
