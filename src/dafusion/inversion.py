"""Textual inversion (eq. 4 of the paper) for every class of a split in one job.

Only the new token rows are trainable: they live in a separate parameter spliced into the
frozen embedding table, so every other row stays bit-identical. The loss is the sum over
classes of each class's mean noise-prediction error, so each class's rows receive exactly
the gradient of a separate per-class run; with AdamW (element-wise) the trajectories match.
Each class draws from its own random stream, seeded by (seed, token). Each image's VAE
latent distribution (and its horizontal flip's) is computed once and sampled every step,
the same distribution as encoding every step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .checkpoint import Checkpoint
from .devices import halve_on_oom
from .images import to_model_tensor
from .manifest import class_token
from .models import Components, encode_text
from .seeds import derive_seed
from .settings import InversionSettings
from .tokens import add_to_tokenizer, expand

log = logging.getLogger(__name__)

# The small template set of the textual-inversion paper and diffusers' example.
IMAGENET_SMALL_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}",
    "a photo of my {}", "a photo of the cool {}", "a close-up photo of a {}",
    "a bright photo of the {}", "a cropped photo of a {}", "a photo of the {}",
    "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}",
    "a photo of a nice {}", "a good photo of a {}", "a photo of the nice {}",
    "a photo of the small {}", "a photo of the weird {}", "a photo of the large {}",
    "a photo of a cool {}", "a photo of a small {}",
)  # fmt: skip
TEMPLATE_SETS = {"imagenet_small": IMAGENET_SMALL_TEMPLATES}


def template_list(settings: InversionSettings) -> list[str]:
    """The prompt templates: a named set of TEMPLATE_SETS, or the configured list."""
    if isinstance(settings.templates, str):
        return list(TEMPLATE_SETS[settings.templates])
    return list(settings.templates)


@dataclass
class InversionResult:
    tokens: dict[str, torch.Tensor]
    losses: np.ndarray  # [steps, classes]: each class's mean loss per step


class SplicedEmbedding(torch.nn.Module):
    """A frozen embedding table with trainable rows appended for the new tokens."""

    def __init__(self, base: torch.nn.Embedding, new_rows: torch.Tensor):
        super().__init__()
        self.base = base
        self.num_base = base.num_embeddings
        self.new = torch.nn.Parameter(new_rows.detach().clone().float())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.base(ids.clamp(max=self.num_base - 1))
        is_new = (ids >= self.num_base).unsqueeze(-1)
        new = self.new[(ids - self.num_base).clamp(min=0)].to(out.dtype)
        return torch.where(is_new, new, out)


def initial_embedding(components: Components, word: str) -> torch.Tensor:
    """Mean embedding of a word's sub-tokens (a one-token word gives its own row)."""
    ids = components.tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"config key 'inversion.initializer': '{word}' gives no tokens")
    table = components.text_encoder.get_input_embeddings().weight
    return table[ids].float().mean(dim=0)


@torch.no_grad()
def latent_distributions(
    components: Components, images: Sequence[Image.Image], resolution: int, flip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of each image's latent (index 0) and of its flip (index 1)."""
    vae = components.vae
    device, dtype = vae.device, vae.dtype
    means, stds = [], []
    for image in images:
        x = to_model_tensor(image, resolution).unsqueeze(0)
        views = torch.cat([x, x.flip(-1)]) if flip else x
        dist = vae.encode(views.to(device, dtype)).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.stack(means), torch.stack(stds)


def learn_tokens(
    components: Components,
    images: Sequence[Image.Image],
    labels: Sequence[int],
    class_names: Sequence[str],
    settings: InversionSettings,
    seed: int,
    resolution: int,
    progress: bool = True,
    checkpoint: Checkpoint | None = None,
    keep_final: bool = False,
) -> InversionResult:
    """Learn one token per class, all classes jointly; returns tokens and loss curves.

    With `keep_final` the checkpoint is also written at the last step, so that a job
    running several of these in turn skips the finished ones when it resumes.
    """
    tokens = [class_token(name) for name in class_names]
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"class names give duplicate tokens: {tokens}")
    encoder = components.text_encoder
    base = encoder.get_input_embeddings()
    rows = []
    for name in class_names:
        word = name if settings.initializer == "class_name" else settings.initializer
        rows.append(initial_embedding(components, word).expand(settings.num_vectors, -1))
    add_to_tokenizer(components.tokenizer, tokens, settings.num_vectors)
    spliced = SplicedEmbedding(base, torch.cat(rows)).to(base.weight.device)
    encoder.set_input_embeddings(spliced)
    if settings.gradient_checkpointing:
        components.unet.enable_gradient_checkpointing()
        encoder.gradient_checkpointing_enable()
    try:
        trainer = _Trainer(components, spliced, images, labels, tokens, settings, seed, resolution)
        losses = trainer.run(progress, checkpoint, keep_final)
    finally:
        encoder.set_input_embeddings(base)
    learned = spliced.new.detach().cpu()
    v = settings.num_vectors
    return InversionResult(
        {token: learned[c * v : (c + 1) * v].clone() for c, token in enumerate(tokens)}, losses
    )


class _Trainer:
    def __init__(self, components, spliced, images, labels, tokens, settings, seed, resolution):
        from diffusers import DDPMScheduler

        self.c = components
        self.spliced = spliced
        self.tokens = tokens
        self.settings = settings
        self.device = components.unet.device
        self.noise_scheduler = DDPMScheduler.from_config(components.scheduler.config)
        self.means, self.stds = latent_distributions(components, images, resolution, settings.flip)
        labels = torch.as_tensor(list(labels))
        self.members = [torch.nonzero(labels == c).flatten() for c in range(len(tokens))]
        for token, idx in zip(tokens, self.members, strict=True):
            if len(idx) == 0:
                raise ValueError(f"class token '{token}' has no training images")
        # Each class's stream depends on the seed and its token only, not on which other
        # classes share the job: a joint run draws exactly what separate runs draw.
        self.generators = [
            torch.Generator().manual_seed(derive_seed("inversion", seed, t)) for t in tokens
        ]
        self.prompts = [
            [expand(t.format(token), token, settings.num_vectors) for t in template_list(settings)]
            for token in tokens
        ]
        self.params = {"rows": spliced.new}
        self.optimizer = torch.optim.AdamW(
            [spliced.new], lr=settings.effective_lr, weight_decay=settings.weight_decay
        )
        # Mixed precision as accelerate runs the original (inversion.mixed_precision): a
        # half-precision UNet, the text encoder under autocast, loss scaling for float16.
        unet_dtype = components.unet.dtype
        self.autocast = unet_dtype != torch.float32
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.device.type == "cuda" and unet_dtype == torch.float16
        )
        n = len(tokens)
        self.chunk = settings.classes_per_chunk or n

    def draw(self, c: int) -> dict:
        """One step's random draws for class c, in a fixed order from its own stream."""
        g, n = self.generators[c], self.settings.batch_size
        pick = self.members[c][torch.randint(len(self.members[c]), (n,), generator=g)]
        if self.settings.flip:
            view = torch.randint(2, (n,), generator=g)
        else:
            view = torch.zeros(n, dtype=torch.long)
        template = torch.randint(len(self.prompts[c]), (n,), generator=g)
        shape = (n, *self.means.shape[2:])
        eps = torch.randn(shape, generator=g)
        noise = torch.randn(shape, generator=g)
        t = torch.randint(self.noise_scheduler.config.num_train_timesteps, (n,), generator=g)
        latents = (self.means[pick, view] + self.stds[pick, view] * eps) * (
            self.c.vae.config.scaling_factor
        )
        prompts = [self.prompts[c][i] for i in template.tolist()]
        return {"latents": latents, "noise": noise, "t": t, "prompts": prompts}

    def class_losses(self, draws: list[dict]) -> torch.Tensor:
        """Mean loss of each class in `draws`: [len(draws)]."""
        cat = {
            k: torch.cat([d[k] for d in draws]).to(self.device) for k in ("latents", "noise", "t")
        }
        unet = self.c.unet
        with torch.autocast(self.device.type, dtype=unet.dtype, enabled=self.autocast):
            hidden = encode_text(self.c, [p for d in draws for p in d["prompts"]])
        sched = self.noise_scheduler
        noisy = sched.add_noise(cat["latents"], cat["noise"], cat["t"])
        pred = unet(noisy.to(unet.dtype), cat["t"], hidden.to(unet.dtype)).sample.float()
        if sched.config.prediction_type == "v_prediction":
            target = sched.get_velocity(cat["latents"], cat["noise"], cat["t"])
        else:
            target = cat["noise"]
        per_sample = F.mse_loss(pred, target.float(), reduction="none").mean(dim=(1, 2, 3))
        return per_sample.view(len(draws), self.settings.batch_size).mean(dim=1)

    def step(self, draws: list[dict]) -> np.ndarray:
        """Accumulate the summed class losses over chunks of classes, then one AdamW step.

        On out-of-memory the gradients are recomputed in halved chunks: the same sum.
        """

        def accumulate(chunk: int) -> np.ndarray:
            self.optimizer.zero_grad(set_to_none=True)
            losses = []
            for start in range(0, len(draws), chunk):
                loss = self.class_losses(draws[start : start + chunk])
                self.scaler.scale(loss.sum()).backward()
                losses.append(loss.detach().cpu())
            return torch.cat(losses).numpy()

        losses, self.chunk = halve_on_oom(accumulate, self.chunk, "classes per chunk")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return losses

    def run(self, progress: bool, checkpoint: Checkpoint | None, keep_final: bool) -> np.ndarray:
        steps = self.settings.steps
        losses = np.zeros((steps, len(self.tokens)), dtype=np.float32)
        start = 0
        if checkpoint is not None:
            start = checkpoint.load(self.params, self.optimizer, self.generators, losses)
        every = self.settings.checkpoint_every
        bar = tqdm(
            range(start, steps), initial=start, total=steps, desc="textual inversion",
            disable=not progress,
        )  # fmt: skip
        for step in bar:
            draws = [self.draw(c) for c in range(len(self.tokens))]
            losses[step] = self.step(draws)
            bar.set_postfix(loss=f"{losses[step].mean():.4f}")
            done = step + 1
            final = done == steps and keep_final
            if checkpoint is not None and (final or (every and done % every == 0 and done < steps)):
                checkpoint.save(done, self.params, self.optimizer, self.generators, losses)
        return losses
