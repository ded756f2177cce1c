"""Class tokens: naming, prompt expansion, and adding learned embeddings to a text encoder.

A class token with V vectors follows diffusers' multi-vector convention: the token string
`<name>` stands for the V tokenizer entries `<name>`, `<name>_1`, ..., `<name>_{V-1}`, so a
tokens file loads the same way here and in diffusers' `load_textual_inversion`.

A model with one text encoder (Stable Diffusion 1.x, 2.x) has tokens files
`{token: [num_vectors, hidden]}`. SDXL learns each token in both text encoders; its files
name the encoder before the token, with the names of the common SDXL embedding layout
(`clip_l` for `text_encoder`, `clip_g` for `text_encoder_2`): a split's file holds
`clip_l/<token>` and `clip_g/<token>` (`file_tensors`), a class's export file
`{"clip_l": rows, "clip_g": rows}` (`class_file_tensors`). Each tensor loads with
`pipe.load_textual_inversion(rows, token=token, text_encoder=..., tokenizer=...)` into its
encoder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
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


# The names of SDXL's two text encoders in its embedding files (text_encoder, text_encoder_2).
SDXL_ENCODERS = ("clip_l", "clip_g")


def file_tensors(encoders: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A split's tokens file from each text encoder's rows per token (in
    `Components.text_encoders` order): `{token: rows}` for one encoder, as ever;
    `{"clip_l/<token>": rows, "clip_g/<token>": rows}` for SDXL's two."""
    if len(encoders) == 1:
        return dict(encoders[0])
    if len(encoders) != len(SDXL_ENCODERS):
        raise ValueError(f"tokens files hold one or two text encoders' rows, not {len(encoders)}")
    return {
        f"{name}/{token}": rows
        for name, rows_of in zip(SDXL_ENCODERS, encoders, strict=True)
        for token, rows in rows_of.items()
    }


def class_file_tensors(
    encoders: Sequence[Mapping[str, torch.Tensor]], token: str
) -> dict[str, torch.Tensor]:
    """One class's export file: `{token: rows}` for one text encoder (diffusers'
    `load_textual_inversion(path)` and AUTOMATIC1111 read it), the common SDXL embedding
    layout `{"clip_l": rows, "clip_g": rows}` for two."""
    if len(encoders) == 1:
        return {token: encoders[0][token]}
    return {name: rows_of[token] for name, rows_of in zip(SDXL_ENCODERS, encoders, strict=True)}


def encoder_rows(
    tensors: Mapping[str, torch.Tensor], encoders: int
) -> list[dict[str, torch.Tensor]]:
    """Each text encoder's rows per token of a split's tokens file (`file_tensors`'s
    inverse), for a model with `encoders` text encoders; an error if the file was learned
    on a model with another number."""
    sdxl = any(key.partition("/")[0] in SDXL_ENCODERS for key in tensors)
    if (encoders == 2) != sdxl or encoders not in (1, 2):
        held = "two text encoders' rows (SDXL's)" if sdxl else "one text encoder's rows"
        raise ValueError(
            f"the tokens file holds {held}, but this model has {encoders} text encoder(s): "
            "learn the tokens with the model that generates"
        )
    if not sdxl:
        return [dict(tensors)]
    parts: list[dict[str, torch.Tensor]] = [{} for _ in SDXL_ENCODERS]
    for key, rows in tensors.items():
        name, _, token = key.partition("/")
        parts[SDXL_ENCODERS.index(name)][token] = rows
    if set(parts[0]) != set(parts[1]):
        raise ValueError(
            f"the tokens file's clip_l tokens {sorted(parts[0])} differ from its clip_g "
            f"tokens {sorted(parts[1])}"
        )
    return parts


def load_into(components, path: str | Path) -> dict[str, int]:
    """Add the learned tokens of a tokens file to the tokenizer and text encoder (SDXL: each
    encoder's rows to its own tokenizer and encoder).

    Returns token -> num_vectors for prompt expansion.
    """
    pairs = components.text_encoders
    sizes: dict[str, int] = {}
    for (tokenizer, encoder), tensors in zip(
        pairs, encoder_rows(load_file(str(path)), len(pairs)), strict=True
    ):
        weight_device = encoder.get_input_embeddings().weight.device
        for token, rows in tensors.items():
            ids = add_to_tokenizer(tokenizer, [token], rows.shape[0])
            # Rows are overwritten right after: skip the (costly) mean initialisation.
            encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            weight = encoder.get_input_embeddings().weight
            with torch.no_grad():
                weight[ids] = rows.to(device=weight_device, dtype=weight.dtype)
            if sizes.setdefault(token, rows.shape[0]) != rows.shape[0]:
                raise ValueError(f"token {token} has a different number of vectors per encoder")
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
