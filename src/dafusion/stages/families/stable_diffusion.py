"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, whose last hidden states are the
UNet's cross-attention context (as `StableDiffusionPipeline.encode_prompt` without clip
skip)."""

from __future__ import annotations

from collections.abc import Sequence

from .conditioning import Conditioner, Conditioning, tokenize


class StableDiffusion(Conditioner):
    def text_encoders(self, components):
        return [(components.tokenizer, components.text_encoder)]

    def encode(self, components, prompts: Sequence[str]) -> Conditioning:
        encoder = components.text_encoder
        ids = tokenize(components.tokenizer, prompts)
        return Conditioning(encoder(ids.to(encoder.device))[0])
