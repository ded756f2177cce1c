"""This project's SDEdit engine against the per-image loop and against batched diffusers,
eager and with a compiled UNet.

Same work every way: the same real images, M variants each, the same t0 per variant, steps,
guidance scale and dtype.

- per-image (as the original DA-Fusion code): one `StableDiffusionImg2ImgPipeline` call per
  synthetic image, batch 1, the real image VAE-encoded and the prompt text-encoded again on
  every call.
- batched diffusers (what a practitioner writes): one `StableDiffusionImg2ImgPipeline` call
  per strength group and batch, with a list of images, prompts and per-image generators;
  compiled: the same with `pipe.unet = torch.compile(pipe.unet)` (its batch shapes vary,
  the last batch of each strength group being smaller).
- engine (this project): each real image encoded once, each prompt once, work sorted by
  strength into batches that may mix strengths; compiled: `generation.compile: true`
  (`torch.compile` of the UNet, every batch padded to the batch size: one shape).

Each eager side first runs one strength group untimed; each compiled side first runs the
whole work untimed, so every shape it meets is compiled before the clock starts (that first
run's seconds and the graphs compiled are printed apart; inductor caches compiled kernels
on disk, so set TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 for cold compile times). `--repeats N`
keeps each side's best of N timed runs; each side's CPU time (this process's) is printed
too: on a shared CPU it depends less than the wall time on what else runs.

On a GPU it also prints the achieved fraction of the bf16 matmul peak measured on the spot,
counting 0.80 TFLOP per UNet sample-forward at 64x64 latents (SD v1.4), doubled by
classifier-free guidance, for the sample-forwards the work needs (the compiled engine runs
more: its padding and the samples not started yet).

Usage:
    python benchmarks/generation.py                                     # CPU, tiny model
    python benchmarks/generation.py --full-size --images 16 --batch-size 32 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import copy
import io
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial

import numpy as np
import pandas as pd
import torch
from common import (
    UNET_TFLOP_PER_SAMPLE_64,
    device_name,
    matmul_peak_tflops,
    model_directory,
    record_cost,
    sync,
)
from PIL import Image
from torch._dynamo.utils import counters

from dafusion.data.images import encode_png
from dafusion.jobs.devices import resolve_device, resolve_dtype
from dafusion.settings import GenerationSettings
from dafusion.stages.generation import Engine, denoising_timesteps
from dafusion.stages.models import load_components
from dafusion.stages.synthetic import variant_plan


def make_manifest(count: int, size: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        pixels = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 40, (size, size, 3)), 0, 255)
        image = Image.fromarray(pixels.astype(np.uint8))
        rows.append({"key": f"img-{i:04d}", "image": encode_png(image), "label": i % 4})
    return pd.DataFrame(rows)


def timed(device: torch.device, run: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds `run()` takes, device work included, and this process's CPU seconds."""
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    run()
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true", help="SD v1.4 architecture, 512 px")
    parser.add_argument("--images", type=int, default=8, help="real images")
    parser.add_argument("--num-synthetic", type=int, default=4, help="M variants per image")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--model-dir", help="diffusers model to time (random one written if empty)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per side, best kept")
    parser.add_argument("--skip-compiled", action="store_true", help="leave out compiled sides")
    parser.add_argument("--skip-per-image", action="store_true", help="leave out the slow loop")
    parser.add_argument("--costs", help="costs file to add the engine's per-unit cost to")
    args = parser.parse_args()
    modes = (False,) if args.skip_compiled else (False, True)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    resolution = 512 if args.full_size else 32
    strengths = [0.25, 0.5, 0.75, 1.0]
    guidance = 7.5
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}  # on a CPU: what other work on the machine changes least
    first_runs: dict[str, tuple[float, int]] = {}  # compiled sides: seconds, graphs compiled
    with ExitStack() as stack:
        model_dir = model_directory(args.model_dir, args.full_size, stack)
        manifest = make_manifest(args.images, resolution)
        prompts = {c: f"a photo of a class{c}" for c in range(4)}
        work = variant_plan(manifest, 0, args.num_synthetic, strengths).to_dict("records")
        print(
            f"device={device} dtype={dtype} model={'sd-v1.4-arch' if args.full_size else 'tiny'} "
            f"resolution={resolution} images={len(work)} steps={args.steps} "
            f"batch={args.batch_size} torch.threads={torch.get_num_threads()}",
            flush=True,
        )
        comp = load_components(model_dir, device, dtype)
        # UNet sample-forwards (guidance doubles them): those the work needs, the same for
        # every side but the compiled engine, which runs every row of its padded batches for
        # the steps of each batch's largest t0.
        calls: dict[float, int] = {}
        for t0 in strengths:
            sched = copy.deepcopy(comp.scheduler)
            sched.set_timesteps(args.steps)
            calls[t0] = len(denoising_timesteps(sched, args.steps, t0))
        needed = 2 * sum(calls[w["strength"]] for w in work)
        queue = sorted(work, key=lambda w: -w["strength"])  # as the engine batches them
        padded = 2 * sum(
            args.batch_size * calls[queue[i]["strength"]]
            for i in range(0, len(queue), args.batch_size)
        )
        first = [w for w in work if w["strength"] == work[0]["strength"]][: args.batch_size]

        def measure(name: str, warm_up: Callable[[], object], run: Callable[[], object]) -> None:
            """Time `run` after `warm_up`; a compiled side's warm-up is reported too."""
            torch._dynamo.reset()  # no side starts from another's graphs or shape history
            counters.clear()
            first_run = timed(device, warm_up)[0]
            if "compiled" in name:
                first_runs[name] = first_run, counters["stats"]["unique_graphs"]
            runs = [timed(device, run) for _ in range(args.repeats)]
            seconds[name], cpu_seconds[name] = min(r[0] for r in runs), min(r[1] for r in runs)
            print(f"{name}: {seconds[name]:.1f} s", flush=True)

        def run_engine(settings: GenerationSettings, items: list[dict]) -> None:
            list(
                Engine(comp, comp.scheduler, manifest, prompts, resolution, settings).run(items, 0)
            )

        eager_unet = comp.unet
        for compiled in modes:
            settings = GenerationSettings(
                num_synthetic=args.num_synthetic, guidance_scale=guidance,
                num_inference_steps=args.steps, batch_size=args.batch_size,
                resize_to_source=False, compile=compiled,
            )  # fmt: skip
            comp.unet = torch.compile(eager_unet) if compiled else eager_unet
            measure(
                "engine compiled" if compiled else "engine",
                partial(run_engine, settings, work if compiled else first),
                partial(run_engine, settings, work),
            )

        from diffusers import StableDiffusionImg2ImgPipeline

        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            model_dir, dtype=dtype, use_safetensors=True
        ).to(device)
        pipe.set_progress_bar_config(disable=True)
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in manifest["image"]]

        def call(batch: list[dict]) -> None:
            pipe(
                prompt=[prompts[int(manifest["label"][w["row"]])] for w in batch],
                image=[images[w["row"]] for w in batch],
                strength=batch[0]["strength"],
                guidance_scale=guidance,
                num_inference_steps=args.steps,
                generator=[torch.Generator().manual_seed(int(w["variant_seed"])) for w in batch],
                output_type="pil",
            )

        groups = {}
        for w in work:
            groups.setdefault(w["strength"], []).append(w)

        def batched() -> None:
            for group in groups.values():
                for i in range(0, len(group), args.batch_size):
                    call(group[i : i + args.batch_size])

        eager_unet = pipe.unet
        for compiled in modes:
            pipe.unet = torch.compile(eager_unet) if compiled else eager_unet
            measure(
                "batched diffusers compiled" if compiled else "batched diffusers",
                batched if compiled else partial(call, first),
                batched,
            )
        pipe.unet = eager_unet
        if not args.skip_per_image:
            measure("per-image loop", partial(call, first[:1]), lambda: [call([w]) for w in work])
    n = len(work)
    width = max(map(len, seconds))
    for name in (
        "per-image loop", "batched diffusers", "batched diffusers compiled", "engine",
        "engine compiled",
    ):  # fmt: skip
        if name not in seconds:
            continue
        print(
            f"{name:>{width}}: {n / seconds[name]:8.2f} img/s ({seconds[name]:.1f} s; "
            f"process CPU {cpu_seconds[name]:.1f} s)"
        )
    for name, (first_run, graphs) in first_runs.items():
        print(f"{name:>{width}}: first run {first_run:.1f} s, compile included, {graphs} graphs")
    for a, b in (
        ("engine", "per-image loop"),
        ("engine", "batched diffusers"),
        ("engine compiled", "batched diffusers compiled"),
        ("engine compiled", "batched diffusers"),
        ("engine compiled", "engine"),
        ("batched diffusers compiled", "batched diffusers"),
    ):
        if a not in seconds or b not in seconds:
            continue
        print(
            f"{'ratio':>{width}}: {seconds[b] / seconds[a]:8.2f}x ({a} / {b} throughput; "
            f"by process CPU time {cpu_seconds[b] / cpu_seconds[a]:.2f}x)"
        )
    print(
        f"{'UNet sample-fwds':>{width}}: {needed} needed (every side), {padded} run by the "
        f"compiled engine ({padded / needed:.2f}x: padding, samples not started)"
    )
    gpu = args.full_size and device.type == "cuda"
    if gpu:
        peak = matmul_peak_tflops(device)
        print(f"{'bf16 matmul peak':>{width}}: {peak:7.1f} TFLOP/s (8192^3, measured now)")
        for name, s in seconds.items():
            tflops = needed * UNET_TFLOP_PER_SAMPLE_64 / s
            print(f"{name:>{width}}: {tflops:7.1f} TFLOP/s = {tflops / peak:6.1%} of the peak")
    # The engine as generate jobs run it by default (eager): seconds per image and denoising
    # step, the work's image-steps being half its guidance-doubled UNet sample-forwards.
    record_cost(
        args.costs, "generate", seconds["engine"] / (needed / 2),
        f"{device_name(device)}, `generation.py{' --full-size' if args.full_size else ''}`, "
        f"{str(dtype).removeprefix('torch.')}, batch {args.batch_size}: the engine, eager",
        needed * UNET_TFLOP_PER_SAMPLE_64 / seconds["engine"] if gpu else None,
    )  # fmt: skip


if __name__ == "__main__":
    main()
