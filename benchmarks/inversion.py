"""Joint textual inversion against per-class runs done the way diffusers' example does them.

Same work both ways: N classes, the same steps, batch size per class, images and resolution.

- per-class (reference): for each class, load the model from disk, add the token, train the
  whole embedding matrix with AdamW and restore every other row after each step (as
  diffusers' textual_inversion.py does), VAE-encode the batch every step.
- joint (this project): load once, all classes in one job, only the new rows trainable,
  latent distributions computed once.

Usage:
    python benchmarks/inversion.py                      # CPU, tiny model, 10 classes
    python benchmarks/inversion.py --full-size --classes 20 --resolution 512   # GPU
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack

import numpy as np
import torch
import torch.nn.functional as F
from common import (
    UNET_TFLOP_PER_SAMPLE_64,
    device_name,
    matmul_peak_tflops,
    model_directory,
    record_cost,
    sync,
)
from PIL import Image

from dafusion.data.images import to_model_tensor
from dafusion.jobs.devices import resolve_device, resolve_dtype
from dafusion.settings import InversionSettings
from dafusion.stages.inversion import learn_tokens
from dafusion.stages.models import load_components


def make_images(classes: int, per_class: int, size: int) -> tuple[list[Image.Image], list[int]]:
    rng = np.random.default_rng(0)
    images, labels = [], []
    for c in range(classes):
        base = rng.integers(0, 256, 3)
        for _ in range(per_class):
            noise = rng.normal(0, 40, (size, size, 3))
            images.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)))
            labels.append(c)
    return images, labels


def per_class_reference(model_dir, images, label_list, names, settings, resolution, device, dtype):
    """diffusers' textual_inversion.py, one run per class."""
    from diffusers import DDPMScheduler

    for c, name in enumerate(names):
        own = [im for im, lab in zip(images, label_list, strict=True) if lab == c]
        comp = load_components(model_dir, device, dtype)
        comp.text_encoder.to(torch.float32)
        token = f"<{name}>"
        comp.tokenizer.add_tokens([token])
        token_id = comp.tokenizer.convert_tokens_to_ids(token)
        init_id = comp.tokenizer("the", add_special_tokens=False).input_ids[0]
        comp.text_encoder.resize_token_embeddings(len(comp.tokenizer), mean_resizing=False)
        embeddings = comp.text_encoder.get_input_embeddings()
        with torch.no_grad():
            embeddings.weight[token_id] = embeddings.weight[init_id].clone()
        original = embeddings.weight.detach().clone()
        embeddings.weight.requires_grad_(True)
        optimizer = torch.optim.AdamW(
            [embeddings.weight], lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        noise_scheduler = DDPMScheduler.from_config(comp.scheduler.config)
        keep = torch.ones(len(comp.tokenizer), dtype=torch.bool, device=device)
        keep[token_id] = False
        ids = comp.tokenizer(
            [f"a photo of a {token}"] * settings.batch_size,
            padding="max_length",
            max_length=comp.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids.to(device)
        for _ in range(settings.steps):
            pick = np.random.randint(len(own), size=settings.batch_size)
            pixels = torch.stack([to_model_tensor(own[i], resolution) for i in pick])
            flip = torch.rand(len(pick)) < 0.5
            pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
            with torch.no_grad():
                latents = comp.vae.encode(pixels.to(device, comp.vae.dtype)).latent_dist.sample()
            latents = latents.float() * comp.vae.config.scaling_factor
            noise = torch.randn_like(latents)
            t = torch.randint(1000, (len(pick),), device=device)
            noisy = noise_scheduler.add_noise(latents, noise, t)
            hidden = comp.text_encoder(ids)[0]
            pred = comp.unet(noisy.to(dtype), t, hidden.to(dtype)).sample
            loss = F.mse_loss(pred.float(), noise)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            with torch.no_grad():
                embeddings.weight[keep] = original[keep]
        del comp, optimizer


def joint(model_dir, images, labels, names, settings, resolution, device, dtype):
    comp = load_components(model_dir, device, dtype)
    comp.text_encoder.to(torch.float32)
    learn_tokens(
        comp, images, labels, names, settings, seed=0, resolution=resolution, progress=False
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true", help="SD v1.4 architecture")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--images-per-class", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model-dir", help="diffusers model to time (random one written if empty)")
    parser.add_argument(
        "--dtype", default="float16", help="UNet and VAE weights (inversion.mixed_precision)"
    )
    parser.add_argument("--skip-reference", action="store_true", help="time the joint run only")
    parser.add_argument("--costs", help="costs file to add the joint run's per-unit cost to")
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    resolution = args.resolution or (512 if args.full_size else 32)
    with ExitStack() as stack:
        model_dir = model_directory(args.model_dir, args.full_size, stack)
        images, labels = make_images(args.classes, args.images_per_class, resolution)
        names = [f"class{c}" for c in range(args.classes)]
        settings = InversionSettings(steps=args.steps, batch_size=args.batch_size, flip=True)
        print(
            f"device={device} dtype={dtype} model={'sd-v1.4-arch' if args.full_size else 'tiny'} "
            f"resolution={resolution} classes={args.classes} steps={args.steps} "
            f"batch/class={args.batch_size} torch.threads={torch.get_num_threads()}"
        )
        timings = {}
        sides = [("joint", joint)]
        if not args.skip_reference:
            sides.append(("per-class", per_class_reference))
        for name, fn in sides:
            # One untimed step first: CUDA kernels and the allocator's first use count for neither.
            one_step = settings.replace(steps=1)
            fn(model_dir, images, labels, names, one_step, resolution, device, dtype)
            sync(device)
            start = time.perf_counter()
            fn(model_dir, images, labels, names, settings, resolution, device, dtype)
            sync(device)
            timings[name] = time.perf_counter() - start
            print(f"{name:>10}: {timings[name]:8.1f} s")
        if "per-class" in timings:
            ratio = timings["per-class"] / timings["joint"]
            print(f"     ratio: {ratio:8.2f}x (per-class / joint)")
        # UNet work per sample and step: a forward and a backward to its inputs (the UNet is
        # frozen, so no weight gradients): about two forwards. The reference's extra VAE
        # encodes are not counted.
        samples = args.steps * args.classes * args.batch_size
        work = samples * 2 * UNET_TFLOP_PER_SAMPLE_64
        gpu = args.full_size and device.type == "cuda"
        if gpu:
            peak = matmul_peak_tflops(device)
            print(f"bf16 matmul peak: {peak:7.1f} TFLOP/s (8192^3, measured now)")
            for name, seconds in timings.items():
                tflops = work / seconds
                print(f"{name:>10}: {tflops:7.1f} TFLOP/s = {tflops / peak:6.1%} of the peak")
        record_cost(
            args.costs, "invert", timings["joint"] / samples,
            f"{device_name(device)}, `inversion.py{' --full-size' if args.full_size else ''} "
            f"--classes {args.classes}`, {str(dtype).removeprefix('torch.')}: "
            f"{args.steps} steps in {timings['joint']:.1f} s",
            work / timings["joint"] if gpu else None,
        )  # fmt: skip


if __name__ == "__main__":
    main()
