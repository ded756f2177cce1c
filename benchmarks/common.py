"""What the benchmarks share: the model they time, device sync, the measured peak, and the
costs file their per-unit costs go to (`--costs`, read by `dafusion.workflow.estimate --costs`)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import torch

from dafusion.stages.tiny import save_random_sd_v1, save_tiny_model


def sync(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock timers measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_directory(path: str | None, full_size: bool, stack: ExitStack) -> str:
    """The diffusers directory to time: `path` when it holds a model, else a random one.

    Building and saving the full-size random model costs about a minute, so several
    benchmarks can share one `--model-dir` (written on first use); a directory holding a
    real Stable Diffusion is timed as it is.
    """
    if path is None:
        path = str(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "model")
    if not (Path(path) / "model_index.json").is_file():
        (save_random_sd_v1 if full_size else save_tiny_model)(path)
    return path


# Stable Diffusion v1's UNet, one sample at 512 px (64 x 64 latents): about 0.80 TFLOP per
# forward (multiply-adds counted as 2), for the fractions of the measured peak the GPU
# modes print.
UNET_TFLOP_PER_SAMPLE_64 = 0.80


def matmul_peak_tflops(device: torch.device, size: int = 8192, repeats: int = 10) -> float:
    """bf16 TFLOP/s of a large square matmul on `device`, measured now (not a datasheet)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


# The datasheet's dense bf16 peak of an H200 (and H100 SXM), TFLOP/s; DAFUSION_PEAK_TFLOPS
# sets another GPU's. The benchmarks also print the matmul peak they measure on the spot.
DATASHEET_PEAK_TFLOPS = float(os.environ.get("DAFUSION_PEAK_TFLOPS", "989"))


def record_cost(
    path: str | None, key: str, seconds: float, measured: str, tflops: float | None = None
) -> None:
    """Add one per-unit cost (`dafusion.workflow.runtime.UNITS[key]`) to the costs file at `path`,
    keeping the others there; with the TFLOP/s its work achieved, and their fraction of
    DATASHEET_PEAK_TFLOPS. Printed too."""
    from dafusion.workflow.runtime import UNITS

    fraction = None if tflops is None else tflops / DATASHEET_PEAK_TFLOPS
    share = (
        ""
        if fraction is None
        else f", {tflops:.1f} TFLOP/s = {fraction:.1%} of {DATASHEET_PEAK_TFLOPS:g}"
    )
    print(f"cost {key}: {seconds:.4g} s {UNITS[key]}{share}", flush=True)
    if path is None:
        return
    costs = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    costs[key] = {"seconds": seconds, "measured": measured}
    if tflops is not None:
        costs[key] |= {"tflops": round(tflops, 2), "peak_fraction": round(fraction, 4)}
    Path(path).write_text(json.dumps(costs, indent=2) + "\n")


def device_name(device: torch.device) -> str:
    """The GPU's name for a cost's `measured`, or the CPU's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"
