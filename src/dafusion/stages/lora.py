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

Each family saves and loads through its own pipeline class's LoRA mixin (`LORA_PIPELINES`):
SDXL's adapter is saved with `StableDiffusionXLPipeline.save_lora_weights(folder,
unet_lora_layers=...)` and loaded as `StableDiffusionXLPipeline.load_lora_weights` loads it,
as diffusers' train_dreambooth_lora_sdxl.py does (the same `LoraConfig` and `add_adapter`,
l. 1206-1232; saved l. 1953 and 1968-1973; loaded l. 1998; diffusers commit 58eb52c).

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


# Each family's diffusers pipeline class, whose LoRA mixin saves and loads its adapters
# (`save_lora_weights`, `lora_state_dict`, `load_lora_into_unet`).
LORA_PIPELINES = {
    "stable-diffusion": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
}


def lora_pipeline(family: str) -> Any:
    """The diffusers pipeline class whose LoRA mixin saves and loads `family`'s adapters."""
    import diffusers

    if family not in LORA_PIPELINES:
        raise ValueError(
            f"the LoRA learner drives the families {', '.join(LORA_PIPELINES)}, not '{family}'"
        )
    return getattr(diffusers, LORA_PIPELINES[family])


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


def save_adapter(
    folder: str | Path, state: Mapping[str, torch.Tensor], family: str = "stable-diffusion"
) -> None:
    """Write the adapter folder with the `family`'s pipeline's `save_lora_weights`
    (`LORA_PIPELINES`), atomically: written under a temporary name, then renamed into
    place."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        lora_pipeline(family).save_lora_weights(
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
    """Load a saved adapter into the UNet as the model family's `pipe.load_lora_weights(folder)`
    does (its `lora_state_dict` and `load_lora_into_unet`; SDXL's passes the UNet's config
    to `lora_state_dict`), at scale 1."""
    family = components.conditioner.family.name
    pipeline = lora_pipeline(family)
    path = Path(folder)
    if not (path / ADAPTER_FILE).is_file():
        raise FileNotFoundError(
            f"LoRA adapter '{path / ADAPTER_FILE}' is missing; rerun the lora job that "
            f"writes it (snakemake {path} --forcerun lora)"
        )
    # diffusers' StableDiffusionXLLoraLoaderMixin.load_lora_weights passes
    # unet_config=self.unet.config; StableDiffusionLoraLoaderMixin's passes nothing.
    kwargs = {"unet_config": components.unet.config} if family == "sdxl" else {}
    state, alphas = pipeline.lora_state_dict(str(path), **kwargs)
    pipeline.load_lora_into_unet(state, alphas, unet=components.unet)
    log.info("LoRA adapter %s loaded into the UNet", path)
