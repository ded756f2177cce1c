"""Textual inversion (eq. 4 of the paper) for every class of a split in one job.

Only the new token rows are trainable: they live in a separate parameter spliced into the
frozen embedding table, so every other row stays bit-identical. The loss is the sum over
classes of each class's mean noise-prediction error, so each class's rows receive exactly
the gradient of a separate per-class run; with AdamW (element-wise) the trajectories match.
Each class draws from its own random stream. Each image's VAE latent distribution (and its
horizontal flip's) is computed once and sampled every step.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .images import to_model_tensor
from .models import Components
from .tokens import add_to_tokenizer, class_token, expand

log = logging.getLogger(__name__)


@dataclass
class InversionSettings:
    steps: int = 1000
    batch_size: int = 4
    learning_rate: float = 5e-4
    weight_decay: float = 1e-2
    initializer: str = "the"
    num_vectors: int = 1
    flip: bool = True
    templates: Sequence[str] = ("a photo of a {}",)


def stream_seed(seed: int, token: str) -> int:
    digest = hashlib.sha256(f"inversion/{seed}/{token}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


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
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.stack(means), torch.stack(stds)


def invert(
    components: Components,
    images: Sequence[Image.Image],
    labels: Sequence[int],
    class_names: Sequence[str],
    settings: InversionSettings,
    seed: int,
    resolution: int,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Learn one token per class; returns {token: [num_vectors, hidden]}."""
    device = components.unet.device
    num_classes = len(class_names)
    vectors = settings.num_vectors
    tokens = [class_token(name) for name in class_names]
    if len(set(tokens)) != num_classes:
        raise ValueError(f"class names give duplicate tokens: {tokens}")
    tokenizer, encoder = components.tokenizer, components.text_encoder
    base = encoder.get_input_embeddings()
    rows = []
    for name in class_names:
        word = name if settings.initializer == "class_name" else settings.initializer
        rows.append(initial_embedding(components, word).expand(vectors, -1))
    add_to_tokenizer(tokenizer, tokens, vectors)
    spliced = SplicedEmbedding(base, torch.cat(rows)).to(device)
    encoder.set_input_embeddings(spliced)
    try:
        return _train(
            components, spliced, images, labels, tokens, settings, seed, resolution, progress
        )
    finally:
        encoder.set_input_embeddings(base)


def _train(components, spliced, images, labels, tokens, settings, seed, resolution, progress):
    device = components.unet.device
    dtype = components.unet.dtype
    vectors = settings.num_vectors
    num_classes = len(tokens)
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(components.scheduler.config)
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    scaling = components.vae.config.scaling_factor
    means, stds = latent_distributions(components, images, resolution, settings.flip)
    labels = torch.as_tensor(labels)
    members = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    for c, idx in enumerate(members):
        if len(idx) == 0:
            raise ValueError(f"class '{tokens[c]}' has no training images")
    # Each class's stream depends on the seed and its token only, not on which other classes
    # share the job: a joint run draws exactly what separate per-class runs draw.
    generators = [torch.Generator().manual_seed(stream_seed(seed, token)) for token in tokens]
    prompts = [
        [expand(t.format(token), token, vectors) for t in settings.templates] for token in tokens
    ]
    optimizer = torch.optim.AdamW(
        [spliced.new], lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    latent_shape = means.shape[2:]
    bar = tqdm(range(settings.steps), desc="textual inversion", disable=not progress)
    for _ in bar:
        batch_latents, batch_noise, batch_t, batch_prompts = [], [], [], []
        for c in range(num_classes):
            g = generators[c]
            n = settings.batch_size
            pick = members[c][torch.randint(len(members[c]), (n,), generator=g)]
            view = (
                torch.randint(2, (n,), generator=g)
                if settings.flip
                else torch.zeros(n, dtype=torch.long)
            )
            template = torch.randint(len(settings.templates), (n,), generator=g)
            eps_latent = torch.randn((n, *latent_shape), generator=g)
            noise = torch.randn((n, *latent_shape), generator=g)
            t = torch.randint(num_train_timesteps, (n,), generator=g)
            latents = (means[pick, view] + stds[pick, view] * eps_latent) * scaling
            batch_latents.append(latents)
            batch_noise.append(noise)
            batch_t.append(t)
            batch_prompts += [prompts[c][i] for i in template.tolist()]
        latents = torch.cat(batch_latents).to(device)
        noise = torch.cat(batch_noise).to(device)
        t = torch.cat(batch_t).to(device)
        ids = components.tokenizer(
            batch_prompts,
            padding="max_length",
            max_length=components.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        hidden = components.text_encoder(ids)[0]
        noisy = noise_scheduler.add_noise(latents, noise, t)
        pred = components.unet(noisy.to(dtype), t, hidden.to(dtype)).sample.float()
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        per_sample = F.mse_loss(pred, target.float(), reduction="none").mean(dim=(1, 2, 3))
        loss = per_sample.view(num_classes, settings.batch_size).mean(dim=1).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item() / num_classes:.4f}")
    learned = spliced.new.detach().cpu()
    return {token: learned[c * vectors : (c + 1) * vectors] for c, token in enumerate(tokens)}
