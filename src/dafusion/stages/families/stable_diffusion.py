"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, whose last hidden states are the
UNet's cross-attention context (as `StableDiffusionPipeline.encode_prompt` without clip
skip)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .conditioning import Conditioner, Conditioning, tokenize

if TYPE_CHECKING:
    from ..models import Components


class StableDiffusion(Conditioner):
    def text_encoders(self, components: Components) -> list[tuple[Any, Any]]:
        return [(components.tokenizer, components.text_encoder)]

    def encode(self, components: Components, prompts: Sequence[str]) -> Conditioning:
        [(tokenizer, encoder)] = self.text_encoders(components)
        ids = tokenize(tokenizer, prompts)
        return Conditioning(encoder(ids.to(encoder.device))[0])
