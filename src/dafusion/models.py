"""Loading Stable Diffusion components through one code path for every source.

`pretrained` is a local diffusers directory (the embedded tiny model is one) or a hub id
such as `CompVis/stable-diffusion-v1-4`, read from the local Hugging Face cache only:
nothing here touches the network. Weights are read from safetensors files only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Half precision only on CUDA; CPUs compute the tiny model in float32."""
    return DTYPES[name] if device.type == "cuda" else torch.float32


@dataclass
class Components:
    """The parts of a Stable Diffusion checkpoint the stages use."""

    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    scheduler: object
    model_id: str

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def load_components(pretrained: str, device: torch.device, dtype: torch.dtype) -> Components:
    """Load tokenizer, text encoder, VAE, UNet and scheduler, frozen, in eval mode."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    local = Path(pretrained).is_dir()
    kwargs = {} if local else {"local_files_only": True}
    try:
        tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer", **kwargs)
        text_encoder = CLIPTextModel.from_pretrained(
            pretrained, subfolder="text_encoder", use_safetensors=True, **kwargs
        )
        vae = AutoencoderKL.from_pretrained(
            pretrained, subfolder="vae", use_safetensors=True, **kwargs
        )
        unet = UNet2DConditionModel.from_pretrained(
            pretrained, subfolder="unet", use_safetensors=True, **kwargs
        )
        # Any scheduler class reads the JSON; the checkpoint's own class is then built from it.
        config = DDPMScheduler.load_config(pretrained, subfolder="scheduler", **kwargs)
    except OSError as exc:
        raise OSError(
            f"cannot load the Stable Diffusion model '{pretrained}' (config key "
            "'model.pretrained'): give 'tiny', a local diffusers directory, or a hub id whose "
            "safetensors weights are in the local Hugging Face cache (download it once with "
            f"`hf download {pretrained}` on a machine with internet). Cause: {exc}"
        ) from exc
    scheduler = scheduler_from_name(config.get("_class_name", "PNDMScheduler"), config)
    for module in (text_encoder, vae, unet):
        module.requires_grad_(False)
        module.eval()
        module.to(device=device, dtype=dtype)
    return Components(tokenizer, text_encoder, vae, unet, scheduler, model_id=str(pretrained))


def load_safety_checker(pretrained: str, device: torch.device, dtype: torch.dtype):
    """Stable Diffusion's safety checker as `images -> flagged` (the paper's Appendix A).

    Reads the checkpoint's `safety_checker` and `feature_extractor` subfolders.
    """
    import numpy as np
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    kwargs = {} if Path(pretrained).is_dir() else {"local_files_only": True}
    try:
        checker = StableDiffusionSafetyChecker.from_pretrained(
            pretrained, subfolder="safety_checker", use_safetensors=True, **kwargs
        )
        processor = CLIPImageProcessor.from_pretrained(
            pretrained, subfolder="feature_extractor", **kwargs
        )
    except OSError as exc:
        raise OSError(
            f"config key 'generation.safety_checker': the model '{pretrained}' has no "
            "safety_checker/feature_extractor in safetensors form; set it to false or use a "
            f"checkpoint that ships one. Cause: {exc}"
        ) from exc
    checker.to(device=device, dtype=dtype).eval()

    @torch.no_grad()
    def flagged(images) -> list[bool]:
        clip = processor(images, return_tensors="pt").pixel_values.to(device, dtype)
        arrays = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
        _, nsfw = checker(images=arrays, clip_input=clip)
        return [bool(x) for x in nsfw]

    return flagged


def scheduler_from_name(name: str, base):
    """The checkpoint's scheduler for 'default', else the named diffusers class on its config.

    `base` is a scheduler or a scheduler config.
    """
    if name == "default":
        return base
    import diffusers

    config = getattr(base, "config", base)
    if name == "fast":
        # A named deviation: DPM-Solver++ reaches SD quality in ~20-25 steps instead of 50.
        return diffusers.DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++"
        )

    cls = getattr(diffusers, name, None)
    if cls is None or not name.endswith("Scheduler"):
        raise ValueError(
            f"config key 'generation.scheduler': '{name}' is not a diffusers scheduler class; "
            "use 'default' or e.g. 'DPMSolverMultistepScheduler'"
        )
    return cls.from_config(config)
