"""The `clip` scorer: how well each synthetic image matches its class prompt under CLIP.

The cosine similarity, in [-1, 1], of the image's CLIP embedding and that of the class
prompt (`clip_prompt`, "a photo of a {name}" by default, with the class name of the image's
source), both through CLIP's projections, as He et al.'s Real Guidance and Diff-Mix filter
their images (CLIPScore's 100 * max(cos, 0) is a rescaling of it). The CLIP model is the
one the user names: a hub id read from the local Hugging Face cache only, or a local
folder, loaded with transformers' `CLIPModel` from safetensors weights, its tokenizer and
its image processor.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image

from . import read_set, write_scores


def load_clip(model: str, device: torch.device | str = "cpu") -> tuple[Any, Any, Any]:
    """(CLIPModel in eval mode, CLIPTokenizer, CLIPImageProcessor) of a hub id in the local
    Hugging Face cache or of a local folder; safetensors weights only."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    try:
        clip: Any = CLIPModel.from_pretrained(model, use_safetensors=True, local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(model, local_files_only=True)
        processor = CLIPImageProcessor.from_pretrained(model, local_files_only=True)
    except OSError as exc:
        raise OSError(
            f"CLIP model '{model}' for the clip scorer is neither a local folder nor in the "
            f"local Hugging Face cache with safetensors weights (`hf download {model}` on a "
            f"machine with internet): {exc}"
        ) from exc
    return clip.to(device).eval(), tokenizer, processor


@torch.no_grad()
def text_embeddings(clip: Any, tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    """Unit-length projected embeddings [P, D] of the prompts."""
    device = clip.text_projection.weight.device
    tokens = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(device)
    hidden = clip.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    embeddings = clip.text_projection(hidden.pooler_output).float()
    return embeddings / embeddings.norm(dim=-1, keepdim=True)


@torch.no_grad()
def image_embeddings(clip: Any, processor: Any, images: list[Image.Image]) -> torch.Tensor:
    """Unit-length projected embeddings [N, D] of RGB images."""
    device = clip.visual_projection.weight.device
    pixel_values = processor(images=images, return_tensors="pt").pixel_values
    hidden = clip.vision_model(pixel_values=pixel_values.to(device, clip.dtype))
    embeddings = clip.visual_projection(hidden.pooler_output).float()
    return embeddings / embeddings.norm(dim=-1, keepdim=True)


def score(
    index_path: str | Path,
    model: str,
    prompt: str = "a photo of a {name}",
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> pd.DataFrame:
    """`key` and `clip_score` of every image of the set of `index_path`: the cosine of its
    embedding and that of `prompt` with its class name, under CLIP model `model`."""
    clip, tokenizer, processor = load_clip(model, device)
    rows, images = read_set(index_path)
    if rows.empty:  # every image dropped by the safety checker
        return pd.DataFrame({"key": rows["key"], "clip_score": pd.Series(dtype="float64")})
    names = sorted(set(rows["class_name"]))
    texts = text_embeddings(clip, tokenizer, [prompt.format(name=n) for n in names]).cpu()
    position = {name: i for i, name in enumerate(names)}
    which = torch.as_tensor([position[n] for n in rows["class_name"]], dtype=torch.long)
    scores = []
    for start in range(0, len(images), batch_size):
        batch = [
            Image.open(io.BytesIO(d)).convert("RGB") for d in images[start : start + batch_size]
        ]
        embedded = image_embeddings(clip, processor, batch).cpu()
        scores += (embedded * texts[which[start : start + len(batch)]]).sum(dim=1).tolist()
    return pd.DataFrame({"key": rows["key"], "clip_score": scores})


def write(
    index_path: str | Path,
    model: str,
    output: str | Path,
    prompt: str = "a photo of a {name}",
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> pd.DataFrame:
    """Score the set and write `scores-clip.parquet` atomically."""
    frame = score(index_path, model, prompt, device, batch_size)
    write_scores(frame, output, "clip", {"model": model, "prompt": prompt})
    return frame
