"""The LoRA learner (`learner: lora`): the class tokens and a small LoRA on the UNet's
attention projections, trained together.

As Diff-Mix's DreamBooth-LoRA with textual inversion (its train_lora.py: new token rows in
the text encoder and LoRA layers on every attention processor, one AdamW over both,
l. 622-700 and 770-783): the token rows are learned exactly as `dafusion.stages.inversion`
learns them (the same initializer, prompt templates, image draws and random streams per
class, the same per-class losses and learning rate), and one LoRA shared by every class of
the split (`dafusion.stages.lora`) learns with them, on `lora.projections` of every `attn1`
(self-) and `attn2` (cross-) attention of the UNet. One job per (dataset, seed, shots)
split learns all its classes.

Each step's loss is the sum of the classes' mean losses, so each class's token rows get
the gradient of their own class, as in inversion; the LoRA's gradient is divided by the
number of classes (the mean over the step's images, one DreamBooth batch of every class)
and clipped to `lora.max_grad_norm`, as both scripts clip. Mixed precision follows
`inversion.mixed_precision`: a half-precision UNet with float32 LoRA weights and one fp16
loss scale for the step (torch's GradScaler, as accelerate runs Diff-Mix's single process).
`learn_split` runs a lora job's learning, resumable from a checkpoint beside its output.

On SDXL the token rows are learned in both text encoders, as SDXL's inversion learns them
(`dafusion.stages.inversion`), through SDXL's conditioning (pooled embeddings, each image's
size ids), and the LoRA adapts the same projections of SDXL's UNet, as diffusers'
train_dreambooth_lora_sdxl.py adds it (l. 1225-1232: `to_k`, `to_q`, `to_v`, `to_out.0`);
`inversion.gradient_checkpointing` checkpoints the UNet and both text encoders, as that
script does (l. 1200-1204).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..data.manifest import class_names as manifest_classes
from ..data.manifest import class_token
from ..jobs.checkpoint import Checkpoint
from ..jobs.devices import halve_on_oom
from ..jobs.io import resume_key
from ..settings import InversionSettings, LoraSettings, ModelSettings
from .inversion import (
    InversionResult,
    _Trainer,
    gradient_checkpointing,
    restore_embeddings,
    splice_tokens,
)
from .lora import adapter_state, add_lora
from .models import Components

log = logging.getLogger(__name__)


@dataclass
class LoraResult(InversionResult):
    """The class tokens, the loss curves (`InversionResult`) and the LoRA's weights in
    diffusers' layout (`unet.` prefixed keys, alpha folded in)."""

    adapter: dict[str, torch.Tensor] | None = None


def token_settings(inversion: InversionSettings, settings: LoraSettings) -> InversionSettings:
    """How a LoRA job learns its token rows: inversion's settings, for `lora.steps` steps."""
    return inversion.replace(steps=settings.steps)


class _LoraTrainer(_Trainer):
    """Inversion's trainer (draws, per-class losses, loop, checkpoints) with the LoRA's
    parameters in its optimizer, checkpoints and step. `spliced`: every text encoder's
    spliced table (SDXL: two), as `_Trainer` takes them."""

    description = "LoRA and class tokens"

    def __init__(self, components, spliced, lora, images, labels, tokens, inversion, settings, seed,
                 resolution):  # fmt: skip
        super().__init__(components, spliced, images, labels, tokens, inversion, seed, resolution)
        self.lora_settings = settings
        self.lora = list(lora.values())
        self.params.update({f"lora/{name}": p for name, p in lora.items()})
        self.optimizer = torch.optim.AdamW(
            [
                {  # every text encoder's token rows (SDXL: both tables')
                    "params": [rows for table in self.tables for rows in table.rows],
                    "lr": inversion.effective_lr,
                    "weight_decay": inversion.weight_decay,
                },
                {
                    "params": self.lora,
                    "lr": settings.learning_rate,
                    "weight_decay": settings.weight_decay,
                },
            ]
        )
        fp16 = self.device.type == "cuda" and components.unet.dtype == torch.float16
        self.amp = torch.amp.GradScaler(self.device.type, enabled=fp16)

    def step(self, draws: list[dict]) -> np.ndarray:
        """The classes' summed losses over chunks of classes, then one AdamW step of the
        token rows and the LoRA (the LoRA's gradient averaged over the classes, clipped)."""

        def accumulate(chunk: int) -> np.ndarray:
            self.optimizer.zero_grad(set_to_none=True)
            losses = []
            for start in range(0, len(draws), chunk):
                loss = self.class_losses(draws[start : start + chunk])
                self.amp.scale(loss.sum()).backward()
                losses.append(loss.detach().cpu())
            return torch.cat(losses).numpy()

        losses, self.chunk = halve_on_oom(accumulate, self.chunk, "classes per chunk")
        self.amp.unscale_(self.optimizer)
        for p in self.lora:
            if p.grad is not None:
                p.grad.div_(len(draws))
        torch.nn.utils.clip_grad_norm_(self.lora, self.lora_settings.max_grad_norm)
        self.amp.step(self.optimizer)
        self.amp.update()
        return losses


def learn_lora(
    components: Components,
    images: Sequence[Image.Image],
    labels: Sequence[int],
    class_names: Sequence[str],
    inversion: InversionSettings,
    settings: LoraSettings,
    seed: int,
    resolution: int,
    progress: bool = True,
    checkpoint: Checkpoint | None = None,
) -> LoraResult:
    """Learn one token per class and one LoRA for all of them, jointly (module docstring).

    The token rows use `inversion`'s settings for `settings.steps` steps, in every text
    encoder (SDXL: both). The UNet is left as it was (the adapter removed), the text
    encoders' tables too (the rows are returned)."""
    tokens = [class_token(name) for name in class_names]
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"class names give duplicate tokens: {tokens}")
    inversion = token_settings(inversion, settings)
    unet = components.unet
    words = [
        name if inversion.initializer == "class_name" else inversion.initializer
        for name in class_names
    ]
    tables = splice_tokens(components, tokens, words, inversion.num_vectors)
    # The adapter's Gaussian initialization draws from torch's global stream: seeded by
    # the split's seed, so the same job starts from the same LoRA.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lora = add_lora(unet, settings)
    log.info(
        "LoRA of rank %d on %d projections (%s), %d parameters, with %d class tokens",
        settings.rank, len(lora) // 2, ", ".join(settings.projections),
        sum(p.numel() for p in lora.values()), len(tokens),
    )  # fmt: skip
    try:
        with gradient_checkpointing(components, inversion.gradient_checkpointing):
            trainer = _LoraTrainer(
                components, tables, lora, images, labels, tokens, inversion, settings, seed,
                resolution,
            )  # fmt: skip
            losses = trainer.run(progress, checkpoint, keep_final=False)
        adapter = adapter_state(unet, settings)
    finally:
        restore_embeddings(components, tables)
        unet.unload_lora()  # the plain UNet again, its modules as they were
    learned = [
        {token: rows.detach().cpu().clone() for token, rows in zip(tokens, t.rows, strict=True)}
        for t in tables
    ]
    return LoraResult(learned[0], losses, adapter, more_encoders=learned[1:])


def learn_split(
    components: Components,
    manifest: pd.DataFrame,
    images: Sequence[Image.Image],
    model: ModelSettings,
    inversion: InversionSettings,
    settings: LoraSettings,
    seed: int,
    output: str | Path,
) -> LoraResult:
    """`learn_lora` for a lora job: every class of `manifest` (whose rows `images` are),
    resumable from a checkpoint beside `output` (the tokens file), keyed by the job's inputs
    so that a rerun never resumes another job's state; `inversion.remove_checkpoints`
    deletes it once the job's outputs are written."""
    names = manifest_classes(manifest)
    labels = manifest["label"].tolist()
    out = Path(output)
    job = resume_key(
        learner="lora", keys=manifest["key"].tolist(), labels=labels, names=names,
        model=model.result_params(), inversion=token_settings(inversion, settings).result_params(),
        lora=settings.result_params(), seed=seed,
    )  # fmt: skip
    checkpoint = Checkpoint(out.with_name(f".{out.stem}.checkpoint.safetensors"), job)
    return learn_lora(
        components, images, labels, names, inversion, settings, seed, model.resolution,
        checkpoint=checkpoint,
    )  # fmt: skip
