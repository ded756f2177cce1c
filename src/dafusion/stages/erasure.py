"""Model-centric leakage prevention (section 6.1): erase class names from the UNet.

Two methods, each returning only the tensors it changed (a delta, see `dafusion.stages.deltas`):

- **ESD** (Gandikota et al. 2023, eq. 8 of the paper), faithful to the ESD code the paper
  used: fine-tune the UNet so that eps_theta(x_t, t, c) matches
  eps*(x_t, t) - eta (eps*(x_t, t, c) - eps*(x_t, t)) for the frozen base eps*. Each step
  draws i in [0, S) (S = `ddim_steps`, N = 1000 training steps) and samples x_t as that
  code does: LDM's DDIM (eta 0, guidance `start_guidance`, the model being trained) from
  pure noise down its uniform timesteps, stopping after index i - 1, so x_t sits at the
  noise level of DDPM step about N (i - 2) / S (step 0 for i <= 1): a small i gives a nearly
  clean latent. t is drawn in [N i / S, N (i + 1) / S), two to three DDIM intervals above.
  Adam, batch 1, `iterations` steps. Named deviations: `sampler: frozen` samples x_t with
  the base model, `precision: bfloat16` runs the UNets under autocast.
- **UCE** (Gandikota et al. 2024): a closed-form edit of every cross-attention key/value
  projection W, minimizing sum_erase |W' k - W k_guide|^2 (erase_scale) +
  sum_preserve |W' k - W k|^2 (preserve_scale) + lamb |W' - W|^2, so that the class name's
  text embeddings map to the guide's (the empty prompt) while the preserved prompts (always
  the empty prompt, plus the other classes') keep their outputs. Seconds, not hours.

Both run on every family the stages drive (docs/models.md, "Erasure on SD 2.x and SDXL"):
the conditioning is the family's (`Conditioning`: SDXL's pooled embedding and size ids ride
along), ESD's parameter rules are name rules that read the same on an SDXL UNet (but for
xlayer and selflayer, which name Stable Diffusion 1.x/2.x blocks), and UCE's projections
are every cross-attention's, whatever the context width (2048 on SDXL).

`erasure_scores` measures the result: how far eps(x_t, t, "a photo of a {c}") moved toward
the base model's eps(x_t, t, "") for the erased class and for every other class.
`erase_classes` is an erase job's work: the deltas of a dataset's classes, reused while
their inputs hold, and their check table.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..jobs.checkpoint import Checkpoint
from ..jobs.io import resume_key
from ..jobs.seeds import derive_seed
from ..settings import ErasureSettings, ModelSettings
from .deltas import JOINT, DeltaSwitch, delta_meta, delta_path, save_delta
from .families.conditioning import Conditioning
from .models import Components

log = logging.getLogger(__name__)

TRAIN_METHODS = (
    "full", "xattn", "noxattn", "selfattn", "notime", "xlayer", "selflayer", "xattn-strict",
)  # fmt: skip
# ESD's layer-specific methods: the attention they train (attn1 self-, attn2 cross-) in which
# CompVis UNet blocks, (input_blocks, output_blocks).
LAYER_METHODS = {"xlayer": ("attn2", (), (6, 8)), "selflayer": ("attn1", (4, 7), ())}
# The UNet those blocks are counted in: Stable Diffusion 1.x's and 2.x's (4 levels, two
# blocks each, cross-attention in the first three), as diffusers configures it.
COMPVIS_LAYOUT = {
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "layers_per_block": 2,
}
# CompVis `out.` (final norm and convolution) and `time_embed`, in diffusers' names.
OUTER = ("conv_norm_out.", "conv_out.", "time_embedding.")
# Fixed probes of the erasure check: Gaussian latents and timesteps (fractions of the
# training schedule), the same for the base and every edited UNet.
CHECK_PROBES = 2
CHECK_TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)


def compvis_attentions(
    unet: torch.nn.Module, input_blocks: Sequence[int] = (), output_blocks: Sequence[int] = ()
) -> tuple[str, ...]:
    """diffusers' name prefixes of CompVis `input_blocks.k` / `output_blocks.k` attentions.

    As diffusers' checkpoint conversion maps them (convert_ldm_unet_checkpoint): input block
    k >= 1 is level (k - 1) // (L + 1), position (k - 1) % (L + 1) of the down path, output
    block k level k // (L + 1), position k % (L + 1) of the up path, L = layers_per_block.
    """
    per_level = int(unet.config.layers_per_block) + 1
    down = [
        f"down_blocks.{(k - 1) // per_level}.attentions.{(k - 1) % per_level}."
        for k in input_blocks
    ]
    up = [f"up_blocks.{k // per_level}.attentions.{k % per_level}." for k in output_blocks]
    return tuple(down + up)


def trained_names(unet: torch.nn.Module, train_method: str) -> list[str]:
    """The parameters ESD trains, by the ESD code's rules on diffusers' names.

    full: every parameter; xattn: cross-attention (attn2); selfattn: self-attention (attn1);
    noxattn: all but cross-attention, the time embedding and the output layers; notime: all
    but the time embedding and the output layers; xlayer: the cross-attention of CompVis
    output_blocks 6 and 8; selflayer: the self-attention of CompVis input_blocks 4 and 7;
    xattn-strict: the cross-attention's key and value projections only (the ESD authors'
    diffusers code, esd_sd.py l. 44-47 and esd_sdxl.py l. 46-49: `esd-x-strict`).

    On an SDXL UNet the name rules read as they do on SD's: xattn is esd_sdxl.py's `esd-x`
    (l. 31-34: every Linear under attn2, which holds to_q, to_k, to_v and to_out.0 only), and
    noxattn and notime train the added (pooled text and size) embedding `add_embedding`, as
    the CompVis rule, which leaves out `time_embed` only, would train SGM's `label_emb`.
    xlayer and selflayer count blocks of Stable Diffusion 1.x/2.x's UNet (`COMPVIS_LAYOUT`):
    on any other layout (SDXL's has three levels, attention in the lower two only) they are
    refused rather than mapped onto other layers.
    """
    rules = {
        "full": lambda n: True,
        "xattn": lambda n: ".attn2." in n,
        "noxattn": lambda n: ".attn2." not in n and not n.startswith(OUTER),
        "selfattn": lambda n: ".attn1." in n,
        "notime": lambda n: not n.startswith(OUTER),
        "xattn-strict": lambda n: ".attn2.to_k." in n or ".attn2.to_v." in n,
    }
    if train_method in LAYER_METHODS:
        layout = {key: _plain(unet.config[key]) for key in COMPVIS_LAYOUT}
        if layout != COMPVIS_LAYOUT:
            raise ValueError(
                f"config key 'erasure.train_method': '{train_method}' selects no parameter of "
                "this UNet: it names blocks of Stable Diffusion 1.x/2.x's UNet (CompVis "
                f"input/output blocks), and this one is laid out otherwise ({layout}); use "
                "xattn, xattn-strict, selfattn, noxattn, notime or full"
            )
        kind, inputs, outputs = LAYER_METHODS[train_method]
        blocks = compvis_attentions(unet, inputs, outputs)
        rules[train_method] = lambda n: f".{kind}." in n and n.startswith(blocks)
    if train_method not in rules:
        raise ValueError(f"config key 'erasure.train_method': unknown '{train_method}'")
    names = [name for name, _ in unet.named_parameters() if rules[train_method](name)]
    if not names:
        raise ValueError(
            f"config key 'erasure.train_method': '{train_method}' selects no parameter of this UNet"
        )
    return names


def _plain(value):
    """A UNet config value as COMPVIS_LAYOUT writes it (lists as tuples)."""
    return tuple(value) if isinstance(value, list) else value


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


def ddim_timesteps(ddim_steps: int, num_train: int) -> np.ndarray:
    """LDM's uniform DDIM timesteps: every (N // S)-th training step, plus one.

    More than S of them when S does not divide N (S = 30: 31 timesteps, 1 to 991).
    """
    return np.arange(0, num_train, num_train // ddim_steps) + 1


def ddim_indices(t_enc: int, ddim_steps: int, num_train: int) -> range:
    """The indices into `ddim_timesteps` that ESD's x_t sampler runs, in order.

    LDM's sampler with t_start -1 drops the largest timestep, runs down from the next one and,
    with till_T = t_enc, stops after index t_enc - 1 (t_enc = 0 never stops: all of them).
    """
    count = len(ddim_timesteps(ddim_steps, num_train))
    return range(count - 2, max(t_enc - 1, 0) - 1, -1)


def timestep_range(t_enc: int, ddim_steps: int, num_train: int) -> tuple[int, int]:
    """ESD's [low, high) for the timestep at which the models are queried, given t_enc."""
    return round(t_enc / ddim_steps * num_train), round((t_enc + 1) / ddim_steps * num_train)


@torch.no_grad()
def sample_until(
    unet: torch.nn.Module,
    alphas_cumprod: torch.Tensor,
    latents: torch.Tensor,
    t_enc: int,
    ddim_steps: int,
    cond: Conditioning,
    uncond: Conditioning,
    guidance: float,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """ESD's x_t (quick_sample_till_t): DDIM with eta 0 from `latents` to t_enc.

    The steps of `ddim_indices`, each x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps with
    x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t), a_t the cumulative alpha at the step's timestep
    and a_prev at the previous DDIM timestep's (at step 0 for index 0). eps is guided by
    `guidance` against `uncond`; at guidance 1 LDM's sampler makes the conditional call only.
    A model that predicts v (`prediction_type`, Stable Diffusion 2.x at 768 px) has its
    guided output turned into eps = sqrt(a_t) v + sqrt(1 - a_t) x, the same x_t an eps model
    predicting the same x0 gives (the ESD authors' diffusers code samples with the
    pipeline's own scheduler, which does the same).
    """
    num_train = len(alphas_cumprod)
    timesteps = ddim_timesteps(ddim_steps, num_train)
    guided = guidance != 1
    context = (Conditioning.cat([uncond, cond]) if guided else cond).to(unet.dtype).unet_kwargs()
    for index in ddim_indices(t_enc, ddim_steps, num_train):
        t = int(timesteps[index])
        x = torch.cat([latents] * 2) if guided else latents
        eps = unet(x.to(unet.dtype), t, **context).sample.float()
        if guided:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        a_t = alphas_cumprod[t]
        a_prev = alphas_cumprod[timesteps[index - 1] if index else 0]
        if prediction_type == "v_prediction":
            eps = a_t.sqrt() * eps + (1 - a_t).sqrt() * latents
        x0 = (latents - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        latents = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
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
    if settings.sampler not in ("trained", "frozen"):
        raise ValueError(f"config key 'erasure.sampler': unknown '{settings.sampler}'")
    if settings.precision not in ("float32", "bfloat16"):
        raise ValueError(f"config key 'erasure.precision': unknown '{settings.precision}'")
    frozen = components.unet
    device = frozen.device
    alphas_cumprod = components.scheduler.alphas_cumprod.to(device)
    num_train = len(alphas_cumprod)
    if settings.ddim_steps > num_train:  # LDM's timesteps are every (N // S)-th step
        raise ValueError(f"config key 'erasure.ddim_steps': above the model's {num_train} steps")
    wanted = set(trained_names(frozen, settings.train_method))
    trained = copy.deepcopy(frozen)
    if trained.dtype != torch.float32:  # master weights in float32 whatever model.dtype
        trained.float()  # not .to(dtype): diffusers' ModelMixin.to logs a spurious warning
    params = {name: p for name, p in trained.named_parameters() if name in wanted}
    for param in params.values():
        param.requires_grad_(True)
    trained.train()
    optimizer = torch.optim.Adam(list(params.values()), lr=settings.lr)
    sampler_unet = trained if settings.sampler == "trained" else frozen
    with torch.no_grad():
        embeddings = _sized(components, components.encode(list(prompts)), resolution)
        # The loss's null prompt is the encoded empty prompt on every family, as the ESD
        # authors' SDXL code encodes it (esd_sdxl.py l. 104-109: negative_prompt "", so not
        # zeroed); the sampler's unconditional half is what the family's pipeline uses when
        # given no negative prompt (esd_sdxl.py l. 159-168 calls the pipeline without one):
        # the same for Stable Diffusion, zeros for SDXL base (force_zeros_for_empty_prompt).
        emb_0 = _sized(components, components.encode([""]), resolution)
        uncond = components.conditioner.unconditional(components)
        uncond = _sized(components, uncond, resolution)
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
        t_enc = int(torch.randint(settings.ddim_steps, (1,), generator=generator))
        low, high = timestep_range(t_enc, settings.ddim_steps, num_train)
        t = torch.randint(low, high, (1,), generator=generator).to(device)
        noise = torch.randn(shape, generator=generator).to(device)
        with _autocast(device, settings.precision):
            z = sample_until(
                sampler_unet, alphas_cumprod, noise, t_enc, settings.ddim_steps, emb_p, uncond,
                settings.start_guidance, components.scheduler.config.prediction_type,
            )  # fmt: skip
            with torch.no_grad():  # the base model's two predictions in one call
                pair = torch.cat([z, z]).to(frozen.dtype)
                context = Conditioning.cat([emb_0, emb_p]).to(frozen.dtype).unet_kwargs()
                e_0, e_p = frozen(pair, t, **context).sample.float().chunk(2)
            e_n = trained(z, t, **emb_p.unet_kwargs()).sample.float()
        # In the UNet's own output space, eps or v, as the ESD authors' diffusers code
        # (esd_sd.py l. 191): at a fixed x_t, v is affine in eps with one offset for both
        # prompts, so the negative guidance is the same edit up to a scale.
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


def _sized(components: Components, cond: Conditioning, resolution: int) -> Conditioning:
    """`cond` with the size conditioning of `resolution`-pixel images (for SDXL, as the ESD
    authors' esd_sdxl.py passes (height, width), (0, 0), (height, width))."""
    size = (resolution, resolution)
    return components.conditioner.sized(cond, [size] * len(cond), size).to(components.unet.device)


def _last_token(components: Components, text: str) -> int:
    """Index of a prompt's last word token in the padded sequence (BOS is 0).

    SDXL's context concatenates both encoders' states position by position, so the index
    must be the same in both: their tokenizers share CLIP's BPE and differ in the padding
    only (tokenizer_2 pads with "!", after the index counted here), as the UCE authors'
    SDXL path assumes when it counts with the first tokenizer alone (uce_sd_erase.py
    l. 34-39). A model whose tokenizers split a prompt differently is refused.
    """
    counts = {
        len(tokenizer(text, truncation=True).input_ids) - 2
        for tokenizer, _ in components.text_encoders
    }
    if len(counts) > 1:
        raise ValueError(
            f"UCE: the model's tokenizers split {text!r} into different numbers of tokens "
            f"({sorted(counts)}); its text encoders' states cannot be aligned"
        )
    return counts.pop()


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
    to the end of the padded sequence, aligned with the guide's from its last token; the
    empty prompt and each preserved prompt all their positions, weighted by preserve_scale
    (default max(0.1, 1 / their count, the empty prompt included)). Solved in float64.

    On SDXL the keys are the cross-attention context, both encoders' penultimate states
    concatenated (2048 wide), and the edited weights every attn2's to_k and to_v, as the UCE
    authors' SDXL path (uce_sd_erase.py l. 17-20, 29-32); the pooled embedding reaches the
    UNet through its added embedding, not cross-attention, and no edit touches it.
    """
    preserve = ["", *preserve]
    preserve_scale = settings.preserve_scale
    if preserve_scale is None:
        preserve_scale = max(0.1, 1 / len(preserve))
    length = components.tokenizer.model_max_length
    erase_keys, guide_keys = [], []
    guide = components.encode([settings.guide]).hidden[0].double()
    guide_last = _last_token(components, settings.guide)
    for text, emb in zip(erase, components.encode(list(erase)).hidden.double(), strict=True):
        last = _last_token(components, text)
        farthest = max(last, guide_last)
        erase_keys.append(emb[last : length - (farthest - last)])
        guide_keys.append(guide[guide_last : length - (farthest - guide_last)])
    preserve_keys = components.encode(preserve).hidden.double().reshape(-1, guide.shape[-1])
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
    context = _sized(components, components.encode(prompts), resolution).to(dtype=unet.dtype)
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
            pred = unet(x, t, **context[[c for _, _, c in chunk]].unet_kwargs()).sample
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


def erase_classes(
    components: Components,
    names: Sequence[str],
    model: ModelSettings,
    settings: ErasureSettings,
    folder: Path,
    code: Mapping | None = None,
) -> pd.DataFrame:
    """An erase job's work (`pipeline.erase`): erase `names` from the UNet of `components`
    by `settings`, one delta per class (or one joint delta) in `folder`, and return the
    check table (`erasure_scores`) with each delta's file and fingerprint.

    A delta's fingerprint covers the model, the classes, the settings and `code`, so a
    finished delta with the same one is reused; ESD checkpoints beside the deltas let a
    killed job resume mid-class. Deltas of classes no longer erased are deleted.
    """
    folder.mkdir(parents=True, exist_ok=True)
    joint = settings.scope == "joint"
    units = {JOINT: list(names)} if joint else {name: [name] for name in names}
    paths = {key: delta_path(folder, None if key == JOINT else key) for key in units}
    for stale in folder.glob("*.safetensors"):
        if stale not in paths.values():
            stale.unlink()
    dtype = getattr(torch, settings.delta_dtype)
    fingerprints = {}
    for key, erased in units.items():
        prompts = [settings.prompt.format(name=n) for n in erased]
        preserve = [settings.prompt.format(name=n) for n in names if n not in erased]
        fingerprints[key] = resume_key(
            model=model.result_params(), erasure=settings.result_params(), erase=prompts,
            code=dict(code or {}), preserve=preserve if settings.method == "uce" else None,
        )  # fmt: skip
        path = paths[key]
        if path.exists() and delta_meta(path).get("fingerprint") == fingerprints[key]:
            log.info("%s: reusing %s", key, path)
            continue
        start = time.perf_counter()
        if settings.method == "uce":
            tensors = uce(components, prompts, preserve, settings)
        else:
            checkpoint = Checkpoint(
                folder / f".{path.stem}.checkpoint.safetensors", fingerprints[key]
            )
            tensors, losses = esd(
                components, prompts, settings, model.resolution, stream=key,
                checkpoint=checkpoint,
            )  # fmt: skip
            log.info("%s: ESD loss %.5f -> %.5f", key, losses[0], losses[-1])
        # What was erased and how, never when or how fast: a delta's bytes, like every
        # result's, depend only on its inputs (the time is in the log).
        meta = {
            "fingerprint": fingerprints[key], "erased": erased, "method": settings.method,
            "model": model.pretrained,
        }  # fmt: skip
        save_delta(path, tensors, dtype, meta)
        if settings.method == "esd":
            checkpoint.path.unlink(missing_ok=True)
        seconds = time.perf_counter() - start
        log.info("%s: erased %s in %.1fs -> %s", key, erased, seconds, path)
    switch = DeltaSwitch(components.unet)
    table = erasure_scores(components, switch, paths, units, names, settings, model.resolution)
    table.insert(1, "file", table["delta"].map(lambda k: paths[k].name))
    table.insert(2, "fingerprint", table["delta"].map(fingerprints))
    for key, group in table[table["erased"]].groupby("delta", sort=False):
        others = table[(table["delta"] == key) & ~table["erased"]]["erased_fraction"]
        log.info(
            "%s: erased %.3f (collateral: mean %.3f, max %.3f)", key,
            group["erased_fraction"].mean(), others.mean() if len(others) else 0.0,
            others.max() if len(others) else 0.0,
        )  # fmt: skip
    return table
