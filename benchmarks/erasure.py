"""Seconds per class of the two erasure methods, on one model, from one run.

- faithful ESD (the paper's): `iterations` (1000) Adam steps, each sampling x_t by DDIM
  steps with the model being trained, as many as ESD's loop runs for a t_enc drawn
  uniformly from [0, `ddim_steps`) (S - t_enc, S - 1 for t_enc 0, at S = 50). A smaller
  number of iterations is timed after one untimed iteration. The cost of an iteration
  depends on its draw, so the DDIM sampling is timed apart (the cost per DDIM step) and
  the extrapolation to `iterations` counts the expected steps per iteration (25.48 at
  S = 50), not the few drawn. One-off set-up (copying the UNet) counts in the
  per-iteration rest, so the extrapolation errs high. `--deviations` also times the named
  deviations `sampler: frozen` and `precision: bfloat16`, alone and together; every row
  draws the same i.
- UCE: one closed-form edit per class, erasing its name and preserving the other classes';
  after an untimed first call, the mean over every class.

Also printed: each delta's size per class (ESD `full` and `xattn`, UCE) in float32 and
float16. Targets (issue): on an H100 with the full-size model, faithful ESD <= 300 s per
class and UCE <= 10 s per class.

Usage:
    python benchmarks/erasure.py                                    # CPU, tiny model
    python benchmarks/erasure.py --full-size --deviations           # GPU
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack
from unittest import mock

import torch
from common import UNET_TFLOP_PER_SAMPLE_64, device_name, model_directory, record_cost, sync

from dafusion.jobs.devices import resolve_device
from dafusion.settings import ErasureSettings
from dafusion.stages import erasure
from dafusion.stages.erasure import (
    cross_attention_projections,
    ddim_indices,
    esd,
    trained_names,
    uce,
)
from dafusion.stages.models import Components, load_components

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ESD_TARGET_S = 300.0
UCE_TARGET_S = 10.0
DEVIATIONS = {
    "sampler=frozen": {"sampler": "frozen"},
    "precision=bfloat16": {"precision": "bfloat16"},
    "frozen+bfloat16": {"sampler": "frozen", "precision": "bfloat16"},
}


def time_esd(
    components: Components,
    prompt: str,
    settings: ErasureSettings,
    iterations: int,
    resolution: int,
    device: torch.device,
) -> tuple[float, float, float]:
    """ESD's seconds per iteration as timed, mean drawn DDIM steps, and seconds per class.

    Seconds per class: `settings.iterations` x (the rest of an iteration + the seconds per
    DDIM step x the expected steps per iteration).
    """
    esd(components, [prompt], settings.replace(iterations=1), resolution, "untimed", progress=False)
    sample_until = erasure.sample_until
    sampled = {"seconds": 0.0, "steps": 0}

    def timed_sampling(unet, alphas_cumprod, latents, t_enc, ddim_steps, *rest):
        sync(device)
        start = time.perf_counter()
        out = sample_until(unet, alphas_cumprod, latents, t_enc, ddim_steps, *rest)
        sync(device)
        sampled["seconds"] += time.perf_counter() - start
        sampled["steps"] += len(ddim_indices(t_enc, ddim_steps, len(alphas_cumprod)))
        return out

    with mock.patch.object(erasure, "sample_until", timed_sampling):
        sync(device)
        start = time.perf_counter()
        esd(
            components, [prompt], settings.replace(iterations=iterations), resolution, prompt,
            progress=False,
        )  # fmt: skip
        sync(device)
        total = time.perf_counter() - start
    per_step = sampled["seconds"] / sampled["steps"]
    rest = (total - sampled["seconds"]) / iterations
    per_class = settings.iterations * (rest + per_step * expected_steps(settings, components))
    return total / iterations, sampled["steps"] / iterations, per_class


def expected_steps(settings: ErasureSettings, components: Components) -> float:
    """ESD's mean DDIM steps per iteration over the uniform draw of t_enc."""
    num_train = len(components.scheduler.alphas_cumprod)
    steps = [
        len(ddim_indices(t, settings.ddim_steps, num_train)) for t in range(settings.ddim_steps)
    ]
    return sum(steps) / len(steps)


def time_uce(
    components: Components, names: list[str], settings: ErasureSettings, device: torch.device
) -> float:
    """UCE's mean seconds per class: each class erased, every other class preserved."""

    def erase(name: str) -> None:
        others = [settings.prompt.format(name=n) for n in names if n != name]
        uce(components, [settings.prompt.format(name=name)], others, settings)

    erase(names[0])
    sync(device)
    start = time.perf_counter()
    for name in names:
        erase(name)
    sync(device)
    return (time.perf_counter() - start) / len(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true", help="SD v1.4 architecture, 512 px")
    parser.add_argument(
        "--iterations", type=int, default=None, help="ESD iterations timed (20 full-size, 10 tiny)"
    )
    parser.add_argument("--classes", type=int, default=10, help="UCE erases each, keeping the rest")
    parser.add_argument("--deviations", action="store_true", help="also time ESD's deviations")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model-dir", help="diffusers model to time (random one written if empty)")
    parser.add_argument("--costs", help="costs file to add faithful ESD's per-unit cost to")
    args = parser.parse_args()
    device = resolve_device(args.device)
    resolution = 512 if args.full_size else 32
    iterations = args.iterations or (20 if args.full_size else 10)
    names = list(DIGITS[: args.classes]) + [f"class{c}" for c in range(10, args.classes)]
    esd_settings = ErasureSettings(method="esd")
    uce_settings = ErasureSettings(method="uce")
    with ExitStack() as stack:
        model_dir = model_directory(args.model_dir, args.full_size, stack)
        components = load_components(model_dir, device, torch.float32)
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(
        f"device={device}{gpu} model={'sd-v1.4-arch' if args.full_size else 'tiny'} "
        f"resolution={resolution} ESD: {iterations} of {esd_settings.iterations} iterations "
        f"timed, ddim_steps={esd_settings.ddim_steps}, train_method="
        f"{esd_settings.train_method}; UCE: {len(names)} classes; "
        f"torch.threads={torch.get_num_threads()}"
    )
    variants = {"faithful": {}} | (DEVIATIONS if args.deviations else {})
    expected = expected_steps(esd_settings, components)
    print(
        f"ESD: steps = mean DDIM steps per iteration as drawn (the same draws in every row); "
        f"s/class = {esd_settings.iterations} iterations at the expected mean {expected:g}"
    )
    print(f"{'ESD':>18}  {'s/iter':>8}  {'steps':>6}  {'s/class':>9}")
    esd_s = {}
    prompt = esd_settings.prompt.format(name=names[0])
    for label, changes in variants.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        per_iter, mean_steps, esd_s[label] = time_esd(
            components, prompt, esd_settings.replace(**changes), iterations, resolution, device
        )
        peak = (
            f"  peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
            if device.type == "cuda"
            else ""
        )
        print(f"{label:>18}  {per_iter:8.3f}  {mean_steps:6.1f}  {esd_s[label]:9.1f}{peak}")
    # An iteration's UNet work, in sample-forwards at 64x64 latents: the expected DDIM steps
    # with guidance (2 each), the frozen and the trained model at t, and the backward (about
    # 2 forwards).
    per_iteration = esd_s["faithful"] / esd_settings.iterations
    forwards = 2 * expected + 4
    record_cost(
        args.costs, "erase", per_iteration,
        f"{device_name(device)}, `erasure.py{' --full-size' if args.full_size else ''}`: "
        f"{esd_s['faithful']:,.0f} s per class",
        forwards * UNET_TFLOP_PER_SAMPLE_64 / per_iteration
        if args.full_size and device.type == "cuda" else None,
    )  # fmt: skip
    uce_s = time_uce(components, names, uce_settings, device)
    print(f"{'UCE':>18}  {uce_s:.3f} s/class")
    print(f"{'ratio':>18}  {esd_s['faithful'] / uce_s:.0f}x (faithful ESD / UCE, per class)")
    params = dict(components.unet.named_parameters())
    print("delta per class:")
    for label, delta in (
        ("ESD full", trained_names(components.unet, "full")),
        ("ESD xattn", trained_names(components.unet, "xattn")),
        ("UCE", cross_attention_projections(components.unet, edit_keys=uce_settings.edit_keys)),
    ):
        values = sum(params[name].numel() for name in delta)
        print(
            f"{label:>18}  {values * 4 / 1e6:9.2f} MB float32  {values * 2 / 1e6:9.2f} MB float16"
            f"  ({len(delta)} tensors, {values:,} values)"
        )
    if args.full_size and device.type == "cuda":
        for label, seconds, target in (
            ("faithful ESD", esd_s["faithful"], ESD_TARGET_S),
            ("UCE", uce_s, UCE_TARGET_S),
        ):
            verdict = "met" if seconds <= target else "NOT met"
            print(f"target {label} <= {target:g} s/class: {seconds:.1f} s, {verdict}")
    else:
        print(
            f"targets (faithful ESD <= {ESD_TARGET_S:g} s/class, UCE <= {UCE_TARGET_S:g} "
            "s/class) apply to --full-size on an H100"
        )


if __name__ == "__main__":
    main()
