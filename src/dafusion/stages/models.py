"""Loading Stable Diffusion components through one code path for every source.

`pretrained` is a local diffusers directory (the embedded tiny model is one) or a hub id
such as `CompVis/stable-diffusion-v1-4`, read from the local Hugging Face cache only:
nothing here touches the network. Weights are read from safetensors files only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..settings import UNSEEDABLE_SCHEDULERS


@dataclass
class Components:
    """The parts of a Stable Diffusion checkpoint the stages use."""

    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    scheduler: object

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def encode_text(components: Components, prompts: Sequence[str]) -> torch.Tensor:
    """The UNet's text conditioning: prompts padded to the tokenizer's length, then encoded.

    Gradients flow (textual inversion trains the token rows through it); inference callers
    wrap it in `torch.no_grad`.
    """
    ids = tokenize(components.tokenizer, prompts)
    return components.text_encoder(ids.to(components.text_encoder.device))[0]


def tokenize(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's length, as Stable Diffusion's pipelines pad."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def load_components(pretrained: str, device: torch.device, dtype: torch.dtype) -> Components:
    """Load tokenizer, text encoder, VAE, UNet and scheduler, frozen, in eval mode."""
    import diffusers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    local = Path(pretrained).is_dir()
    kwargs = {} if local else {"local_files_only": True}
    try:
        tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer", **kwargs)
        text_encoder = CLIPTextModel.from_pretrained(
            pretrained, subfolder="text_encoder", use_safetensors=True, **kwargs
        )
        # Cast while loading: diffusers' ModelMixin.to(dtype) logs a warning on every call.
        vae = AutoencoderKL.from_pretrained(
            pretrained, subfolder="vae", use_safetensors=True, torch_dtype=dtype, **kwargs
        )
        unet = UNet2DConditionModel.from_pretrained(
            pretrained, subfolder="unet", use_safetensors=True, torch_dtype=dtype, **kwargs
        )
        # Any scheduler class reads the JSON; the checkpoint's own class is then built from it.
        config = DDPMScheduler.load_config(pretrained, subfolder="scheduler", **kwargs)
    except OSError as exc:
        fix = (
            "check that the directory holds tokenizer/, text_encoder/, vae/, unet/ and "
            "scheduler/ with safetensors weights (as save_pretrained writes them)"
            if local
            else f"download it once with `hf download {pretrained}` on a machine with internet "
            "and copy the Hugging Face cache over"
        )
        raise OSError(
            f"cannot load the Stable Diffusion model '{pretrained}' (config key "
            f"'model.pretrained'): {fix}. Cause: {exc}"
        ) from exc
    scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
    text_encoder.to(dtype=dtype)
    for module in (text_encoder, vae, unet):
        module.requires_grad_(False)
        module.eval()
        module.to(device=device)
    return Components(tokenizer, text_encoder, vae, unet, scheduler)


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


def scheduler_class(name: str, setting: str | None = None):
    """The diffusers scheduler class of that name, refused if it cannot draw noise per image.

    A stochastic scheduler whose step takes no generator would make outputs depend on batch
    size and order. Checked at start-up (config validation) and again when a job builds it;
    `setting` is the configured value when it differs from the class name ('default').
    """
    import diffusers

    if name in UNSEEDABLE_SCHEDULERS:
        shown = f"'{setting}' ({name})" if setting else f"'{name}'"
        raise ValueError(
            f"config key 'generation.scheduler': {shown} is stochastic but its step takes no "
            "generator, so its noise cannot be drawn per image and results would depend on "
            "batch size and order; use a deterministic scheduler (e.g. 'fast' or "
            "'DDIMScheduler') or a per-image seedable stochastic one (e.g. "
            "'EulerAncestralDiscreteScheduler')"
        )
    cls = getattr(diffusers, name, None) if name.endswith("Scheduler") else None
    if cls is None:
        raise ValueError(
            f"config key 'generation.scheduler': '{name}' is not a diffusers scheduler class; "
            "use 'default', 'fast' or a class name such as 'DPMSolverMultistepScheduler'"
        )
    return cls


def scheduler_from_name(name: str, base):
    """The scheduler generation samples with: `base` (the checkpoint's) for 'default', else
    the named diffusers class on its config."""
    if name == "default":
        scheduler_class(type(base).__name__, setting=name)  # the checkpoint's own, checked too
        return base
    if name == "fast":
        import diffusers

        # A named deviation: DPM-Solver++ reaches SD quality in ~20-25 steps instead of 50.
        return diffusers.DPMSolverMultistepScheduler.from_config(
            base.config, algorithm_type="dpmsolver++"
        )
    return scheduler_class(name).from_config(base.config)
