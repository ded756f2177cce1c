"""SDXL generation at 1024 px: this project's engine against batched diffusers, images per
second and peak GPU memory of each side, and what the UNet and the VAE take alone at each
batch size, on SDXL base's full-size architecture with random weights.

Same work every side: the same real images (1024 px sources), M variants each, the same t0
per variant, steps, guidance scale and dtype; the UNet and text encoders are shared.

- engine (this project): `generation.batch_size` images per batch mixing strengths, each real
  image encoded once; the VAE as `model.vae: checkpoint` loads it (float32 under float16:
  SDXL's config sets `force_upcast`), decoding a batch at once, then one image at a time
  (`generation.vae_slicing: true`).
- batched diffusers: one `StableDiffusionXLImg2ImgPipeline` call per strength group and
  batch, with per-image generators, `original_size` the sources'; its own float16 VAE,
  which the pipeline upcasts to float32 for each encode and decode and casts back.

Each side first runs one batch of the smallest t0 untimed. The peaks are
`torch.cuda.max_memory_allocated` over the timed run (weights included: they are printed
apart), so what a side needs on a card is its peak plus the CUDA context and the
allocator's slack (about 1 GB more in `nvidia-smi`). Then, alone: one guided UNet call
(2 x batch rows) and the float32 VAE encoding and decoding a batch whole and one image at
a time, each as its peak above what was allocated before it. Runs offline: the random
model is written to `--model-dir` (7 GB in float16, a minute or two) unless it holds one.

Usage:
    python benchmarks/sdxl.py                          # CPU smoke run: tiny SDXL, 32 px
    python benchmarks/sdxl.py --full-size --model-dir /tmp/dafusion-sdxl --dtype float16
"""

from __future__ import annotations

import argparse
import copy
import io
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import device_name, record_cost, sync
from PIL import Image

from dafusion.data.images import encode_png
from dafusion.jobs.devices import resolve_device, resolve_dtype
from dafusion.settings import GenerationSettings
from dafusion.stages.generation import Engine, denoising_timesteps
from dafusion.stages.models import load_components
from dafusion.stages.synthetic import variant_plan
from dafusion.stages.tiny import save_random_sdxl, save_tiny_model

GB = 1024**3


def model_directory(path: str | None, full_size: bool, stack: ExitStack) -> str:
    """The SDXL directory to time: `path` when it holds a model, else a random one there."""
    if path is None:
        import tempfile

        path = str(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "model")
    if not (Path(path) / "model_index.json").is_file():
        start = time.perf_counter()
        if full_size:
            save_random_sdxl(path)
        else:
            save_tiny_model(path, family="sdxl")
        print(f"random model written to {path} in {time.perf_counter() - start:.0f} s")
    return path


def make_manifest(count: int, size: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        pixels = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 40, (size, size, 3)), 0, 255)
        image = Image.fromarray(pixels.astype(np.uint8))
        rows.append({"key": f"img-{i:04d}", "image": encode_png(image), "label": i % 4})
    return pd.DataFrame(rows)


def measured(device: torch.device, run: Callable[[], object]) -> tuple[float, float | None]:
    """Wall seconds of `run()`, device work included, and its peak allocated GB (CUDA)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    seconds = time.perf_counter() - start
    return seconds, torch.cuda.max_memory_allocated(device) / GB if cuda else None


def peak_above(device: torch.device, run: Callable[[], object]) -> str:
    """`run()`'s peak GB above what was allocated before it, or 'OOM' (CUDA only)."""
    if device.type != "cuda":
        run()
        return "n/a (CPU)"
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        run()
        sync(device)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "OOM"
    return f"{(torch.cuda.max_memory_allocated(device) - before) / GB:6.2f} GB"


@torch.no_grad()
def alone(comp, device: torch.device, dtype: torch.dtype, resolution: int, batches: list[int]):
    """Peak memory of one guided UNet call and of the VAE, whole batch and sliced."""
    latent = resolution // comp.vae_scale_factor
    unet, vae = comp.unet, comp.vae
    context = unet.config.cross_attention_dim
    pooled = comp.text_encoder_2.config.projection_dim
    for b in batches:
        rows = 2 * b  # classifier-free guidance

        def call(rows=rows):
            unet(
                torch.randn(rows, 4, latent, latent, device=device, dtype=dtype),
                torch.tensor(500, device=device),
                encoder_hidden_states=torch.randn(rows, 77, context, device=device, dtype=dtype),
                added_cond_kwargs={
                    "text_embeds": torch.randn(rows, pooled, device=device, dtype=dtype),
                    "time_ids": torch.randn(rows, 6, device=device, dtype=dtype),
                },
            )

        print(f"UNet, one guided call, batch {b:>2} ({rows} rows): {peak_above(device, call)}")
    for b in batches:
        z = torch.randn(b, 4, latent, latent, device=device, dtype=vae.dtype)
        x = torch.rand(b, 3, resolution, resolution, device=device, dtype=vae.dtype)
        encode = peak_above(device, lambda x=x: vae.encode(x).latent_dist.mean)
        decode = peak_above(device, lambda z=z: vae.decode(z).sample)
        sliced = peak_above(device, lambda z=z: [vae.decode(s).sample for s in z.split(1)])
        print(
            f"VAE ({str(vae.dtype).removeprefix('torch.')}), batch {b:>2}: encode {encode}, "
            f"decode {decode}, decode one at a time {sliced}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true", help="SDXL base's architecture")
    parser.add_argument("--resolution", type=int, help="default: 1024 full size, else 32")
    parser.add_argument("--images", type=int, default=4, help="real images")
    parser.add_argument("--num-synthetic", type=int, default=2, help="M variants per image")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--alone-batches", default="1,4,8", help="batch sizes measured alone")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--model-dir", help="SDXL diffusers model (random one written if empty)")
    parser.add_argument("--costs", help="costs file to add the engine's generate_sdxl cost to")
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    resolution = args.resolution or (1024 if args.full_size else 32)
    strengths = [0.25, 0.5, 0.75, 1.0]
    guidance = 7.5
    seconds: dict[str, float] = {}
    peaks: dict[str, float | None] = {}
    with ExitStack() as stack:
        model_dir = model_directory(args.model_dir, args.full_size, stack)
        manifest = make_manifest(args.images, resolution)
        prompts = {c: f"a photo of a class{c}" for c in range(4)}
        work = variant_plan(manifest, 0, args.num_synthetic, strengths).to_dict("records")
        print(
            f"device={device_name(device)} dtype={dtype} "
            f"model={'sdxl-base-arch' if args.full_size else 'tiny-sdxl'} "
            f"resolution={resolution} images={len(work)} steps={args.steps} "
            f"batch={args.batch_size}",
            flush=True,
        )
        comp = load_components(model_dir, device, dtype)  # model.vae: checkpoint
        if device.type == "cuda":
            weights = torch.cuda.memory_allocated(device) / GB
            print(f"weights on the GPU: {weights:.2f} GB (VAE {comp.vae.dtype})", flush=True)
        steps: dict[float, int] = {}
        for t0 in strengths:
            sched = copy.deepcopy(comp.scheduler)
            sched.set_timesteps(args.steps)
            steps[t0] = len(denoising_timesteps(sched, args.steps, t0))
        image_steps = sum(steps[w["strength"]] for w in work)
        # The warm-up: the batch of the smallest t0s (the fewest steps), as the engine runs it.
        first = sorted(work, key=lambda w: -w["strength"])[-args.batch_size :]

        def run_engine(settings: GenerationSettings, items: list[dict]) -> None:
            list(
                Engine(comp, comp.scheduler, manifest, prompts, resolution, settings).run(items, 0)
            )

        for sliced in (False, True):
            name = "engine, vae_slicing" if sliced else "engine"
            settings = GenerationSettings(
                num_synthetic=args.num_synthetic, guidance_scale=guidance,
                num_inference_steps=args.steps, batch_size=args.batch_size,
                resize_to_source=False, vae_slicing=sliced,
            )  # fmt: skip
            run_engine(settings, first)  # warm-up
            seconds[name], peaks[name] = measured(device, lambda s=settings: run_engine(s, work))
            print(f"{name}: {seconds[name]:.1f} s", flush=True)

        from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline

        pipe = StableDiffusionXLImg2ImgPipeline(
            vae=AutoencoderKL.from_pretrained(
                model_dir, subfolder="vae", use_safetensors=True, torch_dtype=dtype
            ).to(device),
            text_encoder=comp.text_encoder,
            text_encoder_2=comp.text_encoder_2,
            tokenizer=comp.tokenizer,
            tokenizer_2=comp.tokenizer_2,
            unet=comp.unet,
            scheduler=copy.deepcopy(comp.scheduler),
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in manifest["image"]]

        def call(batch: list[dict]) -> None:
            pipe(
                prompt=[prompts[int(manifest["label"][w["row"]])] for w in batch],
                image=[images[w["row"]] for w in batch],
                strength=batch[0]["strength"],
                guidance_scale=guidance,
                num_inference_steps=args.steps,
                original_size=(resolution, resolution),
                target_size=(resolution, resolution),
                generator=[torch.Generator().manual_seed(int(w["variant_seed"])) for w in batch],
                output_type="pil",
            )

        groups: dict[float, list[dict]] = {}
        for w in work:
            groups.setdefault(w["strength"], []).append(w)

        def batched() -> None:
            for group in groups.values():
                for i in range(0, len(group), args.batch_size):
                    call(group[i : i + args.batch_size])

        call([w for w in first if w["strength"] == first[-1]["strength"]])  # warm-up
        seconds["batched diffusers"], peaks["batched diffusers"] = measured(device, batched)
        print(f"batched diffusers: {seconds['batched diffusers']:.1f} s", flush=True)
        batches = [int(b) for b in args.alone_batches.split(",") if b]
        alone(comp, device, dtype, resolution, batches)
    n = len(work)
    width = max(map(len, seconds))
    for name, s in seconds.items():
        peak = "n/a (CPU)" if peaks[name] is None else f"{peaks[name]:.2f} GB"
        print(f"{name:>{width}}: {n / s:7.3f} img/s ({s:.1f} s), peak allocated {peak}")
    for a, b in (("engine", "batched diffusers"), ("engine, vae_slicing", "engine")):
        print(f"{'ratio':>{width}}: {seconds[b] / seconds[a]:7.2f}x ({a} / {b} throughput)")
    record_cost(
        args.costs, "generate_sdxl", seconds["engine"] / image_steps,
        f"{device_name(device)}, `sdxl.py{' --full-size' if args.full_size else ''}`, "
        f"{str(dtype).removeprefix('torch.')}, {resolution} px, batch {args.batch_size}: "
        "the engine, eager",
    )  # fmt: skip


if __name__ == "__main__":
    main()
