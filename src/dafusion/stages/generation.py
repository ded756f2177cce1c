"""SDEdit generation (eq. 5): M synthetic images per real image.

Follows diffusers' img2img semantics: with S inference steps and strength t0, the real
image's latent is noised to the timestep at index S - floor(S * t0) of the scheduler's
schedule (eq. 5) and denoised from there with classifier-free guidance. Each real image is
VAE-encoded once for all its variants and each prompt is text-encoded once. Every synthetic
image has its own generator seeded from (seed, source key, j), and its t0 is drawn from the
same seed; a stochastic scheduler draws its per-step noise from that generator too, so
outputs do not depend on batch size or order. `set_job` sets up a generate job's engine
for a synthetic set (prompts, tokens, scheduler, erasure deltas, safety checker).
"""

from __future__ import annotations

import copy
import inspect
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.images import load_image, to_model_tensor, to_pil
from ..data.manifest import class_names, class_token
from ..jobs.devices import halve_on_oom
from ..jobs.io import resume_key
from ..jobs.seeds import derive_seed
from ..settings import GenerationSettings, MethodSettings, ModelSettings, denoising_steps
from .deltas import DeltaSwitch
from .families.conditioning import Conditioning
from .models import Components, load_safety_checker, scheduler_from_name
from .synthetic import variant_plan, write_shards
from .tokens import expand, file_hash, load_into

log = logging.getLogger(__name__)


def denoising_timesteps(scheduler, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The img2img schedule: the last floor(S * t0) steps of an S-step schedule."""
    init = denoising_steps(num_inference_steps, strength)
    if init < 1:
        raise ValueError(
            f"strength {strength} with {num_inference_steps} steps runs no denoising step; "
            "raise the strength or generation.num_inference_steps"
        )
    start = (num_inference_steps - init) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


@torch.no_grad()
def encode_images(
    components: Components, images: Sequence[Image.Image], resolution: int, batch_size: int
):
    """Latent mean and std of each image, one VAE pass per image."""
    vae = components.vae
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        x = torch.stack(
            [to_model_tensor(im, resolution) for im in images[start : start + batch_size]]
        )
        dist = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


@dataclass
class _Start:
    """The samples [lo, hi) of a batch that share a strength, and their scheduler state."""

    lo: int
    hi: int
    offset: int  # index in the full schedule of their first denoising step
    scheduler: Any


def _add_noise(
    scheduler, samples: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor
) -> torch.Tensor:
    """`scheduler.add_noise` at one (host) timestep, its coefficients computed on the host.

    A scheduler's add_noise is a x + b n with scalars a and b, but the sigma-based ones
    (Euler, DPM-Solver) copy their tables to the samples' device and index them with a host
    list at every call, each a wait for the device. Called on two host probes it gives a and
    b exactly (a * 1 + b * 0), and a x + b n then repeats its arithmetic on the device.
    """
    probe = scheduler.add_noise(
        torch.tensor([1.0, 0.0], dtype=samples.dtype),
        torch.tensor([0.0, 1.0], dtype=samples.dtype),
        timestep.reshape(1),
    )
    return probe[0] * samples + probe[1] * noise


def _pad(x: torch.Tensor, rows: int) -> torch.Tensor:
    """`x` with its last row repeated up to `rows` rows."""
    return torch.cat([x, x[-1:].expand(rows - len(x), *x.shape[1:])]) if rows > len(x) else x


@torch.no_grad()
def sdedit(
    components: Components,
    scheduler,
    means: torch.Tensor,
    stds: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning,
    generators: Sequence[torch.Generator],
    strength: float | Sequence[float],
    settings: GenerationSettings,
    masks: torch.Tensor | None = None,
    rows: int | None = None,
) -> torch.Tensor:
    """Denoise one batch; returns images in [-1, 1], in the order of the inputs.

    `strength` is one t0 for the batch or one per sample. Samples of different strengths
    share the batch: every t0 uses the last floor(S * t0) steps of the same S-step schedule
    (eq. 5), so at each step all samples already started are at the same timestep and go
    through the UNet in one call, and a batch costs as many UNet calls as its largest t0
    needs, not the sum over its strengths. Each strength keeps its own copy of the
    scheduler (multistep history, step index), so every sample's arithmetic is the one of
    a batch of its strength alone.

    With `rows` (at least the batch), the batch is padded to `rows` samples and the UNet
    runs on all of them at every step, the samples not started yet and the padding only
    carried along: one input shape for the whole run, so a compiled UNet compiles once.
    Without it the UNet runs on the samples started, fewer sample-steps.

    The loop waits for the device nowhere: which samples step, the UNet's rows and the
    timesteps are set on the host before it, and the schedulers' tables stay on the host, so
    a step reads host scalars (a stochastic scheduler still copies each step's per-image
    noise to the device, drawn on the host as diffusers draws it).

    With `masks` ([B, 1, h, w] at latent size, 1 = regenerate), the inpainting pipeline's
    semantics for a 4-channel UNet: after every step the kept region is reset to the real
    image's latent noised to the next timestep, and t0 = 1 starts from pure noise.

    A stochastic scheduler gets the list of per-image generators, as the diffusers pipelines
    pass theirs: it draws each image's step noise from that image's own generator.

    `cond` and `uncond` are whole conditionings, SDXL's pooled embeddings and size ids
    included (`Engine._batch` sizes them); the latents stay in the VAE's dtype until the
    UNet's input, so a float32 VAE under a float16 UNet (SDXL, `models.load_vae`) keeps
    float32 latents. With `settings.vae_slicing` the VAE decodes one image at a time.
    """
    n = len(generators)
    if rows is not None and rows < n:
        raise ValueError(f"rows ({rows}) must hold the batch ({n} samples)")
    strengths = [float(s) for s in strength] if isinstance(strength, Sequence) else [strength] * n
    # Largest t0 first: the samples started at any step are then a prefix of the batch.
    order = sorted(range(n), key=lambda i: -strengths[i])
    means, stds = means[order], stds[order]
    cond, uncond = cond[order], uncond[order]
    generators = [generators[i] for i in order]
    masks = masks[order] if masks is not None else None
    unet, vae = components.unet, components.vae
    device, dtype = unet.device, unet.dtype
    S = settings.num_inference_steps
    starts: list[_Start] = []
    for i in order:
        if starts and strengths[order[starts[-1].lo]] == strengths[i]:
            starts[-1].hi += 1
            continue
        copy_ = copy.deepcopy(scheduler)
        copy_.set_timesteps(S)  # on the host, with its tables
        steps = denoising_timesteps(copy_, S, strengths[i])
        lo = starts[-1].hi if starts else 0
        starts.append(_Start(lo, lo + 1, len(copy_.timesteps) - len(steps), copy_))
    timesteps = starts[0].scheduler.timesteps  # every start's steps are a suffix of these
    # One tensor per step (not views at moving offsets, which a compiled UNet may guard on).
    unet_timesteps = [t.clone() for t in timesteps.to(device)]
    # Per step: the starts that step, and the rows the UNet sees (`rows`, or those started).
    schedule = []
    for g in range(starts[0].offset, len(timesteps)):
        active = [s for s in starts if s.offset <= g]
        schedule.append((g, active, rows or active[-1].hi))
    shape = means.shape[1:]
    # Per-sample draws in img2img's order: the latent sample, then the inserted noise.
    eps = torch.stack([torch.randn(shape, generator=g, dtype=means.dtype) for g in generators])
    noise = torch.stack([torch.randn(shape, generator=g, dtype=means.dtype) for g in generators])
    noise = noise.to(means.device)
    image_latents = (means + stds * eps.to(means.device)) * vae.config.scaling_factor
    latents = []
    for s in starts:
        part = slice(s.lo, s.hi)
        if masks is not None and strengths[order[s.lo]] == 1.0:
            latents.append(noise[part] * s.scheduler.init_noise_sigma)
        else:
            latents.append(
                _add_noise(s.scheduler, image_latents[part], noise[part], timesteps[s.offset])
            )
    latents = _pad(torch.cat(latents), rows or n)
    guided = settings.guidance_scale > 1.0
    cond, uncond = (x.map(lambda t: _pad(t, rows or n).to(dtype)) for x in (cond, uncond))
    # The UNet's conditioning for each count of rows it sees.
    contexts = {
        width: (Conditioning.cat([uncond[:width], cond[:width]]) if guided else cond[:width])
        for width in {width for _, _, width in schedule}
    }
    contexts = {width: c.unet_kwargs() for width, c in contexts.items()}
    stochastic = "generator" in inspect.signature(scheduler.step).parameters
    for g, active, width in schedule:
        t = timesteps[g]
        m = active[-1].hi
        inputs = [s.scheduler.scale_model_input(latents[s.lo : s.hi], t) for s in active]
        if width > m:  # not started yet, or padding: carried along (no empty part, which
            inputs.append(latents[m:width])  # would change torch.cat's memory format)
        batch = torch.cat(inputs).to(dtype)
        model_input = torch.cat([batch, batch]) if guided else batch
        pred = unet(model_input, unet_timesteps[g], **contexts[width]).sample
        if guided:
            pred_uncond, pred_text = pred.chunk(2)
            pred = pred_uncond + settings.guidance_scale * (pred_text - pred_uncond)
        stepped = []
        for s in active:
            part = slice(s.lo, s.hi)
            kwargs = {"generator": generators[part]} if stochastic else {}
            x = s.scheduler.step(pred[part], t, latents[part], **kwargs).prev_sample
            if masks is not None:
                kept = image_latents[part]
                if g < len(timesteps) - 1:
                    kept = _add_noise(s.scheduler, kept, noise[part], timesteps[g + 1])
                x = (1 - masks[part]) * kept + masks[part] * x
            stepped.append(x)
        latents = torch.cat([*stepped, latents[m:]])
    latents = latents[:n].to(vae.dtype) / vae.config.scaling_factor
    if settings.vae_slicing:  # one image at a time: the VAE's peak memory is one image's
        images = torch.cat([vae.decode(x).sample for x in latents.split(1)])
    else:
        images = vae.decode(latents).sample
    return images[torch.tensor(order).argsort()]


def load_mask(
    path: str, mode: str, resolution: int, latent_size: int, dilation: int
) -> torch.Tensor:
    """An object mask as the region to regenerate: [1, h, w] at latent size, 0 or 1.

    As the original code: resized to the model resolution, dilated with a `dilation`-pixel
    maximum filter, inverted for `background`, then binarized and downsampled (nearest) as
    the inpainting pipeline does.
    """
    from scipy.ndimage import maximum_filter

    with Image.open(path) as im:
        mask = np.asarray(im.convert("L").resize((resolution, resolution), Image.NEAREST)) > 0
    if dilation > 1:
        mask = maximum_filter(mask, size=dilation)
    if mode == "background":
        mask = ~mask
    tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(tensor, size=(latent_size, latent_size))[0]


class Engine:
    """Batched SDEdit over plan rows, with latents and prompt embeddings computed once.

    Rows are sorted by strength (largest first) into chunks of the batch size, a chunk
    mixing strengths where one ends (`sdedit`); on CUDA out-of-memory a
    chunk is generated again in halved sub-batches, and the batch size that worked is kept.
    With `settings.compile` (the UNet is compiled) every chunk, the last one too, is padded
    to the batch size and the UNet sees one shape throughout, so it compiles once per batch
    size; eager, it runs only on the samples started, which costs fewer sample-steps.
    An optional safety checker flags images, which are re-drawn with a derived seed up to
    `settings.safety_retries` times and then dropped. With `on_class` (an erased method:
    each class's images come from the UNet with that class erased), rows are grouped by
    class too and `on_class(label)` runs before each class's batches.
    """

    def __init__(
        self,
        components: Components,
        scheduler,
        manifest: pd.DataFrame,
        prompts: Mapping[int, str],
        resolution: int,
        settings: GenerationSettings,
        checker: Callable[[list[Image.Image]], list[bool]] | None = None,
        mask: str = "none",
        mask_dilation: int = 16,
        on_class: Callable[[int], None] | None = None,
    ):
        self.c = components
        self.on_class = on_class
        self.scheduler = scheduler
        self.settings = settings
        self.resolution = resolution
        self.checker = checker
        self.mask = mask
        self.mask_dilation = mask_dilation
        self.batch_size = settings.batch_size
        self.records = manifest.to_dict("records")
        self.sources: dict[int, Image.Image] = {}
        self.latents: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.masks: dict[int, torch.Tensor] = {}
        if mask != "none" and ("mask_path" not in manifest or manifest["mask_path"].isna().any()):
            raise ValueError(
                f"masked generation (mask: {mask}) needs a mask_path for every image; only the "
                "pascal and coco dataset kinds provide object masks"
            )
        labels = sorted(prompts)
        with torch.no_grad():
            embeds = components.encode([prompts[c] for c in labels])
            self.uncond = components.conditioner.unconditional(components)
        self.cond = {c: embeds[i : i + 1] for i, c in enumerate(labels)}

    def source(self, row: int) -> Image.Image:
        if row not in self.sources:
            self.sources[row] = load_image(self.records[row])
        return self.sources[row]

    def _encode(self, rows: Sequence[int]) -> None:
        """VAE-encode the real images not encoded yet (once per image for all variants).

        Images are encoded in fixed blocks of rows (row // batch size, a whole block at a
        time), so an image's latent comes from the same VAE batch whichever shard needs it
        first: batch composition changes the last bits, and a resumed job's shards must
        equal a whole run's byte for byte."""
        size = self.settings.batch_size
        for block in sorted({r // size for r in rows if r not in self.latents}):
            todo = range(block * size, min((block + 1) * size, len(self.records)))
            images = [self.source(r) for r in todo]
            vae_batch = 1 if self.settings.vae_slicing else self.batch_size
            means, stds = encode_images(self.c, images, self.resolution, vae_batch)
            for r, m, s in zip(todo, means, stds, strict=True):
                self.latents[r] = (m, s)
                if self.mask != "none":
                    self.masks[r] = load_mask(
                        self.records[r]["mask_path"], self.mask, self.resolution, m.shape[-1],
                        self.mask_dilation,
                    ).to(m.device, m.dtype)  # fmt: skip

    def _batch(self, chunk: list[dict], size: int) -> list[Image.Image]:
        """`chunk` (at most `size` rows) in one `sdedit` batch."""
        rows = [w["row"] for w in chunk]
        means = torch.stack([self.latents[r][0] for r in rows])
        stds = torch.stack([self.latents[r][1] for r in rows])
        cond = Conditioning.cat([self.cond[int(self.records[r]["label"])] for r in rows])
        generators = [torch.Generator().manual_seed(int(w["seed"])) for w in chunk]
        uncond = self.uncond.expand(len(rows))
        # Size conditioning (SDXL): each source's own (height, width), the model's output size.
        original = [self.source(r).size[::-1] for r in rows]
        target = (self.resolution, self.resolution)
        cond, uncond = (self.c.conditioner.sized(x, original, target) for x in (cond, uncond))
        masks = torch.stack([self.masks[r] for r in rows]) if self.masks else None
        strengths = [float(w["strength"]) for w in chunk]
        images = sdedit(
            self.c, self.scheduler, means, stds, cond, uncond, generators, strengths,
            self.settings, masks, rows=size if self.settings.compile else None,
        )  # fmt: skip
        return to_pil(images)

    def _safe_batch(self, chunk: list[dict]) -> list[Image.Image]:
        """`chunk` in sub-batches of the batch size, halved on out-of-memory."""

        def run(size: int) -> list[Image.Image]:
            return [
                image
                for start in range(0, len(chunk), size)
                for image in self._batch(chunk[start : start + size], size)
            ]

        images, self.batch_size = halve_on_oom(run, self.batch_size, "generation batch size")
        return images

    def run(self, work: Sequence[Mapping], seed: int, bar=None):
        """Yield (plan row, image or None if dropped by the safety checker) for `work`."""
        self._encode([w["row"] for w in work])
        groups: dict[int, list[dict]] = {}
        for w in work:
            item = {**w, "seed": int(w["variant_seed"]), "attempt": 0}
            label = int(self.records[w["row"]]["label"]) if self.on_class else 0
            groups.setdefault(label, []).append(item)
        for label in sorted(groups):
            if self.on_class:
                self.on_class(label)
            # Largest t0 first: a batch costs the UNet calls of its largest t0, so batches
            # of neighbouring strengths waste the fewest.
            queue = sorted(groups[label], key=lambda w: -w["strength"])
            while queue:
                chunk, queue = queue[: self.batch_size], queue[self.batch_size :]
                images = self._safe_batch(chunk)
                flags = self.checker(images) if self.checker else [False] * len(images)
                for item, image, flagged in zip(chunk, images, flags, strict=True):
                    if not flagged:
                        yield item, self._finish(item, image)
                    elif item["attempt"] < self.settings.safety_retries:
                        attempt = item["attempt"] + 1
                        seed_r = derive_seed(seed, item["key"], f"retry{attempt}", 0)
                        queue.append({**item, "seed": seed_r, "attempt": attempt})
                        continue
                    else:
                        log.warning(
                            "dropped %s: flagged %d times", item["key"], item["attempt"] + 1
                        )
                        yield item, None
                    if bar is not None:
                        bar.update(1)

    def _finish(self, item: Mapping, image: Image.Image) -> Image.Image:
        source = self.source(item["row"])
        if self.settings.resize_to_source and image.size != source.size:
            image = image.resize(source.size, Image.BILINEAR)  # as the original code
        return image


@dataclass(frozen=True)
class SetJob:
    """What every job writing shards of a synthetic set shares (`set_job`): the loaded
    engine, the plan (`work`), each image's shard json (`meta`) and the job's fingerprint,
    which the shards' sidecars record so that a rerun reuses only shards of the same job."""

    engine: Engine
    work: list[dict]
    meta: Callable[[Mapping], dict]
    fingerprint: str
    seed: int
    settings: GenerationSettings

    def write(self, out_dir: Path, shards: range, workers: int) -> list[dict]:
        """Generate (or reuse) the set's shards `shards` in `out_dir`: their index rows."""
        start = time.perf_counter()
        rows = write_shards(
            self.engine, self.work, out_dir, seed=self.seed,
            shard_size=self.settings.shard_size, image_format=self.settings.image_format,
            fingerprint=self.fingerprint, meta=self.meta, shards=shards, workers=workers,
        )  # fmt: skip
        elapsed = time.perf_counter() - start
        dropped = sum(bool(r["dropped"]) for r in rows)
        log.info(
            "%d images (%d dropped) in %.1fs (%.2f img/s)", len(rows), dropped, elapsed,
            len(rows) / max(elapsed, 1e-9),
        )  # fmt: skip
        return rows


def set_job(
    components: Components,
    manifest: pd.DataFrame,
    model: ModelSettings,
    set_name: str,
    method: MethodSettings,
    settings: GenerationSettings,
    seed: int,
    tokens_path: str | None,
    erasure: Mapping[int, tuple[Path, str]],
    checker_source: str,
    lora_path: str | None = None,
) -> SetJob:
    """A `generate` job's engine on `components` (the model of `model`) for the images of
    `manifest`: the method's prompts (with the tokens of `tokens_path`), the scheduler, the
    safety checker (read from `checker_source`) and, with `erasure` (each label's delta
    file and fingerprint), each class's images from the UNet with that class erased; with
    `lora_path` (learner: lora), the UNet carries that LoRA adapter."""
    names = class_names(manifest)
    prompts, token_hash = {}, ""
    sizes = load_into(components, tokens_path) if tokens_path else {}
    if tokens_path:
        token_hash = file_hash(tokens_path)
    for label, name in enumerate(names):
        token = class_token(name)
        prompt = method.prompt.format(name=name, token=token)
        if token in sizes:
            prompt = expand(prompt, token, sizes[token])
        prompts[label] = prompt
    scheduler = scheduler_from_name(settings.scheduler, components.scheduler)
    lora_hash = ""
    if lora_path:  # learner: lora (dafusion.stages.lora); lora + erased is refused at start-up
        from .lora import adapter_hash, load_adapter

        load_adapter(components, lora_path)
        lora_hash = adapter_hash(lora_path)
    switch = DeltaSwitch(components.unet)  # before compile: it keeps the plain names
    if settings.compile:
        components.unet = torch.compile(components.unet)
    checker = None
    if settings.safety_checker:
        checker = load_safety_checker(checker_source, components.unet.device, components.unet.dtype)

    def on_class(label: int) -> None:
        switch.use_file(erasure[label][0])

    engine = Engine(
        components, scheduler, manifest, prompts, model.resolution, settings, checker,
        mask=method.mask, mask_dilation=method.mask_dilation,
        on_class=on_class if erasure else None,
    )  # fmt: skip
    records = manifest.to_dict("records")
    scheduler_name = type(scheduler).__name__

    def meta(item: Mapping) -> dict:
        source = records[item["row"]]
        return {
            "source_key": source["key"],
            "j": int(item["j"]),
            "label": int(source["label"]),
            "class_name": source["class_name"],
            "set": set_name,
            "strength": float(item["strength"]),
            "prompt": prompts[int(source["label"])],
            "guidance_scale": float(settings.guidance_scale),
            "scheduler": scheduler_name,
            "steps": int(settings.num_inference_steps),
            "seed": int(item["seed"]),
            "model_id": str(model.pretrained),
            "token_hash": token_hash,
            "erasure": erasure[int(source["label"])][1] if erasure else "",
        }

    work = variant_plan(manifest, seed, settings.num_synthetic, method.strengths).to_dict("records")
    job = resume_key(
        keys=manifest["key"].tolist(), prompts=prompts, method=method.result_params(),
        seed=seed, generation=settings.result_params(), model=model.result_params(),
        token_hash=token_hash, erasure={k: v[1] for k, v in erasure.items()},
        **({"lora_hash": lora_hash} if lora_path else {}),
    )  # fmt: skip
    return SetJob(engine, work, meta, job, seed, settings)
