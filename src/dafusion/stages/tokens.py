"""Class tokens: naming, prompt expansion, and adding learned embeddings to a text encoder.

A class token with V vectors follows diffusers' multi-vector convention: the token string
`<name>` stands for the V tokenizer entries `<name>`, `<name>_1`, ..., `<name>_{V-1}`, so a
tokens file loads the same way here and in diffusers' `load_textual_inversion`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..jobs.io import atomic_path


def sub_tokens(token: str, num_vectors: int) -> list[str]:
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def expand(prompt: str, token: str, num_vectors: int) -> str:
    """Replace a multi-vector token by its V tokenizer entries, as diffusers does."""
    return prompt.replace(token, " ".join(sub_tokens(token, num_vectors)))


def add_to_tokenizer(tokenizer, tokens: list[str], num_vectors: int) -> list[int]:
    """Register every sub-token; returns their ids in order. Errors on a clash."""
    names = [t for token in tokens for t in sub_tokens(token, num_vectors)]
    added = tokenizer.add_tokens(names)
    if added != len(names):
        raise ValueError(
            "some class tokens already exist in the tokenizer; class names must give distinct "
            f"tokens not in the vocabulary: {names}"
        )
    return tokenizer.convert_tokens_to_ids(names)


def load_into(components, path: str | Path) -> dict[str, int]:
    """Add the learned tokens of a tokens file to the tokenizer and text encoder.

    Returns token -> num_vectors for prompt expansion.
    """
    tensors = load_file(str(path))
    encoder = components.text_encoder
    weight_device = encoder.get_input_embeddings().weight.device
    sizes = {}
    for token, rows in tensors.items():
        ids = add_to_tokenizer(components.tokenizer, [token], rows.shape[0])
        # Rows are overwritten right after: skip the (costly) mean initialisation.
        encoder.resize_token_embeddings(len(components.tokenizer), mean_resizing=False)
        weight = encoder.get_input_embeddings().weight
        with torch.no_grad():
            weight[ids] = rows.to(device=weight_device, dtype=weight.dtype)
        sizes[token] = rows.shape[0]
    return sizes


def save_tokens(path: str | Path, tokens: dict[str, torch.Tensor], metadata: dict) -> None:
    """Write {token: [num_vectors, hidden]} as safetensors, atomically."""
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tokens.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"dafusion": json.dumps(metadata)})


def file_hash(path: str | Path) -> str:
    """sha256 of a file, recorded with each synthetic image it conditioned."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
