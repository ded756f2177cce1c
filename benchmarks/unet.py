"""One UNet forward as generation runs it: eager, channels_last, and torch.compile.

What is left to win in generation is inside the UNet (the engine and batched diffusers run
the same UNet sample-steps at the same fraction of the peak): this times one forward of the
conditional UNet at each batch size, three ways, with the same weights and inputs:

- eager (what the engine and diffusers run by default);
- channels_last: the UNet's weights and latents in channels-last memory format;
- compiled: `torch.compile(unet)` (default mode), as `generation.compile: true` does, one
  fixed shape per batch size (its compile time is printed apart).

On a GPU it also prints the fraction of the bf16 matmul peak measured on the spot, counting
0.80 TFLOP per sample-forward at 64x64 latents (SD v1.4).

Usage:
    python benchmarks/unet.py                                  # CPU, tiny model
    python benchmarks/unet.py --full-size --batch-sizes 16 64  # GPU: SD v1.4's UNet, bf16
"""

from __future__ import annotations

import argparse
import time

import torch
from common import UNET_TFLOP_PER_SAMPLE_64, matmul_peak_tflops, sync

from dafusion.jobs.devices import resolve_device, resolve_dtype
from dafusion.stages.tiny import build_tiny_pipeline, sd_v1_unet


def forward_ms(unet, batch: int, size: int, device, dtype, channels_last: bool, repeats: int):
    """Milliseconds per forward after 3 untimed forwards (the first ones compile, if any)."""
    config = unet.config
    latents = torch.randn(batch, config.in_channels, size, size, device=device, dtype=dtype)
    if channels_last:
        latents = latents.to(memory_format=torch.channels_last)
    text = torch.randn(batch, 77, config.cross_attention_dim, device=device, dtype=dtype)
    t = torch.full((batch,), 500, device=device)
    with torch.no_grad():
        for _ in range(3):
            unet(latents, t, text)
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            unet(latents, t, text)
        sync(device)
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true", help="SD v1.4's UNet, 64x64 latents")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    with device:
        unet = sd_v1_unet() if args.full_size else build_tiny_pipeline().unet.to(device)
    unet = unet.to(dtype).eval()
    size = unet.config.sample_size
    peak = matmul_peak_tflops(device) if device.type == "cuda" else None
    print(
        f"device={device} dtype={dtype} unet={'sd-v1.4-arch' if args.full_size else 'tiny'} "
        f"latents={size}x{size} torch.threads={torch.get_num_threads()}"
        + (f" bf16 matmul peak={peak:.0f} TFLOP/s (8192^3, measured now)" if peak else ""),
        flush=True,
    )
    ways = {"eager": (unet, False), "channels_last": (unet, True)}
    if not args.skip_compile:
        ways["compiled"] = (torch.compile(unet), False)
    times: dict[str, dict[int, float]] = {}
    for name, (model, channels_last) in ways.items():
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for batch in args.batch_sizes:
            start = time.perf_counter()
            ms = forward_ms(model, batch, size, device, dtype, channels_last, args.repeats)
            times.setdefault(name, {})[batch] = ms
            line = f"{name:>14} batch {batch:4d}: {ms:8.1f} ms per forward, "
            line += f"{ms / batch:6.2f} ms/sample"
            if name == "compiled":
                first_calls = time.perf_counter() - start - ms * args.repeats / 1e3
                line += f" (compile and first calls {first_calls:.0f} s)"
            if peak and args.full_size:
                tflops = batch * UNET_TFLOP_PER_SAMPLE_64 / (ms / 1e3)
                line += f", {tflops / peak:6.1%} of the peak"
            print(line, flush=True)
    for name in [n for n in times if n != "eager"]:
        ratios = ", ".join(
            f"batch {b}: {times['eager'][b] / ms:.2f}x" for b, ms in times[name].items()
        )
        print(f"ratio: {name} vs eager (eager time / {name} time): {ratios}")


if __name__ == "__main__":
    main()
