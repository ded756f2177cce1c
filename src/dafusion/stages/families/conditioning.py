"""What a UNet is conditioned on, and the interface each family's module implements.

A `Conditioning` holds batch-first tensors, one row per sample: the text encoder's hidden
states every family has, and the added conditioning of families that take one (SDXL's
pooled text embedding and size ids). The stages index, concatenate and move it as one
thing and hand it to the UNet with `unet(x, t, **conditioning.unet_kwargs())`, so no stage
needs to know which family it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import torch

from . import Family

if TYPE_CHECKING:
    from ..models import Components


@dataclass(frozen=True)
class Conditioning:
    """The UNet's conditioning for a batch (`hidden`: [B, L, D] cross-attention context;
    `pooled` [B, P] and `time_ids` [B, 6]: SDXL's added conditioning)."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Conditioning:
        """`fn` applied to every tensor held."""
        return replace(
            self,
            **{
                f.name: fn(getattr(self, f.name))
                for f in fields(self)
                if getattr(self, f.name) is not None
            },
        )

    def __getitem__(self, index: Any) -> Conditioning:
        return self.map(lambda x: x[index])

    def __len__(self) -> int:
        return len(self.hidden)

    def to(self, *args: Any, **kwargs: Any) -> Conditioning:
        return self.map(lambda x: x.to(*args, **kwargs))

    def expand(self, rows: int) -> Conditioning:
        """A one-row conditioning repeated (as a view) to `rows` rows."""
        return self.map(lambda x: x.expand(rows, *x.shape[1:]))

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """The rows of `parts`, in order."""
        names = [f.name for f in fields(Conditioning) if getattr(parts[0], f.name) is not None]
        return Conditioning(**{n: torch.cat([getattr(p, n) for p in parts]) for n in names})

    def unet_kwargs(self) -> dict:
        """The keyword arguments of `UNet2DConditionModel.forward` this conditioning sets."""
        kwargs: dict = {"encoder_hidden_states": self.hidden}
        if self.pooled is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.pooled, "time_ids": self.time_ids}
        return kwargs


def tokenize(tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's length, as Stable Diffusion's pipelines pad."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


class Conditioner:
    """How one family encodes prompts for its UNet (subclassed per family).

    `encode` lets gradients flow (textual inversion trains token rows through it); inference
    callers wrap it in `torch.no_grad`.
    """

    def __init__(self, family: Family):
        self.family = family

    def text_encoders(self, components: Components) -> list[tuple[Any, Any]]:
        """The (tokenizer, text encoder) pairs a prompt goes through, in order."""
        raise NotImplementedError

    def encode(self, components: Components, prompts: Sequence[str]) -> Conditioning:
        """The conditioning of each prompt (no size conditioning: see `sized`)."""
        raise NotImplementedError

    def unconditional(self, components: Components) -> Conditioning:
        """One row: the unconditional half of classifier-free guidance, as the family's
        pipelines make it."""
        return self.encode(components, [""])

    def sized(
        self,
        conditioning: Conditioning,
        original: Sequence[tuple[int, int]],
        target: tuple[int, int],
    ) -> Conditioning:
        """`conditioning` with each row's image size, for families conditioned on it:
        `original` (height, width) per row, `target` the generated size."""
        return conditioning

    def loss_target(
        self, scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """What the UNet learns to predict at (latents noised by `noise` to `t`): the noise,
        or the velocity for a v-prediction scheduler, as diffusers' training examples do."""
        if scheduler.config.prediction_type == "v_prediction":
            return scheduler.get_velocity(latents, noise, t)
        return noise
