"""This project's SDEdit engine against the per-image loop and against batched diffusers.

Same work every way: the same real images, M variants each, the same t0 per variant, steps,
guidance scale and dtype.

- per-image (as the original DA-Fusion code): one `StableDiffusionImg2ImgPipeline` call per
  synthetic image, batch 1, the real image VAE-encoded and the prompt text-encoded again on
  every call.
- batched diffusers (what a practitioner writes): one `StableDiffusionImg2ImgPipeline` call
  per strength group and batch, with a list of images, prompts and per-image generators.
- engine (this project): each real image encoded once, each prompt once, work grouped by
  strength into batches, PNG encoding overlapped with the next batch.

On a GPU it also prints the achieved fraction of the bf16 matmul peak measured on the spot,
counting 0.80 TFLOP per UNet sample-forward at 64x64 latents (SD v1.4), doubled by
classifier-free guidance.

Usage:
    python benchmarks/generation.py                                     # CPU, tiny model
    python benchmarks/generation.py --full-size --images 16 --batch-size 32 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import copy
import io
import time
from contextlib import ExitStack

import numpy as np
import pandas as pd
import torch
from common import UNET_TFLOP_PER_SAMPLE_64, matmul_peak_tflops, model_directory, sync
from PIL import Image

from dafusion.devices import resolve_device, resolve_dtype
from dafusion.generation import Engine, denoising_timesteps
from dafusion.images import encode_png
from dafusion.models import load_components
from dafusion.settings import GenerationSettings
from dafusion.synthetic import plan


def make_manifest(count: int, size: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        pixels = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 40, (size, size, 3)), 0, 255)
        image = Image.fromarray(pixels.astype(np.uint8))
        rows.append({"key": f"img-{i:04d}", "image": encode_png(image), "label": i % 4})
    return pd.DataFrame(rows)


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
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    resolution = 512 if args.full_size else 32
    strengths = [0.25, 0.5, 0.75, 1.0]
    guidance = 7.5
    with ExitStack() as stack:
        model_dir = model_directory(args.model_dir, args.full_size, stack)
        manifest = make_manifest(args.images, resolution)
        prompts = {c: f"a photo of a class{c}" for c in range(4)}
        work = plan(manifest, 0, args.num_synthetic, strengths).to_dict("records")
        print(
            f"device={device} dtype={dtype} model={'sd-v1.4-arch' if args.full_size else 'tiny'} "
            f"resolution={resolution} images={len(work)} steps={args.steps} "
            f"batch={args.batch_size} torch.threads={torch.get_num_threads()}"
        )
        # UNet sample-forwards the work needs (the same every way).
        comp = load_components(model_dir, device, dtype)
        forwards = 0
        for w in work:
            sched = copy.deepcopy(comp.scheduler)
            sched.set_timesteps(args.steps)
            forwards += len(denoising_timesteps(sched, args.steps, w["strength"]))
        forwards *= 2  # classifier-free guidance
        settings = GenerationSettings(
            num_synthetic=args.num_synthetic, guidance_scale=guidance,
            num_inference_steps=args.steps, batch_size=args.batch_size, resize_to_source=False,
        )  # fmt: skip
        seconds = {}
        engine = Engine(comp, comp.scheduler, manifest, prompts, resolution, settings)
        # Each way first runs one strength group untimed: kernel selection and allocator
        # first use for its batch shapes count for none of them.
        first = [w for w in work if w["strength"] == work[0]["strength"]][: args.batch_size]
        untimed = Engine(comp, comp.scheduler, manifest, prompts, resolution, settings)
        list(untimed.run(first, 0))
        sync(device)
        start = time.perf_counter()
        list(engine.run(work, 0))
        sync(device)
        seconds["engine"] = time.perf_counter() - start
        del comp, engine, untimed

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
        call(first)
        sync(device)
        start = time.perf_counter()
        for group in groups.values():
            for i in range(0, len(group), args.batch_size):
                call(group[i : i + args.batch_size])
        sync(device)
        seconds["batched diffusers"] = time.perf_counter() - start
        call(first[:1])
        sync(device)
        start = time.perf_counter()
        for w in work:
            call([w])
        sync(device)
        seconds["per-image loop"] = time.perf_counter() - start
    n = len(work)
    for name in ("per-image loop", "batched diffusers", "engine"):
        print(f"{name:>17}: {n / seconds[name]:8.2f} img/s ({seconds[name]:.1f} s)")
    for name in ("per-image loop", "batched diffusers"):
        ratio = seconds[name] / seconds["engine"]
        print(f"{'ratio':>17}: {ratio:8.2f}x (engine / {name} throughput)")
    if args.full_size and device.type == "cuda":
        peak = matmul_peak_tflops(device)
        print(f"{'bf16 matmul peak':>17}: {peak:7.1f} TFLOP/s (8192^3, measured now)")
        for name, s in seconds.items():
            tflops = forwards * UNET_TFLOP_PER_SAMPLE_64 / s
            print(f"{name:>17}: {tflops:7.1f} TFLOP/s = {tflops / peak:6.1%} of the measured peak")


if __name__ == "__main__":
    main()
