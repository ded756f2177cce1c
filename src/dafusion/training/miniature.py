"""tiny-digits: a miniature text-to-image model trained here, on digits rendered from fonts.

The paper's setting is a generator pretrained on other data that meets a few-shot task.
The miniature keeps that shape: it learns "a photo of a seven" from digits typeset in
fonts under random affine transforms, while every split the classifier stage uses comes
from scikit-learn's handwritten digits. So the generator knows digits, in another style,
and has never seen an image of the few-shot task.

Same classes as Stable Diffusion v1 (AutoencoderKL, UNet2DConditionModel, CLIPTextModel
with its tokenizer, v1's scheduler), the tiny model's architecture at 16 px, trained by the
code below on a CPU from a seed. The shipped copy is `assets/tiny-digits`; rebuild it with

    python -m dafusion.training.miniature src/dafusion/assets/tiny-digits

Bitwise equality across torch releases is not promised (training runs float32 kernels).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..data.readers.folders import DIGIT_NAMES
from ..shipped import MINIATURE, MINIATURE_RESOLUTION
from ..stages.families.conditioning import tokenize

log = logging.getLogger(__name__)

SHIPPED = MINIATURE
NAME = "tiny-digits"
RESOLUTION = MINIATURE_RESOLUTION

# Fonts to typeset digits in: Pillow's own (always there) plus common system families
# where installed. The ones used are recorded in the model's training card.
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts")
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansCondensed-Oblique.ttf",
    "LiberationSans-Regular.ttf",
    "LiberationSans-Bold.ttf",
    "LiberationSerif-Regular.ttf",
    "LiberationSerif-Italic.ttf",
    "LiberationMono-Regular.ttf",
    "LiberationSansNarrow-Regular.ttf",
)

# Captions the generator learns; the workflow's prompts ("a photo of a {name}") and the
# inversion templates' words are among them. Empty captions teach the unconditional
# prediction classifier-free guidance needs.
TEMPLATES = (
    "a photo of a {}",
    "a photo of the {}",
    "a rendering of a {}",
    "a picture of a {}",
    "an image of the {}",
    "a good photo of a {}",
    "a close-up photo of the {}",
    "a {}",
    "the {}",
    "{}",
)
UNCONDITIONAL = 0.1


@dataclass(frozen=True)
class TrainingSettings:
    """What the miniature's weights depend on (with the code and the fonts found)."""

    seed: int = 0
    images_per_class: int = 1000
    vae_steps: int = 300
    unet_steps: int = 2500
    ema_decay: float = 0.995
    batch_size: int = 64
    vae_lr: float = 1e-3
    unet_lr: float = 1e-3


def find_fonts() -> list[Path]:
    """The system fonts of FONT_FILES that are installed, in that order."""
    found = []
    for name in FONT_FILES:
        for root in FONT_DIRS:
            hits = sorted(Path(root).rglob(name)) if Path(root).is_dir() else []
            if hits:
                found.append(hits[0])
                break
    return found


def _font(source: Path | None, size: int) -> ImageFont.FreeTypeFont:
    if source is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(str(source), size=size)


def render_digits(
    per_class: int, seed: int, fonts: Sequence[Path | None], size: int = RESOLUTION
) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` images of each digit, dark ink on white as scikit-learn's digits are drawn:
    a random font, stroke width, scale, rotation, shear and offset each, typeset at 4x and
    reduced with a box filter so strokes are anti-aliased. Returns (N, size, size) uint8
    grayscale images and their labels."""
    rng = np.random.default_rng(seed)
    big = 4 * size
    images = np.empty((10 * per_class, size, size), np.uint8)
    labels = np.repeat(np.arange(10), per_class)
    for i, label in enumerate(labels):
        font = _font(fonts[rng.integers(len(fonts))], int(big * rng.uniform(0.75, 1.0)))
        canvas = Image.new("L", (2 * big, 2 * big), 0)
        ImageDraw.Draw(canvas).text(
            (big, big),
            str(label),
            fill=255,
            font=font,
            anchor="mm",
            stroke_width=int(rng.integers(0, 4)),
            stroke_fill=255,
        )
        angle = math.radians(rng.uniform(-15, 15))
        shear = rng.uniform(-0.25, 0.25)
        scale = rng.uniform(0.85, 1.15)
        dx, dy = rng.uniform(-0.08, 0.08, size=2) * big
        # Inverse map (output -> input) about the canvas centre, as Image.transform wants.
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        a, b = cos, sin + shear * cos
        d, e = -sin, cos - shear * sin
        c = big - a * big - b * big - dx
        f = big - d * big - e * big - dy
        warped = canvas.transform(canvas.size, Image.AFFINE, (a, b, c, d, e, f), Image.BILINEAR)
        crop = warped.crop((big // 2, big // 2, big // 2 + big, big // 2 + big))
        images[i] = 255 - np.asarray(crop.resize((size, size), Image.BOX))
    return images, labels


def captions(labels: np.ndarray, rng: np.random.Generator) -> list[str]:
    """A random template per image, with the class name; some left empty."""
    out = []
    for label in labels:
        if rng.random() < UNCONDITIONAL:
            out.append("")
        else:
            out.append(TEMPLATES[rng.integers(len(TEMPLATES))].format(DIGIT_NAMES[label]))
    return out


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 grayscale (N, H, W) -> float RGB in [-1, 1], the VAE's input range."""
    x = torch.from_numpy(images).float().div(127.5).sub(1)
    return x[:, None].expand(-1, 3, -1, -1).contiguous()


def small_vae():
    """A VAE a quarter of the tiny model's (16 and 32 channels, no attention): 16 px digits
    need little, and every stage encodes and decodes through it."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=RESOLUTION,
        norm_num_groups=8,
        mid_block_add_attention=False,
    )


def train_vae(vae, pixels: torch.Tensor, settings: TrainingSettings, generator) -> list[float]:
    """Reconstruction (L1 + MSE) with a small KL term, as an autoencoder for diffusion."""
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.vae_steps)
    losses = []
    for step in range(settings.vae_steps):
        idx = torch.randint(len(pixels), (settings.batch_size,), generator=generator)
        x = pixels[idx]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        kl = posterior.kl().mean() / x[0].numel()
        loss = (recon - x).abs().mean() + (recon - x).pow(2).mean() + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0:
            log.info("vae step %d/%d loss %.4f", step, settings.vae_steps, loss.item())
    vae.eval()
    return losses


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Posterior means of every image (the UNet trains on these, scaled)."""
    return torch.cat(
        [vae.encode(pixels[i : i + batch]).latent_dist.mean for i in range(0, len(pixels), batch)]
    )


def train_unet(
    unet,
    text_encoder,
    tokenizer,
    scheduler,
    latents,
    texts,
    settings,
    generator,
    on_checkpoint=None,
) -> list[float]:
    """Noise prediction (epsilon) on the scheduler's forward process, text encoder trained
    jointly: the v1 objective, from scratch, at a constant learning rate after warm-up; the
    weights kept are an exponential moving average of the steps' (`ema_decay`)."""
    unet.train()
    text_encoder.train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=settings.unet_lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    ema = [p.detach().clone() for p in params]
    ids = tokenize(tokenizer, texts)
    alphas = scheduler.alphas_cumprod.float()
    losses = []
    for step in range(settings.unet_steps):
        idx = torch.randint(len(latents), (settings.batch_size,), generator=generator)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(len(alphas), (len(idx),), generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        hidden = text_encoder(ids[idx])[0]
        loss = (unet(noisy, t, hidden).sample - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1 - settings.ema_decay)
        losses.append(loss.item())
        if step % 100 == 0:
            log.info("unet step %d/%d loss %.4f", step, settings.unet_steps, loss.item())
        if on_checkpoint is not None and (step + 1) % 250 == 0:
            on_checkpoint(step + 1, ema)
    with torch.no_grad():
        torch._foreach_copy_(params, ema)
    unet.eval()
    text_encoder.eval()
    return losses


def _save(pipe, output_dir: Path) -> None:
    """float16 safetensors (half the size; the workflow loads them in model.dtype)."""
    import copy

    copy.deepcopy(pipe).to(torch.float16).save_pretrained(str(output_dir), safe_serialization=True)


def train_miniature(
    output_dir: str | Path, settings: TrainingSettings, checkpoints: Path | None = None
) -> dict:
    """Train the miniature from `settings.seed` and save it as a diffusers directory with
    a training card; with `checkpoints`, also the averaged weights every 250 steps there
    (`step-N/`), to watch samples while it trains."""
    from ..stages.tiny import build_tiny_pipeline

    torch.set_flush_denormal(True)  # tiny weights decay toward denormals, slow on CPUs
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    fonts: list[Path | None] = [None, *find_fonts()]
    images, labels = render_digits(settings.images_per_class, settings.seed, fonts)
    pixels = to_pixels(images)
    pipe = build_tiny_pipeline(settings.seed, RESOLUTION)
    pipe.vae = small_vae()
    vae_losses = train_vae(pipe.vae, pixels, settings, generator)
    latents = encode_latents(pipe.vae, pixels)
    scale = float(1 / latents.std())
    pipe.vae.register_to_config(scaling_factor=scale)
    texts = captions(labels, np.random.default_rng(settings.seed + 1))
    params = list(pipe.unet.parameters()) + list(pipe.text_encoder.parameters())

    def checkpoint(step: int, ema: list[torch.Tensor]) -> None:
        current = [p.detach().clone() for p in params]
        with torch.no_grad():
            torch._foreach_copy_(params, ema)
            _save(pipe, checkpoints / f"step-{step}")
            torch._foreach_copy_(params, current)
        log.info("saved %s", checkpoints / f"step-{step}")

    unet_losses = train_unet(
        pipe.unet,
        pipe.text_encoder,
        pipe.tokenizer,
        pipe.scheduler,
        latents * scale,
        texts,
        settings,
        generator,
        checkpoint if checkpoints else None,
    )
    output_dir = Path(output_dir)
    _save(pipe, output_dir)
    card = {
        "name": NAME,
        "settings": asdict(settings),
        "fonts": ["Pillow default"] + [f.name for f in fonts[1:]],
        "templates": list(TEMPLATES),
        "vae_final_loss": float(np.mean(vae_losses[-100:])),
        "unet_final_loss": float(np.mean(unet_losses[-100:])),
        "latent_scaling_factor": scale,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    (output_dir / "training.json").write_text(json.dumps(card, indent=2) + "\n")
    write_sums(output_dir)
    return card


def write_sums(folder: Path) -> None:
    """SHA256SUMS of every file in `folder` (`sha256sum -c` reads it; a test checks it)."""
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(folder)}"
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "SHA256SUMS"
    ]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path)
    defaults = TrainingSettings()
    for field, value in asdict(defaults).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument(
        "--checkpoints", type=Path, help="save averaged weights here every 250 steps"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = TrainingSettings(**{k: getattr(args, k) for k in asdict(defaults)})
    card = train_miniature(args.output, settings, args.checkpoints)
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
