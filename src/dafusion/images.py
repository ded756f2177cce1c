"""Image <-> tensor conversions shared by the stages."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_model_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """RGB image -> [3, R, R] float tensor in [-1, 1], the VAE's input range."""
    image = image.convert("RGB").resize((resolution, resolution), Image.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def to_pil(tensor: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] tensor in [-1, 1] -> PIL images (rounded to uint8)."""
    array = ((tensor.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    array = array.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]
