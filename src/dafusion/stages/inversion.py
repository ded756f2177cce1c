"""Textual inversion (eq. 4 of the paper) for every class of a split in one job.

Only the new token rows are trainable: each class's live in its own parameter spliced into
the frozen embedding table, so every other row stays bit-identical. The loss is the sum over
classes of each class's mean noise-prediction error, so each class's rows receive exactly
the gradient of a separate per-class run; with AdamW (element-wise) the trajectories match.
The original runs one process per class, each with its own fp16 loss scaler, and so does
each class here (`ClassScaler`): an overflow skips only its own class's step.
Each class draws from its own random streams, seeded by (seed, token): its images as the
original's DataLoader draws them, in shuffled epochs of `repeats` copies of each
(`inversion.repeats`). Images are resized bicubically, as the original's (fine_tune.py
l. 337, 402). Each image's VAE latent distribution (and its horizontal flip's) is computed
once and sampled every step, the same distribution as encoding every step.
`learn_split` runs an invert job's learning, resumable from checkpoints beside its output.

A model with two text encoders (SDXL) learns each class token in both, as diffusers' SDXL
textual-inversion example does (examples/textual_inversion/textual_inversion_sdxl.py: the
token added to both tokenizers, l. 676-687, its rows trained in both embedding tables,
l. 769-783): every encoder gets its own spliced table, one parameter per class per encoder,
and a class's fp16 overflow skips its rows in every encoder.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..data.images import to_model_tensor
from ..data.manifest import class_names, class_token, file_stem
from ..jobs.checkpoint import Checkpoint
from ..jobs.devices import halve_on_oom
from ..jobs.io import resume_key
from ..jobs.seeds import derive_seed
from ..settings import InversionSettings, ModelSettings
from .models import Components
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
    tokens: dict[str, torch.Tensor]  # the (first) text encoder's rows of each token
    losses: np.ndarray  # [steps, classes]: each class's mean loss per step
    # The rows of each further text encoder (SDXL: text_encoder_2's), in encoder order.
    more_encoders: list[dict[str, torch.Tensor]] = field(default_factory=list, kw_only=True)

    @property
    def encoders(self) -> list[dict[str, torch.Tensor]]:
        """Every text encoder's rows of each token, in `Components.text_encoders` order."""
        return [self.tokens, *self.more_encoders]

    def loss_table(self, names: Sequence[str]) -> pd.DataFrame:
        """The loss curves as a table, one row per step and class (in token order), which
        the inversion diagnostics plot."""
        steps, classes = self.losses.shape
        return pd.DataFrame(
            {
                "step": [s + 1 for s in range(steps) for _ in range(classes)],
                "class_name": list(names) * steps,
                "token": list(self.tokens) * steps,
                "loss": self.losses.reshape(-1),
            }
        )


class SplicedEmbedding(torch.nn.Module):
    """A frozen embedding table with the new tokens' trainable rows appended: one parameter
    per class, so that one class's optimizer step can be skipped alone."""

    def __init__(self, base: torch.nn.Embedding, new_rows: Sequence[torch.Tensor]):
        super().__init__()
        self.base = base
        self.num_base = base.num_embeddings
        self.rows = torch.nn.ParameterList(
            [torch.nn.Parameter(rows.detach().clone().float()) for rows in new_rows]
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.base(ids.clamp(max=self.num_base - 1))
        is_new = (ids >= self.num_base).unsqueeze(-1)
        table = torch.cat(list(self.rows))
        new = table[(ids - self.num_base).clamp(min=0)].to(out.dtype)
        return torch.where(is_new, new, out)


class ClassScaler:
    """Dynamic fp16 loss scaling with one scale per class, each as torch's GradScaler (the
    original's, through accelerate) runs with its defaults: 2^16 to start, halved and the
    step skipped on an inf or nan gradient, doubled after 2000 finite steps in a row.

    The original learns each class in its own process, so an overflow skips only that
    class's step; here too: AdamW skips a parameter without a gradient, leaving its rows,
    moments and step count as they were.
    """

    GROWTH_INTERVAL = 2000

    def __init__(self, classes: int, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.scale = torch.full((classes,), 2.0**16, device=device)
        self.growth = torch.zeros(classes, dtype=torch.long, device=device)

    def scaled(self, losses: torch.Tensor, classes: slice) -> torch.Tensor:
        """The sum of these classes' losses, each times its class's scale: to backpropagate."""
        if not self.enabled:
            return losses.sum()
        return (losses * self.scale[classes]).sum()

    def unscale(
        self, rows: Iterable[torch.nn.Parameter], *more: Iterable[torch.nn.Parameter]
    ) -> None:
        """Divide each class's gradient by its scale, drop the gradients of the classes whose
        gradient is not finite (their step is skipped) and update the scales.

        `rows` holds one parameter per class; `more`, the classes' parameters in each further
        text encoder (SDXL's second): a class whose gradient is not finite in any of them is
        skipped in all, as its own process's GradScaler would skip its whole step."""
        if not self.enabled:
            return
        classes = list(zip(rows, *more, strict=True))  # each class's rows, every encoder
        finite = torch.stack(
            [torch.stack([p.grad.isfinite().all() for p in ps]).all() for ps in classes]
        )
        for ps, inverse in zip(classes, self.scale.double().reciprocal().float(), strict=True):
            for p in ps:
                p.grad.mul_(inverse)
        self.growth = torch.where(finite, self.growth + 1, 0)
        grow = self.growth == self.GROWTH_INTERVAL
        self.scale = torch.where(finite, self.scale * torch.where(grow, 2.0, 1.0), self.scale / 2)
        self.growth = torch.where(grow, 0, self.growth)
        for ps, ok in zip(classes, finite.tolist(), strict=True):
            if not ok:
                for p in ps:
                    p.grad = None


def initial_embedding(components: Components, word: str, encoder: int = 0) -> torch.Tensor:
    """Mean embedding of a word's sub-tokens (a one-token word gives its own row), in text
    encoder `encoder` of `components.text_encoders` (SDXL: 0 or 1), through its own
    tokenizer."""
    tokenizer, text_encoder = components.text_encoders[encoder]
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"config key 'inversion.initializer': '{word}' gives no tokens")
    table = text_encoder.get_input_embeddings().weight
    return table[ids].float().mean(dim=0)


def splice_tokens(
    components: Components, tokens: Sequence[str], words: Sequence[str], num_vectors: int
) -> list[SplicedEmbedding]:
    """Add `tokens` (each with `num_vectors` vectors, initialized from its word in `words`)
    to every tokenizer of `components`, and splice their trainable rows into every text
    encoder's embedding table: one `SplicedEmbedding` per encoder, in
    `components.text_encoders` order. `restore_embeddings` puts the tables back (here too,
    if one encoder fails)."""
    tables: list[SplicedEmbedding] = []
    try:
        for index, (tokenizer, encoder) in enumerate(components.text_encoders):
            base = encoder.get_input_embeddings()
            rows = [
                initial_embedding(components, word, index).expand(num_vectors, -1) for word in words
            ]
            ids = add_to_tokenizer(tokenizer, list(tokens), num_vectors)
            if ids != list(range(base.num_embeddings, base.num_embeddings + len(ids))):
                raise ValueError(
                    f"text encoder {index + 1}'s embedding table has {base.num_embeddings} "
                    f"rows but its tokenizer gives the new tokens ids {ids[0]}..{ids[-1]}: "
                    "they must follow the table's last row"
                )
            spliced = SplicedEmbedding(base, rows).to(base.weight.device)
            encoder.set_input_embeddings(spliced)
            tables.append(spliced)
    except BaseException:
        restore_embeddings(components, tables)
        raise
    return tables


def restore_embeddings(components: Components, tables: Sequence[SplicedEmbedding]) -> None:
    """Every text encoder's own embedding table again (undoes `splice_tokens`'s splice)."""
    for (_, encoder), spliced in zip(components.text_encoders, tables, strict=False):
        encoder.set_input_embeddings(spliced.base)


@contextmanager
def gradient_checkpointing(components: Components, enabled: bool) -> Iterator[None]:
    """`inversion.gradient_checkpointing`: the UNet and every text encoder recompute their
    activations in the backward pass instead of keeping them, while the block runs.

    transformers checkpoints a text encoder's layer only while that layer is in training
    mode (transformers/modeling_layers.py, `GradientCheckpointingLayer`: `if
    self.gradient_checkpointing and self.training`; 4.x's CLIPEncoder checks the same), and
    the encoders are loaded in eval mode, where `gradient_checkpointing_enable` alone keeps
    every activation. diffusers' examples put the whole encoders in training mode
    (textual_inversion_sdxl.py l. 822-823, train_dreambooth_lora_sdxl.py l. 1658-1661);
    here only the modules that checkpoint are, for the block: their submodules (attention
    dropout) stay in eval mode, so the losses and gradients are what they are without
    checkpointing. diffusers' UNet checkpoints whenever gradients are on."""
    if not enabled:
        yield
        return
    components.unet.enable_gradient_checkpointing()
    flipped = []
    for _, encoder in components.text_encoders:
        encoder.gradient_checkpointing_enable()
        for module in encoder.modules():
            if getattr(module, "gradient_checkpointing", False) is True and not module.training:
                module.training = True
                flipped.append(module)
    try:
        yield
    finally:
        for module in flipped:
            module.training = False


@torch.no_grad()
def latent_distributions(
    components: Components, images: Sequence[Image.Image], resolution: int, flip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of each image's latent (index 0) and of its flip (index 1)."""
    vae = components.vae
    device, dtype = vae.device, vae.dtype
    means, stds = [], []
    for image in images:
        # Bicubic, as the original's TextualInversionDataset (fine_tune.py l. 337, 402).
        x = to_model_tensor(image, resolution, Image.Resampling.BICUBIC).unsqueeze(0)
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
    words = [
        name if settings.initializer == "class_name" else settings.initializer
        for name in class_names
    ]
    tables = splice_tokens(components, tokens, words, settings.num_vectors)
    try:
        with gradient_checkpointing(components, settings.gradient_checkpointing):
            trainer = _Trainer(
                components, tables, images, labels, tokens, settings, seed, resolution
            )
            losses = trainer.run(progress, checkpoint, keep_final)
    finally:
        restore_embeddings(components, tables)
    learned = [
        {token: rows.detach().cpu().clone() for token, rows in zip(tokens, t.rows, strict=True)}
        for t in tables
    ]
    return InversionResult(learned[0], losses, more_encoders=learned[1:])


def learn_split(
    components: Components,
    manifest: pd.DataFrame,
    images: Sequence[Image.Image],
    model: ModelSettings,
    settings: InversionSettings,
    seed: int,
    output: str | Path,
    deltas: Mapping[str, tuple[Path, str]],
    erase: Callable[[str], None],
) -> InversionResult:
    """`learn_tokens` for an invert job: every class of `manifest` (whose rows `images`
    are), resumable from checkpoints beside `output`, each keyed by the job's inputs so that
    a rerun never resumes another job's state (`remove_checkpoints` deletes them once the
    job's outputs are written).

    `deltas` holds each class's erasure delta (file, fingerprint; empty for none) and
    `erase(name)` applies class `name`'s to the UNet. With one delta per class, each token
    is learned against the UNet with its class erased.
    """
    names = class_names(manifest)
    labels = manifest["label"].tolist()
    out = Path(output)
    job = resume_key(
        keys=manifest["key"].tolist(), labels=labels, names=names,
        model=model.result_params(), settings=settings.result_params(), seed=seed,
        erasure={name: ref[1] for name, ref in deltas.items()},
    )  # fmt: skip
    if len({path for path, _ in deltas.values()}) <= 1:
        if deltas:  # one joint delta for every class
            erase(names[0])
        checkpoint = Checkpoint(out.with_name(f".{out.stem}.checkpoint.safetensors"), job)
        return learn_tokens(
            components, images, labels, names, settings, seed=seed,
            resolution=model.resolution, checkpoint=checkpoint,
        )  # fmt: skip
    # Per-class erasure: class c's token is learned against the UNet with c erased.
    # Class-major order, one delta swap per class; each class's result equals its
    # joint-run result on that UNet (separate random streams and gradients). Each class
    # adds its token to its own copy of the tokenizers (both of SDXL's).
    tokens, losses = {}, []
    more: list[dict[str, torch.Tensor]] = [{} for _ in components.text_encoders[1:]]
    for label, name in enumerate(names):
        erase(name)
        rows = [i for i, y in enumerate(labels) if y == label]
        token = class_token(name)
        stem = f".{out.stem}.{file_stem(token.strip('<>'))}"
        own = dataclasses.replace(
            components,
            tokenizer=copy.deepcopy(components.tokenizer),
            tokenizer_2=copy.deepcopy(components.tokenizer_2),  # None stays None
        )
        part = learn_tokens(
            own,
            [images[i] for i in rows], [0] * len(rows), [name], settings, seed=seed,
            resolution=model.resolution, keep_final=True,
            checkpoint=Checkpoint(
                out.with_name(f"{stem}.checkpoint.safetensors"),
                resume_key(job=job, class_name=name),
            ),
        )  # fmt: skip
        tokens.update(part.tokens)
        for encoder_tokens, learned in zip(more, part.more_encoders, strict=True):
            encoder_tokens.update(learned)
        losses.append(part.losses)
    return InversionResult(tokens, np.hstack(losses), more_encoders=more)


def remove_checkpoints(output: str | Path) -> None:
    """Delete the checkpoints `learn_split` left beside `output`: once the job's outputs
    are written, nothing resumes from them."""
    out = Path(output)
    for stale in out.parent.glob(f".{out.stem}.*checkpoint.safetensors"):
        stale.unlink()


class _Trainer:
    description = "textual inversion"  # the progress bar's (the LoRA learner's says its own)

    def __init__(self, components, spliced, images, labels, tokens, settings, seed, resolution):
        """`spliced`: the spliced table of each text encoder (SDXL: two), or one table."""
        from diffusers import DDPMScheduler

        self.c = components
        self.seed = seed
        self.tables = [spliced] if isinstance(spliced, SplicedEmbedding) else list(spliced)
        self.spliced = self.tables[0]
        self.tokens = tokens
        self.settings = settings
        self.device = components.unet.device
        self.noise_scheduler = DDPMScheduler.from_config(components.scheduler.config)
        self.means, self.stds = latent_distributions(components, images, resolution, settings.flip)
        self.sizes = [image.size[::-1] for image in images]  # (height, width): SDXL's time ids
        self.resolution = resolution
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
        self.drawn = [0] * len(tokens)  # examples drawn so far, per class
        self.orders: dict[int, tuple[int, torch.Tensor]] = {}  # class -> (epoch, its order)
        self.prompts = [
            [expand(t.format(token), token, settings.num_vectors) for t in template_list(settings)]
            for token in tokens
        ]
        # Checkpointed by name: rows/{c} in the first text encoder, rows_2/{c} in SDXL's second.
        names = ["rows", *(f"rows_{e + 1}" for e in range(1, len(self.tables)))]
        self.params = {
            f"{name}/{c}": rows
            for name, table in zip(names, self.tables, strict=True)
            for c, rows in enumerate(table.rows)
        }
        self.optimizer = torch.optim.AdamW(
            [rows for table in self.tables for rows in table.rows],
            lr=settings.effective_lr,
            weight_decay=settings.weight_decay,
        )
        # Mixed precision as accelerate runs the original (inversion.mixed_precision): a
        # half-precision UNet, the text encoder under autocast, loss scaling for float16.
        unet_dtype = components.unet.dtype
        self.autocast = unet_dtype != torch.float32
        fp16 = self.device.type == "cuda" and unet_dtype == torch.float16
        self.scaler = ClassScaler(len(tokens), fp16, self.device)
        n = len(tokens)
        self.chunk = settings.classes_per_chunk or n

    def next_images(self, c: int) -> torch.Tensor:
        """Which of class c's images its next batch holds (indices into them).

        As the original's DataLoader(shuffle=True) over TextualInversionDataset(repeats=100)
        (fine_tune.py l. 336, 357, 565): shuffled epochs in which each image appears `repeats`
        times, each epoch's order drawn from its own seed (seed, token, epoch), so that a
        resumed job draws the same; `repeats: null` draws each example independently.
        """
        n, size = self.settings.batch_size, len(self.members[c])
        if self.settings.repeats is None:
            return torch.randint(size, (n,), generator=self.generators[c])
        epoch_size = size * self.settings.repeats
        positions = torch.arange(self.drawn[c], self.drawn[c] + n)
        self.drawn[c] += n
        picks = torch.empty(n, dtype=torch.long)
        epochs = positions // epoch_size
        for epoch in epochs.unique().tolist():
            if self.orders.get(c, (None,))[0] != epoch:
                seed = derive_seed("inversion", self.seed, self.tokens[c], "epoch", epoch)
                order = torch.randperm(epoch_size, generator=torch.Generator().manual_seed(seed))
                self.orders[c] = (epoch, order)
            at = epochs == epoch
            picks[at] = self.orders[c][1][positions[at] % epoch_size]
        return picks % size

    def draw(self, c: int) -> dict:
        """One step's random draws for class c, in a fixed order from its own streams."""
        g, n = self.generators[c], self.settings.batch_size
        pick = self.members[c][self.next_images(c)]
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
        original = [self.sizes[i] for i in pick.tolist()]
        return {
            "latents": latents,
            "noise": noise,
            "t": t,
            "prompts": prompts,
            "original": original,
        }

    def class_losses(self, draws: list[dict]) -> torch.Tensor:
        """Mean loss of each class in `draws`: [len(draws)]."""
        cat = {
            k: torch.cat([d[k] for d in draws]).to(self.device) for k in ("latents", "noise", "t")
        }
        unet = self.c.unet
        conditioner = self.c.conditioner
        with torch.autocast(self.device.type, dtype=unet.dtype, enabled=self.autocast):
            cond = self.c.encode([p for d in draws for p in d["prompts"]])
        original = [size for d in draws for size in d["original"]]
        cond = conditioner.sized(cond, original, (self.resolution, self.resolution))
        sched = self.noise_scheduler
        noisy = sched.add_noise(cat["latents"], cat["noise"], cat["t"])
        kwargs = cond.to(unet.dtype).unet_kwargs()
        pred = unet(noisy.to(unet.dtype), cat["t"], **kwargs).sample.float()
        target = conditioner.loss_target(sched, cat["latents"], cat["noise"], cat["t"])
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
                self.scaler.scaled(loss, slice(start, start + chunk)).backward()
                losses.append(loss.detach().cpu())
            return torch.cat(losses).numpy()

        losses, self.chunk = halve_on_oom(accumulate, self.chunk, "classes per chunk")
        self.scaler.unscale(*(table.rows for table in self.tables))
        self.optimizer.step()
        return losses

    def run(self, progress: bool, checkpoint: Checkpoint | None, keep_final: bool) -> np.ndarray:
        steps = self.settings.steps
        losses = np.zeros((steps, len(self.tokens)), dtype=np.float32)
        start = 0
        if checkpoint is not None:
            start = checkpoint.load(self.params, self.optimizer, self.generators, losses)
        self.drawn = [start * self.settings.batch_size] * len(self.tokens)
        every = self.settings.checkpoint_every
        bar = tqdm(
            range(start, steps), initial=start, total=steps, desc=self.description,
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
