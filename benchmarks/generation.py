"""This project's SDEdit engine against the per-image diffusers img2img loop.

Same work both ways: the same real images, M variants each, the same t0 per variant, steps
and guidance scale.

- per-image (reference, as the original DA-Fusion code): one
  `StableDiffusionImg2ImgPipeline` call per synthetic image, batch 1, the real image
  VAE-encoded and the prompt text-encoded again on every call.
- engine (this project): each real image encoded once, each prompt once, work grouped by
  strength into batches.

On a GPU it also prints the achieved fraction of bf16 peak, counting 0.80 TFLOP per UNet
sample-forward at 64x64 latents (SD v1.4), doubled by classifier-free guidance.

Usage:
    python benchmarks/generation.py                                     # CPU, tiny model
    python benchmarks/generation.py --full-size --images 16 --batch-size 32 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import copy
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dafusion.devices import resolve_device, resolve_dtype
from dafusion.generation import Engine, denoising_timesteps, plan
from dafusion.images import encode_png
from dafusion.models import load_components
from dafusion.settings import GenerationSettings
from dafusion.tiny import save_random_sd_v1, save_tiny_model

UNET_TFLOP_PER_SAMPLE_64 = 0.80


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


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
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    resolution = 512 if args.full_size else 32
    strengths = [0.25, 0.5, 0.75, 1.0]
    guidance = 7.5
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(Path(tmp) / "model")
        (save_random_sd_v1 if args.full_size else save_tiny_model)(model_dir)
        manifest = make_manifest(args.images, resolution)
        prompts = {c: f"a photo of a class{c}" for c in range(4)}
        work = plan(manifest, 0, args.num_synthetic, strengths).to_dict("records")
        print(
            f"device={device} dtype={dtype} model={'sd-v1.4-arch' if args.full_size else 'tiny'} "
            f"resolution={resolution} images={len(work)} steps={args.steps} "
            f"batch={args.batch_size} torch.threads={torch.get_num_threads()}"
        )
        # UNet sample-forwards the work needs (the same both ways).
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
        engine = Engine(comp, comp.scheduler, manifest, prompts, resolution, settings)
        warm = Engine(comp, comp.scheduler, manifest.iloc[:1], prompts, resolution, settings)
        list(warm.run(work[:1], 0))
        sync(device)
        start = time.perf_counter()
        list(engine.run(work, 0))
        sync(device)
        engine_s = time.perf_counter() - start

        from diffusers import StableDiffusionImg2ImgPipeline

        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            model_dir, dtype=dtype, use_safetensors=True
        ).to(device)
        pipe.set_progress_bar_config(disable=True)
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in manifest["image"]]
        pipe(prompt=prompts[0], image=images[0], strength=0.5, num_inference_steps=args.steps)
        sync(device)
        start = time.perf_counter()
        for w in work:
            pipe(
                prompt=prompts[int(manifest["label"][w["row"]])],
                image=images[w["row"]],
                strength=w["strength"],
                guidance_scale=guidance,
                num_inference_steps=args.steps,
                generator=torch.Generator().manual_seed(int(w["variant_seed"])),
                output_type="pil",
            )
        sync(device)
        loop_s = time.perf_counter() - start
    n = len(work)
    print(f" per-image loop: {n / loop_s:8.2f} img/s ({loop_s:.1f} s)")
    print(f"         engine: {n / engine_s:8.2f} img/s ({engine_s:.1f} s)")
    print(f"          ratio: {loop_s / engine_s:8.2f}x (engine / per-image loop throughput)")
    if args.full_size and device.type == "cuda":
        for name, seconds in (("per-image loop", loop_s), ("engine", engine_s)):
            tflops = forwards * UNET_TFLOP_PER_SAMPLE_64 / seconds
            print(f"{name:>15}: {tflops:7.1f} TFLOP/s = {tflops / args.peak_tflops:6.1%} of peak")


if __name__ == "__main__":
    main()
