"""SDXL base: two CLIP text encoders and size conditioning, as
`StableDiffusionXLPipeline.encode_prompt` and `_get_add_time_ids` make them.

Each prompt goes through both encoders; their penultimate hidden states, concatenated, are
the cross-attention context, and the second encoder's projected pooled output is the added
`text_embeds`. `time_ids` are (original height, width, crop top, left, target height,
width): each image's own size before resizing, no crop (the stages resize whole images),
and the generated size. With `force_zeros_for_empty_prompt` (SDXL base sets it) the
unconditional half of guidance is zeros, as the pipelines make it when no negative prompt
is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .conditioning import Conditioner, Conditioning, tokenize

if TYPE_CHECKING:
    from ..models import Components


class StableDiffusionXL(Conditioner):
    def text_encoders(self, components: Components) -> list[tuple[Any, Any]]:
        return [
            (components.tokenizer, components.text_encoder),
            (components.tokenizer_2, components.text_encoder_2),
        ]

    def encode(self, components: Components, prompts: Sequence[str]) -> Conditioning:
        hidden, pooled = [], None
        for tokenizer, encoder in self.text_encoders(components):
            ids = tokenize(tokenizer, prompts).to(encoder.device)
            out = encoder(ids, output_hidden_states=True)
            pooled = out[0]  # the last encoder's: CLIPTextModelWithProjection's text_embeds
            hidden.append(out.hidden_states[-2])
        return Conditioning(torch.cat(hidden, dim=-1), pooled)

    def unconditional(self, components: Components) -> Conditioning:
        if not self.family.force_zeros_for_empty_prompt:
            return self.encode(components, [""])
        with torch.no_grad():
            shapes = self.encode(components, [""])
        return shapes.map(torch.zeros_like)

    def sized(
        self,
        conditioning: Conditioning,
        original: Sequence[tuple[int, int]],
        target: tuple[int, int],
    ) -> Conditioning:
        ids = [(*size, 0, 0, *target) for size in original]
        return Conditioning(
            conditioning.hidden,
            conditioning.pooled,
            torch.tensor(ids, dtype=conditioning.hidden.dtype, device=conditioning.hidden.device),
        )
