"""Model-centric leakage prevention (section 6.1): erase class names from the UNet.

Two methods, each returning only the tensors it changed (a delta, see `dafusion.deltas`):

- **ESD** (Gandikota et al. 2023, eq. 8 of the paper), faithful to the ESD code the paper
  used: fine-tune the UNet so that eps_theta(x_t, t, c) matches
  eps*(x_t, t) - eta (eps*(x_t, t, c) - eps*(x_t, t)) for the frozen base eps*. x_t comes
  from running DDIM (eta 0) from noise for i of `ddim_steps` steps with guidance
  `start_guidance`, using the model being trained; t is drawn in [N i / S, N (i + 1) / S)
  as that code does. Adam, batch 1, `iterations` steps. Named deviations: `sampler: frozen`
  samples x_t with the base model, `precision: bfloat16` runs the UNets under autocast.
- **UCE** (Gandikota et al. 2024): a closed-form edit of every cross-attention key/value
  projection W, minimizing sum_erase |W' k - W k_guide|^2 (erase_scale) +
  sum_preserve |W' k - W k|^2 (preserve_scale) + lamb |W' - W|^2, so that the class name's
  text embeddings map to the guide's (the empty prompt) while the preserved prompts keep
  their outputs. Seconds, not hours.

`erasure_scores` measures the result: how far eps(x_t, t, "a photo of a {c}") moved toward
the base model's eps(x_t, t, "") for the erased class and for every other class.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import Checkpoint
from .deltas import DeltaSwitch
from .models import Components, encode_text
from .seeds import derive_seed
from .settings import ErasureSettings

log = logging.getLogger(__name__)

TRAIN_METHODS = ("full", "xattn", "noxattn")
# Fixed probes of the erasure check: Gaussian latents and timesteps (fractions of the
# training schedule), the same for the base and every edited UNet.
CHECK_PROBES = 2
CHECK_TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)


def trained_names(unet: torch.nn.Module, train_method: str) -> list[str]:
    """The parameters ESD trains, by the ESD code's rules on diffusers' names.

    full: every parameter; xattn: cross-attention only (attn2); noxattn: everything but
    cross-attention, the time embedding and the output layers.
    """
    names = [name for name, _ in unet.named_parameters()]
    if train_method == "full":
        return names
    if train_method == "xattn":
        return [n for n in names if ".attn2." in n]
    if train_method == "noxattn":
        skip = ("conv_out.", "conv_norm_out.", "time_embedding.")
        return [n for n in names if ".attn2." not in n and not n.startswith(skip)]
    raise ValueError(f"config key 'erasure.train_method': unknown '{train_method}'")


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


@torch.no_grad()
def sample_until(unet, scheduler, latents, steps, cond, uncond, guidance) -> torch.Tensor:
    """ESD's x_t: `steps` DDIM steps from `latents` with classifier-free guidance."""
    context = torch.cat([uncond, cond]).to(unet.dtype)
    for t in scheduler.timesteps[:steps]:
        pred = unet(torch.cat([latents] * 2).to(unet.dtype), t, context).sample.float()
        pred_uncond, pred_text = pred.chunk(2)
        pred = pred_uncond + guidance * (pred_text - pred_uncond)
        latents = scheduler.step(pred, t, latents).prev_sample
    return latents


def esd(
    components: Components,
    prompts: Sequence[str],
    settings: ErasureSettings,
    resolution: int,
    stream: str,
    checkpoint: Checkpoint | None = None,
    progress: bool = True,
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Erase `prompts` by ESD; returns the trained tensors (float32) and the loss per step.

    With several prompts (a joint erasure) each iteration erases one drawn at random, as
    the ESD code does for a list of concepts.

    `stream` names the random stream (with `settings.seed`): the draws depend on it only,
    so a resumed run draws exactly what an uninterrupted one does.
    """
    from diffusers import DDIMScheduler

    if settings.sampler not in ("trained", "frozen"):
        raise ValueError(f"config key 'erasure.sampler': unknown '{settings.sampler}'")
    if settings.precision not in ("float32", "bfloat16"):
        raise ValueError(f"config key 'erasure.precision': unknown '{settings.precision}'")
    frozen = components.unet
    device = frozen.device
    trained = copy.deepcopy(frozen)
    if trained.dtype != torch.float32:  # master weights in float32 whatever model.dtype
        trained.to(torch.float32)
    wanted = set(trained_names(trained, settings.train_method))
    params = {name: p for name, p in trained.named_parameters() if name in wanted}
    for param in params.values():
        param.requires_grad_(True)
    trained.train()
    optimizer = torch.optim.Adam(list(params.values()), lr=settings.lr)
    sampler_unet = trained if settings.sampler == "trained" else frozen
    scheduler = DDIMScheduler.from_config(components.scheduler.config)
    scheduler.set_timesteps(settings.ddim_steps, device=device)
    num_train = scheduler.config.num_train_timesteps
    with torch.no_grad():
        embeddings = encode_text(components, list(prompts)).to(device)
        emb_0 = encode_text(components, [""]).to(device)
    latent = resolution // components.vae_scale_factor
    shape = (1, frozen.config.in_channels, latent, latent)
    generator = torch.Generator().manual_seed(derive_seed("esd", settings.seed, stream))
    losses = np.zeros(settings.iterations, dtype=np.float32)
    start = checkpoint.load(params, optimizer, [generator], losses) if checkpoint else 0
    every = settings.checkpoint_every
    bar = tqdm(
        range(start, settings.iterations), initial=start, total=settings.iterations,
        desc=f"ESD {prompts[0]!r}" + (f" +{len(prompts) - 1}" if len(prompts) > 1 else ""),
        disable=not progress,
    )  # fmt: skip
    eta = settings.negative_guidance
    joint = len(prompts) > 1
    for step in bar:
        which = int(torch.randint(len(prompts), (1,), generator=generator)) if joint else 0
        emb_p = embeddings[which : which + 1]
        i = int(torch.randint(settings.ddim_steps, (1,), generator=generator))
        low = round(i / settings.ddim_steps * num_train)
        high = max(round((i + 1) / settings.ddim_steps * num_train), low + 1)
        t = torch.randint(low, high, (1,), generator=generator).to(device)
        noise = torch.randn(shape, generator=generator).to(device)
        with _autocast(device, settings.precision):
            z = sample_until(
                sampler_unet, scheduler, noise, i, emb_p, emb_0, settings.start_guidance
            )
            with torch.no_grad():  # the base model's two predictions in one call
                pair = torch.cat([z, z]).to(frozen.dtype)
                context = torch.cat([emb_0, emb_p]).to(frozen.dtype)
                e_0, e_p = frozen(pair, t, context).sample.float().chunk(2)
            e_n = trained(z, t, emb_p).sample.float()
        loss = F.mse_loss(e_n, e_0 - eta * (e_p - e_0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[step] = loss.item()
        bar.set_postfix(loss=f"{losses[step]:.4f}")
        done = step + 1
        if checkpoint and every and done % every == 0 and done < settings.iterations:
            checkpoint.save(done, params, optimizer, [generator], losses)
    return {name: param.detach() for name, param in params.items()}, losses


def _last_token(components: Components, text: str) -> int:
    """Index of a prompt's last word token in the padded sequence (BOS is 0)."""
    return len(components.tokenizer(text).input_ids) - 2


def cross_attention_projections(unet: torch.nn.Module, edit_keys: bool) -> list[str]:
    """The weights UCE edits: every cross-attention's value (and key) projection."""
    kinds = ("to_v", "to_k") if edit_keys else ("to_v",)
    return [
        f"{name}.{kind}.weight"
        for name, _ in unet.named_modules()
        if name.endswith("attn2")
        for kind in kinds
    ]


@torch.no_grad()
def uce(
    components: Components,
    erase: Sequence[str],
    preserve: Sequence[str],
    settings: ErasureSettings,
) -> dict[str, torch.Tensor]:
    """Erase `erase` (prompts) toward `settings.guide`, preserving `preserve`, in closed form.

    As the UCE code: each erased prompt contributes its embeddings from its last word token
    to the end of the padded sequence, aligned with the guide's from its last token; each
    preserved prompt all its positions. Solved in float64.
    """
    preserve = list(preserve) or [""]
    preserve_scale = settings.preserve_scale
    if preserve_scale is None:
        preserve_scale = max(0.1, 1 / len(preserve))
    length = components.tokenizer.model_max_length
    erase_keys, guide_keys = [], []
    guide = encode_text(components, [settings.guide])[0].double()
    guide_last = _last_token(components, settings.guide)
    for text, emb in zip(erase, encode_text(components, list(erase)).double(), strict=True):
        last = _last_token(components, text)
        farthest = max(last, guide_last)
        erase_keys.append(emb[last : length - (farthest - last)])
        guide_keys.append(guide[guide_last : length - (farthest - guide_last)])
    preserve_keys = encode_text(components, preserve).double().reshape(-1, guide.shape[-1])
    k_erase = torch.cat(erase_keys)
    k_guide = torch.cat(guide_keys)
    params = dict(components.unet.named_parameters())
    device = components.unet.device
    k_e, k_g, k_p = (k.to(device) for k in (k_erase, k_guide, preserve_keys))
    # W' = lhs rhs^-1; rhs depends only on the text embeddings, the same for every projection.
    eye = torch.eye(k_e.shape[1], dtype=k_e.dtype, device=device)
    rhs = settings.lamb * eye + settings.erase_scale * k_e.T @ k_e + preserve_scale * k_p.T @ k_p
    factors = torch.linalg.lu_factor(rhs)
    edited = {}
    for name in cross_attention_projections(components.unet, settings.edit_keys):
        w = params[name].double()
        lhs = settings.lamb * w + settings.erase_scale * (k_g @ w.T).T @ k_e
        lhs = lhs + preserve_scale * w @ k_p.T @ k_p
        # rhs is symmetric: W' rhs = lhs  <=>  rhs W'^T = lhs^T.
        edited[name] = torch.linalg.lu_solve(*factors, lhs.T).T.to(params[name].dtype)
    return edited


@torch.no_grad()
def erasure_scores(
    components: Components,
    switch: DeltaSwitch,
    deltas: Mapping[str, Path],
    erased: Mapping[str, Sequence[str]],
    class_names: Sequence[str],
    settings: ErasureSettings,
    resolution: int,
) -> pd.DataFrame:
    """For every delta and every class: the fraction of the way eps(x_t, t, check prompt)
    moved from the base model's value toward the base's eps(x_t, t, "").

    Projected on that direction and summed over fixed probes: 1 = the class prompt now acts
    like the empty prompt, 0 = untouched. ESD's target lies at 1 + negative_guidance.
    `deltas` maps a delta's name to its file, `erased[name]` lists the classes it erases.
    """
    unet = components.unet
    device = unet.device
    prompts = [settings.check_prompt.format(name=n) for n in class_names] + [""]
    context = encode_text(components, prompts).to(unet.dtype)
    latent = resolution // components.vae_scale_factor
    g = torch.Generator().manual_seed(derive_seed("erasure-check", settings.seed))
    probes = torch.randn((CHECK_PROBES, unet.config.in_channels, latent, latent), generator=g)
    num_train = components.scheduler.config.num_train_timesteps
    steps = [int(f * num_train) for f in CHECK_TIMESTEPS]
    combos = [(p, s, c) for c in range(len(prompts)) for p in range(CHECK_PROBES) for s in steps]

    def predict(cls_indices: Sequence[int]) -> torch.Tensor:
        todo = [x for x in combos if x[2] in cls_indices]
        out = []
        for start in range(0, len(todo), settings.batch_size):
            chunk = todo[start : start + settings.batch_size]
            x = probes[[p for p, _, _ in chunk]].to(device, unet.dtype)
            t = torch.tensor([s for _, s, _ in chunk], device=device)
            pred = unet(x, t, context[[c for _, _, c in chunk]]).sample
            out.append(pred.float().cpu())
        per = len(steps) * CHECK_PROBES
        return torch.cat(out).view(len(cls_indices), per, -1)

    n = len(class_names)
    switch.restore()
    base = predict(range(n + 1))
    direction = base[n : n + 1] - base[:n]  # toward the unconditional prediction
    norm = (direction**2).sum(dim=(1, 2))
    rows = []
    for key, path in deltas.items():
        switch.use_file(path)
        moved = predict(range(n)) - base[:n]
        fraction = (moved * direction).sum(dim=(1, 2)) / norm.clamp_min(1e-12)
        for c, name in enumerate(class_names):
            rows.append(
                {
                    "delta": key,
                    "class_name": name,
                    "erased": name in erased[key],
                    "erased_fraction": float(fraction[c]),
                }
            )
    switch.restore()
    return pd.DataFrame(rows)
