"""Image loading and conversion: manifest rows -> RGB images, images <-> model tensors.

torch is imported only inside the tensor conversions, and pillow-heif at the first image
opened, so the readers (which need only `encode_png` and `IMAGE_SUFFIXES`) pay for neither.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch

# The file suffixes read as images, compared in lower case (`.JPE` is `.jpe`): what cameras,
# phones (HEIC, a phone's default) and browsers (JFIF, AVIF, WebP) save. Pillow reads JFIF
# (JPEG) and AVIF itself; HEIC/HEIF through pillow-heif (`register_openers`).
IMAGE_SUFFIXES = frozenset(
    [".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"]
    + [".heic", ".heif", ".avif"]
)


def is_image_file(path: Path) -> bool:
    """Whether a file's suffix, in any case, is one read as an image."""
    return path.suffix.lower() in IMAGE_SUFFIXES


@functools.cache
def register_openers() -> None:
    """Teach Pillow HEIC/HEIF (pillow-heif), once per process, from the first image opened:
    every process that decodes images (each job, a DataLoader worker) opens them through
    `open_image`, and one that never decodes does not import pillow-heif."""
    try:
        from pillow_heif import register_heif_opener
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "pillow-heif, which reads HEIC/HEIF photos, is not installed in this environment: "
            "reinstall dafusion (pip install -e .) or pip install pillow-heif"
        ) from exc
    register_heif_opener()


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
    register_openers()
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


def to_model_tensor(
    image: Image.Image, resolution: int, resample: Image.Resampling = Image.Resampling.BILINEAR
) -> torch.Tensor:
    """RGB image -> [3, R, R] float tensor in [-1, 1], the VAE's input range.

    Bilinear by default, as the original's generation resizes its inputs
    (semantic_aug/augmentations/textual_inversion.py l. 121, real_guidance.py l. 67);
    inversion passes bicubic, as its original does.
    """
    import torch

    image = image.convert("RGB").resize((resolution, resolution), resample)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def to_pil(tensor: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] tensor in [-1, 1] -> PIL images (rounded to uint8)."""
    import torch

    array = ((tensor.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a) for a in array.permute(0, 2, 3, 1).cpu().numpy()]
