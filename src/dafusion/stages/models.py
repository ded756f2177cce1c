"""Loading diffusers components through one code path for every source and family.

`pretrained` is a local diffusers directory (the embedded tiny model is one) or a hub id
such as `CompVis/stable-diffusion-v1-4`, read from the local Hugging Face cache only:
nothing here touches the network. Weights are read from safetensors files only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..settings import UNSEEDABLE_SCHEDULERS, VAE_CHECKPOINT, VAE_FLOAT32
from .families import Family, conditioner, model_family, vae_source, vae_upcast
from .families.conditioning import Conditioner, Conditioning


@dataclass
class Components:
    """The parts of a diffusers checkpoint the stages use, and how its family conditions the
    UNet (`conditioner`; SDXL's second tokenizer and text encoder, None for SD 1.x/2.x)."""

    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    scheduler: object
    conditioner: Conditioner
    tokenizer_2: object | None = None
    text_encoder_2: torch.nn.Module | None = None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def text_encoders(self) -> list[tuple[object, torch.nn.Module]]:
        """The (tokenizer, text encoder) pairs a prompt goes through."""
        return self.conditioner.text_encoders(self)

    def encode(self, prompts: Sequence[str]) -> Conditioning:
        """The UNet's conditioning for `prompts` (the family's `Conditioner.encode`)."""
        return self.conditioner.encode(self, prompts)


def model_folder(pretrained: str) -> Path:
    """The folder holding `pretrained`: itself, or its snapshot in the local Hugging Face
    cache (never downloaded)."""
    if Path(pretrained).is_dir():
        return Path(pretrained)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(pretrained, "model_index.json")
    if not isinstance(cached, str):
        raise OSError(
            f"cannot load the model '{pretrained}' (config key 'model.pretrained'): it is not "
            f"in the local Hugging Face cache; download it once with `hf download {pretrained}` "
            "on a machine with internet and copy the cache over"
        )
    return Path(cached).parent


def load_vae(setting: str, folder: Path, family: Family, dtype: torch.dtype):
    """The VAE of `model.vae` (`setting`, `ModelSettings.vae`) for the checkpoint in `folder`,
    in the dtype it runs in: float32 for `float32`, and under float16 where the family's
    diffusers pipelines upcast it (`vae_upcast`: SDXL's with `force_upcast`); else `dtype`.

    diffusers' SDXL pipelines upcast the VAE for each encode and decode and cast it back;
    the stages keep it in float32 (its weights, 84M parameters, cost 0.17 GB more), and
    encode to float32 latents that the UNet's input takes in its own dtype."""
    from diffusers import AutoencoderKL

    own = setting in (VAE_CHECKPOINT, VAE_FLOAT32)
    source, sub = (folder, "vae") if own else vae_source(setting)
    kwargs = {"subfolder": sub} if sub else {}
    try:
        config = AutoencoderKL.load_config(source, **kwargs)
        upcast = setting == VAE_FLOAT32 or (dtype == torch.float16 and vae_upcast(family, config))
        # Cast while loading: diffusers' ModelMixin.to(dtype) logs a warning on every call.
        return AutoencoderKL.from_pretrained(
            source, use_safetensors=True, torch_dtype=torch.float32 if upcast else dtype, **kwargs
        )
    except OSError as exc:
        key = "model.pretrained" if own else "model.vae"
        raise OSError(
            f"cannot load the VAE '{setting}' (config key '{key}') from {source}"
            f"{'/' + sub if sub else ''}: it needs config.json and safetensors weights, as "
            f"save_pretrained writes them. Cause: {exc}"
        ) from exc


def load_components(
    pretrained: str, device: torch.device, dtype: torch.dtype, vae: str = VAE_CHECKPOINT
) -> Components:
    """Load tokenizers, text encoders, VAE, UNet and scheduler, frozen, in eval mode; the VAE
    that `vae` (`model.vae`) names, in the dtype it runs in (`load_vae`)."""
    import diffusers
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = model_folder(pretrained)
    family = model_family(folder)
    sdxl = family.name == "sdxl"
    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(
            folder, subfolder="text_encoder", use_safetensors=True
        )
        extra = {}
        if sdxl:
            extra["tokenizer_2"] = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2")
            extra["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
                folder, subfolder="text_encoder_2", use_safetensors=True
            )
        unet = UNet2DConditionModel.from_pretrained(
            folder, subfolder="unet", use_safetensors=True, torch_dtype=dtype
        )
        # Any scheduler class reads the JSON; the checkpoint's own class is then built from it.
        config = DDPMScheduler.load_config(folder, subfolder="scheduler")
    except OSError as exc:
        parts = "tokenizer/, text_encoder/, vae/, unet/"
        if sdxl:
            parts += ", tokenizer_2/, text_encoder_2/"
        raise OSError(
            f"cannot load the model '{pretrained}' (config key 'model.pretrained'): check "
            f"that {folder} holds {parts} and scheduler/ with safetensors weights (as "
            f"save_pretrained writes them). Cause: {exc}"
        ) from exc
    scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
    # Its errors name model.vae when it is another VAE (load_vae).
    autoencoder = load_vae(vae, folder, family, dtype)
    if autoencoder.config.latent_channels != unet.config.in_channels:
        raise ValueError(
            f"config key 'model.vae': the VAE '{vae}' makes {autoencoder.config.latent_channels}"
            f"-channel latents and the UNet of '{pretrained}' takes {unet.config.in_channels}; "
            "use a VAE of the model's family"
        )
    encoders = [text_encoder, *([extra["text_encoder_2"]] if sdxl else [])]
    for encoder in encoders:
        encoder.to(dtype=dtype)
    for module in (*encoders, autoencoder, unet):
        module.requires_grad_(False)
        module.eval()
        module.to(device=device)
    return Components(
        tokenizer, text_encoder, autoencoder, unet, scheduler, conditioner(family), **extra
    )


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
