"""The embedded default model: a tiny Stable Diffusion with fixed-seed random weights.

Same architecture family as Stable Diffusion v1 (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel with a byte-level BPE CLIPTokenizer, the v1 PNDM scheduler), small enough to
run every stage on a CPU in seconds. It is saved as an ordinary diffusers directory, so
every later stage loads it through the same `from_pretrained` path as a real checkpoint.
Its images are noise: results obtained with it test the plumbing, not the method.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path

import torch

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


def build_tiny_pipeline(seed: int = 0, resolution: int = 32):
    """Assemble the tiny StableDiffusionPipeline with weights drawn from `seed`."""
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp))
    hidden = 32
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=resolution // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=resolution,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 2)
    text_config = CLIPTextConfig(
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
    )
    text_encoder = CLIPTextModel(text_config)
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


def save_tiny_model(output_dir: str | Path, seed: int = 0, resolution: int = 32) -> None:
    """Build the tiny model and save it as a diffusers directory (safetensors weights)."""
    build_tiny_pipeline(seed, resolution).save_pretrained(str(output_dir), safe_serialization=True)


def save_random_sd_v1(output_dir: str | Path, seed: int = 0) -> None:
    """Stable Diffusion v1.4's full-size architecture with random weights, for benchmarks.

    Same shapes as CompVis/stable-diffusion-v1-4 (UNet 320-640-1280-1280, cross-attention
    768, VAE 128-256-512-512, CLIP ViT-L/14 text encoder with a 49,408-row vocabulary), so
    its speed and memory are the real model's; the tiny BPE tokenizer stands in for CLIP's.
    """
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny = build_tiny_pipeline(seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=8,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
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
