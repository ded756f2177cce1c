"""`model.pretrained: tiny`: a tiny Stable Diffusion with fixed-seed random weights, for
testing the plumbing (the embedded default runs the trained miniature,
`dafusion.training.miniature`).

Same architecture family as Stable Diffusion v1 (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel with a byte-level BPE CLIPTokenizer, the v1 PNDM scheduler), small enough to
run every stage on a CPU in seconds. It is saved as an ordinary diffusers directory, so
every later stage loads it through the same `from_pretrained` path as a real checkpoint.
Its images are noise: results obtained with it test the plumbing, not the method.

Its weights are a function of (seed, component, parameter name, shape) only, not of the
libraries' own init code (which differs between diffusers and transformers releases): every
parameter is overwritten with draws from a generator seeded by its name (`reinitialize`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import tempfile
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from ..jobs.seeds import derive_seed

# Words the tiny tokenizer learns as single tokens: the prompt templates, the digits'
# class names and the initializer word. Anything else still tokenizes, into smaller pieces.
CORPUS = (
    "a photo of the {} a rendering of a cropped photo clean dirty dark bright good close-up "
    "nice small large weird cool class name token picture image drone handwritten digit "
    "zero one two three four five six seven eight nine"
)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode map (as in GPT-2)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def learn_bpe(corpus: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn BPE merges until every corpus word is one token; return (vocab, merges).

    The vocabulary starts, as CLIP's does, with the 256 byte symbols and their end-of-word
    forms, so any text tokenizes; merges and the two special tokens follow.
    """
    byte_map = _bytes_to_unicode()
    symbols = list(byte_map.values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    words = Counter(re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", corpus.lower()))
    splits = {}
    for word in words:
        chars = [byte_map[b] for b in word.encode("utf-8")]
        chars[-1] += "</w>"
        splits[word] = chars
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for word, parts in splits.items():
            for a, b in zip(parts, parts[1:], strict=False):
                pairs[a, b] += words[word]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        vocab_list.append(best[0] + best[1])
        for word, parts in splits.items():
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            splits[word] = merged
    vocab_list += [BOS, EOS]
    return {token: i for i, token in enumerate(vocab_list)}, merges


def build_tokenizer(workdir: Path):
    """A real CLIPTokenizer built from vocab.json and merges.txt files."""
    from transformers import CLIPTokenizer

    vocab, merges = learn_bpe(CORPUS)
    vocab_file, merges_file = workdir / "vocab.json", workdir / "merges.txt"
    vocab_file.write_text(json.dumps(vocab))
    merges_file.write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)


def canonical_name(component: str, name: str) -> str:
    """A parameter's name as every library version spells it: transformers 5 dropped the
    `text_model.` level of CLIPTextModel, so the text encoders' names are taken without it."""
    return name.removeprefix("text_model.") if component.startswith("text_encoder") else name


def _uniform(seed: int, shape: torch.Size, bound: float) -> torch.Tensor:
    """Uniform draws on [-bound, bound) from a CPU generator seeded with `seed`.

    Uniform rather than normal: torch's CPU normal sampler has a vectorized (AVX2) path whose
    transcendental approximations may differ in the last bit from the scalar one; `rand`
    plus float64 arithmetic is exact, so the values are the same on every CPU and release.
    """
    generator = torch.Generator().manual_seed(seed)
    draws = torch.rand(shape, generator=generator, dtype=torch.float64)
    return ((2 * draws - 1) * bound).to(torch.float32)


def reinitialize(model: nn.Module, component: str, seed: int) -> None:
    """Overwrite every parameter of `model` with values that depend only on (seed, component,
    canonical parameter name, shape), in init families that keep the model sane.

    Linear and convolution weights: uniform with PyTorch's default bound 1/sqrt(fan_in);
    embeddings: uniform with std 0.02 (CLIP's); norm weights: ones; every bias: zeros.
    Buffers are left as the library made them; a floating-point tensor in the state dict
    that is not a parameter (one a new library release might randomize) is an error.
    """
    done = set()
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                name = f"{module_name}.{param_name}" if module_name else param_name
                key = canonical_name(component, name)
                if param_name == "bias":
                    values = torch.zeros(param.shape)
                elif isinstance(module, nn.GroupNorm | nn.LayerNorm):
                    values = torch.ones(param.shape)
                elif isinstance(module, nn.Embedding):
                    values = _uniform(
                        derive_seed("tiny", seed, component, key), param.shape, 0.02 * math.sqrt(3)
                    )
                elif isinstance(module, nn.Linear | nn.Conv2d):
                    fan_in = param[0].numel()
                    values = _uniform(
                        derive_seed("tiny", seed, component, key),
                        param.shape,
                        1 / math.sqrt(fan_in),
                    )
                else:
                    raise TypeError(
                        f"tiny model: no init family for {component} parameter {name} "
                        f"({type(module).__name__}); add one to dafusion.stages.tiny.reinitialize"
                    )
                param.copy_(values)
                done.add(name)
    for name, tensor in model.state_dict().items():
        if name not in done and tensor.is_floating_point():
            raise TypeError(
                f"tiny model: {component} state tensor {name} is not a parameter and would "
                "keep the library's own init; give it a value in dafusion.stages.tiny.reinitialize"
            )


def weights_digest(model_dir: str | Path) -> str:
    """sha256 of a saved tiny model's tensors (canonical name, dtype, shape, bytes), the same
    whichever library version wrote the files."""
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for component, file in (
        ("unet", "unet/diffusion_pytorch_model.safetensors"),
        ("vae", "vae/diffusion_pytorch_model.safetensors"),
        ("text_encoder", "text_encoder/model.safetensors"),
    ):
        tensors = {
            canonical_name(component, name): tensor
            for name, tensor in load_file(Path(model_dir) / file).items()
        }
        for name in sorted(tensors):
            tensor = tensors[name].contiguous()
            header = f"{component}/{name}/{tensor.dtype}/{tuple(tensor.shape)}\n"
            digest.update(header.encode())
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _tiny_text_config(tokenizer, hidden: int, projection: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=3,
        max_position_embeddings=77,
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **({"projection_dim": projection} if projection else {}),
    )


def build_tiny_pipeline(seed: int = 0, resolution: int = 32, family: str = "stable-diffusion"):
    """Assemble the tiny StableDiffusionPipeline (or, for `family` 'sdxl', the tiny
    StableDiffusionXLPipeline) with weights drawn from `seed`.

    The SDXL one is built as diffusers' own SDXL tests build theirs: two CLIP text encoders
    (the second with a projection, whose pooled output and the six size ids feed the UNet's
    `text_time` added embedding), their hidden states concatenated as the cross-attention
    context, SDXL's Euler scheduler and VAE scaling factor.

    The libraries' own init runs on the global generator and is then overwritten whole, so
    nothing of it survives (tests/unit/stages/test_tiny.py checks two builds are byte-identical)."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if family not in ("stable-diffusion", "sdxl"):
        raise ValueError(f"tiny model: unknown family '{family}'")
    sdxl = family == "sdxl"
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp))
    hidden = 32
    added = (
        {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + hidden,
            "use_linear_projection": True,
        }
        if sdxl
        else {}
    )
    unet = UNet2DConditionModel(
        sample_size=resolution // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,  # one block per level: half the UNet work of two
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * hidden if sdxl else hidden,
        attention_head_dim=8,
        norm_num_groups=32,
        **added,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=resolution,
        norm_num_groups=32,
        **({"scaling_factor": 0.13025} if sdxl else {}),  # SDXL's VAE's
    )
    text_encoder = CLIPTextModel(_tiny_text_config(tokenizer, hidden))
    models = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    if sdxl:
        models["text_encoder_2"] = CLIPTextModelWithProjection(
            _tiny_text_config(tokenizer, hidden, projection=hidden)
        )
    for component, model in models.items():
        reinitialize(model, component, seed)
    if sdxl:
        # stabilityai/stable-diffusion-xl-base-1.0's scheduler configuration.
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            steps_offset=1,
            timestep_spacing="leading",
        )
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=models["text_encoder_2"],
            tokenizer=tokenizer,
            tokenizer_2=copy.deepcopy(tokenizer),
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
        )
    # Stable Diffusion v1-4's own scheduler configuration.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_model(
    output_dir: str | Path, seed: int = 0, resolution: int = 32, family: str = "stable-diffusion"
) -> None:
    """Build the tiny model and save it as a diffusers directory (safetensors weights)."""
    pipe = build_tiny_pipeline(seed, resolution, family)
    pipe.save_pretrained(str(output_dir), safe_serialization=True)


def sd_v1_unet():
    """Stable Diffusion v1.4's UNet architecture (64x64 latents), random weights."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=8,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )


def sdxl_unet():
    """SDXL base 1.0's UNet architecture (128x128 latents, 2.57 B parameters), random weights."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128,
        cross_attention_dim=2048,
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )


def save_random_sd_v1(output_dir: str | Path, seed: int = 0) -> None:
    """Stable Diffusion v1.4's full-size architecture with random weights, for benchmarks.

    Same shapes as CompVis/stable-diffusion-v1-4 (UNet 320-640-1280-1280, cross-attention
    768, VAE 128-256-512-512, CLIP ViT-L/14 text encoder with a 49,408-row vocabulary), so
    its speed and memory are the real model's; the tiny BPE tokenizer stands in for CLIP's.
    """
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny = build_tiny_pipeline(seed)
    torch.manual_seed(seed)
    unet = sd_v1_unet()
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    tokenizer = tiny.tokenizer
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=tiny.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(output_dir), safe_serialization=True)


def sdxl_vae():
    """SDXL base 1.0's VAE architecture (1024 px, `force_upcast`), random weights."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=1024,
        scaling_factor=0.13025,
        force_upcast=True,
    )


def save_random_sdxl(output_dir: str | Path, seed: int = 0, dtype=torch.float16) -> None:
    """SDXL base 1.0's full-size architecture with random weights, for benchmarks.

    Same shapes as stabilityai/stable-diffusion-xl-base-1.0 (the UNet of `sdxl_unet`, the VAE
    of `sdxl_vae`, CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text encoders with 49,408-row
    vocabularies, its Euler scheduler), so its speed and memory are the real model's; the
    tiny BPE tokenizer stands in for CLIP's. Saved in `dtype` (float16: 7 GB, as the
    checkpoint's fp16 variant), which `load_components` casts to the dtype asked for."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tiny = build_tiny_pipeline(seed, family="sdxl")
    tokenizer = tiny.tokenizer
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "vocab_size": 49408,
        "max_position_embeddings": 77,
    }
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            hidden_act="quick_gelu",
            projection_dim=768,
            **special,
        )
    )
    text_encoder_2 = CLIPTextModelWithProjection(
        CLIPTextConfig(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=20,
            hidden_act="gelu",
            projection_dim=1280,
            **special,
        )
    )
    pipe = StableDiffusionXLPipeline(
        vae=sdxl_vae(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=copy.deepcopy(tokenizer),
        unet=sdxl_unet(),
        scheduler=tiny.scheduler,
        force_zeros_for_empty_prompt=True,
    )
    pipe.to(dtype=dtype)
    pipe.save_pretrained(str(output_dir), safe_serialization=True)
