"""Modelled peak memory of SDXL base at 1024 px, per stage part and batch size, without a GPU:
the weights, one guided UNet call, the VAE encoding and decoding (float32, as `model.vae:
checkpoint` runs SDXL's under float16), and one textual-inversion step and one step of the
LoRA learner (`learner: lora`: a float32 LoRA on the UNet's attention projections, learned
with the tokens) through the UNet, with and without gradient checkpointing.

Modelled, not measured: the full-size architectures (`dafusion.stages.tiny.sdxl_unet`,
`sdxl_vae`) run on PyTorch's meta device (shapes only, nothing computed), and a dispatch
mode adds up the bytes of the tensors alive at each operation, the weights apart. Attention
is counted as a memory-efficient kernel does it (its inputs and output, never the score
matrix), as diffusers runs it on CUDA through `scaled_dot_product_attention`. Left out: the
CUDA context (0.5-1 GiB), cuDNN workspaces and the caching allocator's slack, so a card
needs somewhat more than these numbers; `benchmarks/gpu.sh --sdxl` measures the generation
ones on a GPU (benchmarks/sdxl.py). docs/models.md's memory table comes from this script.

Usage:
    python benchmarks/memory.py [--resolution 1024] [--batches 1,2,4,8] [--rank 10]
"""

from __future__ import annotations

import argparse
import weakref
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from dafusion.settings import LoraSettings
from dafusion.stages.lora import add_lora
from dafusion.stages.tiny import sdxl_unet, sdxl_vae

GIB = 1024**3


class LiveBytes(TorchDispatchMode):
    """The peak bytes of the tensors made under the mode, alive at once (by storage: a view
    is no new memory), leaving out `external` storages (the weights)."""

    def __init__(self, external: set[int]):
        super().__init__()
        self.external = external
        self.refs: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.live = self.peak = 0

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.live -= self.sizes.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            key = tensor.untyped_storage()._cdata
            if key in self.external:
                continue
            if key not in self.sizes:
                self.sizes[key], self.refs[key] = tensor.untyped_storage().nbytes(), 0
                self.live += self.sizes[key]
                self.peak = max(self.peak, self.live)
            self.refs[key] += 1
            weakref.finalize(tensor, self._release, key)  # when its last user is gone
        return out


class _EfficientAttention(torch.autograd.Function):
    """A memory-efficient attention kernel's memory: the output, and q, k, v, out kept for
    the backward pass."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        ctx.save_for_backward(q, k, v, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _attention(q, k, v, *args, **kwargs):
    return _EfficientAttention.apply(q, k, v)


def storages(*modules: torch.nn.Module) -> set[int]:
    return {p.untyped_storage()._cdata for m in modules for p in m.parameters()}


def peak(external: set[int], run) -> float:
    mode = LiveBytes(external)
    with mode:
        run()
    return mode.peak / GIB


def vae_call(method, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """`vae.encode` or `vae.decode` of a meta tensor of `shape`."""
    method(torch.empty(shape, device="meta", dtype=dtype))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--rank", type=int, default=LoraSettings.rank, help="lora.rank")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    F.scaled_dot_product_attention = _attention  # what diffusers' attention processors call
    half, meta = torch.float16, torch.device("meta")
    with meta:
        unet, vae = sdxl_unet().to(half), sdxl_vae()
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    weights = storages(unet, vae)
    # CLIP ViT-L/14 (123M parameters) and OpenCLIP bigG/14 with its projection (695M).
    encoders = (123_060_480 + 694_659_840) * 2 / GIB
    print(f"resolution {args.resolution} px; modelled on the meta device, not measured")
    unet_gib = sum(p.numel() for p in unet.parameters()) * 2 / GIB
    vae_gib = sum(p.numel() for p in vae.parameters()) * 4 / GIB
    print(
        f"weights: UNet {unet_gib:.2f} GiB (float16), text encoders {encoders:.2f} GiB "
        f"(float16; {2 * encoders:.2f} in float32, as invert and lora jobs hold them), "
        f"VAE {vae_gib:.2f} GiB (float32)"
    )
    latent = args.resolution // 8

    def unet_call(rows: int, grad: bool = False) -> None:
        x = torch.empty(rows, 4, latent, latent, device=meta, dtype=half)
        context = torch.empty(rows, 77, 2048, device=meta, dtype=half, requires_grad=grad)
        added = {
            "text_embeds": torch.empty(rows, 1280, device=meta, dtype=half),
            "time_ids": torch.empty(rows, 6, device=meta, dtype=half),
        }
        out = unet(x, torch.tensor(500, device=meta), context, added_cond_kwargs=added).sample
        if grad:
            (out.float() ** 2).mean().backward()  # the loss's gradient reaches the tokens

    with torch.no_grad():
        for b in batches:
            call = peak(weights, lambda b=b: unet_call(2 * b))
            print(f"generation, one guided UNet call, batch {b}: {call:6.2f} GiB")
        # float32: SDXL's own under float16 (`model.vae: checkpoint`); float16: a VAE that
        # does not overflow there, such as madebyollin/sdxl-vae-fp16-fix.
        for dtype in (torch.float32, half):
            vae.to(dtype)
            weights = storages(unet, vae)
            name = str(dtype).removeprefix("torch.")
            for b in batches:
                pixels = (b, 3, args.resolution, args.resolution)
                latents = (b, 4, latent, latent)
                encode = peak(weights, partial(vae_call, vae.encode, pixels, dtype))
                decode = peak(weights, partial(vae_call, vae.decode, latents, dtype))
                print(f"VAE {name}, batch {b}: encode {encode:6.2f} GiB, decode {decode:6.2f} GiB")
    for checkpointing in (False, True):
        if checkpointing:
            unet.enable_gradient_checkpointing()
            unet.train()
        for b in batches:
            step = peak(weights, lambda b=b: unet_call(b, grad=True))
            print(f"inversion step, batch {b}, checkpointing {checkpointing}: {step:6.2f} GiB")
    # The LoRA learner: the same UNet with a float32 LoRA of `lora.projections`, as
    # `dafusion.stages.lora.add_lora` builds it (peft casts each projection's input to the
    # LoRA's float32). Its weights, gradients and AdamW's two moments: 16 bytes a parameter.
    unet.disable_gradient_checkpointing()
    unet.eval()
    with meta:
        lora = add_lora(unet, LoraSettings(rank=args.rank))
    count = sum(p.numel() for p in lora.values())
    print(
        f"LoRA of rank {args.rank}: {count / 1e6:.1f}M parameters; weights, gradients and "
        f"AdamW moments {16 * count / GIB:.2f} GiB"
    )
    weights = storages(unet, vae)
    for checkpointing in (False, True):
        if checkpointing:
            unet.enable_gradient_checkpointing()
            unet.train()
        for b in batches:
            step = peak(weights, lambda b=b: unet_call(b, grad=True))
            print(f"LoRA step, batch {b}, checkpointing {checkpointing}: {step:6.2f} GiB")


if __name__ == "__main__":
    main()
