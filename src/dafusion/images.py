"""Image loading and conversion: manifest rows -> RGB images, images <-> model tensors.

torch is imported only inside the tensor conversions, so the readers (which need only
`encode_png` and `IMAGE_SUFFIXES`) do not pay for it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _has_bytes(row: Mapping) -> bool:
    data = row.get("image")
    return data is not None and not (isinstance(data, float) and np.isnan(data))


def describe(row: Mapping) -> str:
    """A manifest row's image for error messages: its file, or its key when stored as bytes."""
    if _has_bytes(row):
        return f"the image bytes of key '{row['key']}'"
    return f"image '{row['path']}' (key '{row['key']}')"


def open_image(row: Mapping) -> Image.Image:
    """A manifest row's image, opened lazily (not decoded) from its bytes or its file."""
    return Image.open(io.BytesIO(row["image"]) if _has_bytes(row) else row["path"])


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB.

    Transparent pixels are composited on white (their stored color is arbitrary), and 16-bit
    grayscale is scaled to 8 bits (PIL would clip it to white).
    """
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")
    if image.mode.startswith("I"):
        pixels = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def load_image(row: Mapping) -> Image.Image:
    """Open a manifest row's image as RGB, with EXIF orientation applied."""
    try:
        return to_rgb(ImageOps.exif_transpose(open_image(row)))
    except OSError as exc:
        raise OSError(f"cannot read {describe(row)}: {exc}") from exc


def to_model_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """RGB image -> [3, R, R] float tensor in [-1, 1], the VAE's input range."""
    import torch

    # Bilinear, as the original DA-Fusion code resized its inputs.
    image = image.convert("RGB").resize((resolution, resolution), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def to_pil(tensor: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] tensor in [-1, 1] -> PIL images (rounded to uint8)."""
    import torch

    array = ((tensor.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    array = array.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]
