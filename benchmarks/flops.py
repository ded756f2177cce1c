"""Floating-point operations of one UNet step: Stable Diffusion v1.4 at 512 px against SDXL
base at 1024 px, and their ratio, from one run.

The ratio scales the measured SD v1.4 costs of the stages that run the UNet (generate,
invert, erase) to SDXL's in `src/dafusion/workflow/costs.json` until a GPU run measures
them (`benchmarks/gpu.sh`). Counted by `torch.utils.flop_counter` on the meta device: the
full-size architectures (random, never materialized), batch 1, 77 text tokens. Attention
kernels (flash, memory-efficient) change the time, not the count; a batched, compute-bound
engine runs near the count's ratio.

Usage:
    python benchmarks/flops.py
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from dafusion.stages.tiny import sd_v1_unet, sdxl_unet


def step_flops(unet: torch.nn.Module, latent: int, context: int, **added) -> int:
    """The operations of one conditional UNet call on a [1, 4, latent, latent] latent."""
    x = torch.zeros(1, 4, latent, latent, device="meta")
    text = torch.zeros(1, 77, context, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(x, torch.tensor([500], device="meta"), encoder_hidden_states=text, **added)
    return counter.get_total_flops()


def main() -> None:
    with torch.device("meta"):
        v1, xl = sd_v1_unet(), sdxl_unet()
    added = {
        "added_cond_kwargs": {
            "text_embeds": torch.zeros(1, 1280, device="meta"),
            "time_ids": torch.zeros(1, 6, device="meta"),
        }
    }
    v1_512 = step_flops(v1, 64, 768)
    v1_768 = step_flops(v1, 96, 768)
    xl_1024 = step_flops(xl, 128, 2048, **added)
    print(f"SD v1.4 UNet at 512 px:   {v1_512 / 1e9:8,.0f} GFLOP per step")
    print(f"SD v1.4 UNet at 768 px:   {v1_768 / 1e9:8,.0f} GFLOP per step (SD 2.x's size)")
    print(f"SDXL base UNet at 1024 px: {xl_1024 / 1e9:7,.0f} GFLOP per step")
    print(f"ratio SDXL 1024 / SD v1.4 512: {xl_1024 / v1_512:.2f}")
    print(f"ratio SD v1.4 768 / 512:       {v1_768 / v1_512:.2f}")


if __name__ == "__main__":
    main()
