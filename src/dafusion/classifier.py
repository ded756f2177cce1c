"""Classifier stage: train on real images mixed with synthetic ones (eq. 6-7), evaluate.

Each batch element is a uniformly drawn real image, replaced with probability alpha by one
of that image's M synthetic variants (drawn uniformly). Images are decoded once and kept as
uint8 tensors on the training device; augmentation runs on whole batches there.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .datasets import load_image


@dataclass
class ClassifierSettings:
    backbone: str = "small-cnn"
    image_size: int = 32
    steps: int = 10000
    batch_size: int = 32
    lr: float = 1e-4
    eval_interval: int = 200
    synthetic_probability: float = 0.5
    augmentation: str = "standard"
    rotation_degrees: float = 15.0


class SmallCNN(torch.nn.Module):
    """A compact CNN trained end to end: the embedded default's backbone and head."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int) -> torch.nn.Sequential:
            return torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(cout),
                torch.nn.ReLU(inplace=True),
                torch.nn.MaxPool2d(2),
            )

        self.features = torch.nn.Sequential(
            block(3, width), block(width, 2 * width), block(2 * width, 4 * width)
        )
        self.head = torch.nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def build_model(settings: ClassifierSettings, num_classes: int) -> torch.nn.Module:
    if settings.backbone == "small-cnn":
        return SmallCNN(num_classes)
    raise ValueError(f"config key 'classifier.backbone': unknown backbone '{settings.backbone}'")


def to_uint8(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """Decode once: [N, 3, size, size] uint8."""
    arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)) for im in images]
    if not arrays:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def synthetic_lookup(real_keys: Sequence[str], index: pd.DataFrame) -> list[torch.Tensor]:
    """For each real image, the positions (in `index`) of its synthetic variants."""
    position = {key: i for i, key in enumerate(real_keys)}
    lookup: list[list[int]] = [[] for _ in real_keys]
    for pos, source in enumerate(index["source_key"]):
        if source not in position:
            raise ValueError(f"synthetic image of unknown real image '{source}'")
        lookup[position[source]].append(pos)
    return [torch.as_tensor(v, dtype=torch.long) for v in lookup]


def draw_batch(
    generator: torch.Generator,
    variants: Sequence[torch.Tensor],
    alpha: float,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6-7: real indices i ~ U{1..N}; with prob. alpha, a synthetic variant j of i.

    Returns (real index, synthetic position or -1) per batch element.
    """
    real = torch.randint(len(variants), (batch_size,), generator=generator)
    swap = torch.rand(batch_size, generator=generator) < alpha
    pick = torch.rand(batch_size, generator=generator)
    synthetic = torch.full((batch_size,), -1, dtype=torch.long)
    for b in torch.nonzero(swap).flatten().tolist():
        options = variants[real[b]]
        if len(options):
            synthetic[b] = options[int(pick[b] * len(options))]
    return real, synthetic


def augment(x: torch.Tensor, generator: torch.Generator, degrees: float) -> torch.Tensor:
    """Standard augmentation per sample: horizontal flip and rotation up to `degrees`."""
    n = x.shape[0]
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255.0 - 0.5) / 0.5


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    batch: int = 512,
) -> dict[str, float]:
    """Accuracy, loss and per-class accuracy over every evaluation image exactly once."""
    model.eval()
    losses, predictions = [], []
    for start in range(0, len(images), batch):
        logits = model(normalize(images[start : start + batch]))
        losses.append(F.cross_entropy(logits, labels[start : start + batch], reduction="sum"))
        predictions.append(logits.argmax(dim=1))
    model.train()
    pred = torch.cat(predictions)
    correct = (pred == labels).float()
    metrics = {
        "accuracy": correct.mean().item(),
        "loss": (torch.stack(losses).sum() / len(labels)).item(),
    }
    for c in range(num_classes):
        mask = labels == c
        metrics[f"accuracy/{c}"] = correct[mask].mean().item() if mask.any() else float("nan")
    return metrics


def train(
    train_manifest: pd.DataFrame,
    val_manifest: pd.DataFrame,
    class_names: Sequence[str],
    synthetic_index: pd.DataFrame | None,
    synthetic_images: dict[str, tuple[bytes, int]] | None,
    settings: ClassifierSettings,
    seed: int,
    device: torch.device,
    progress: bool = True,
) -> pd.DataFrame:
    """Train one classifier; returns metrics per evaluation step (step, split, metric, value)."""
    torch.manual_seed(seed)
    num_classes = len(class_names)
    size = settings.image_size
    real = to_uint8([load_image(r) for r in train_manifest.to_dict("records")], size).to(device)
    real_labels = torch.tensor(train_manifest["label"].tolist(), dtype=torch.long, device=device)
    val = to_uint8([load_image(r) for r in val_manifest.to_dict("records")], size).to(device)
    val_labels = torch.tensor(val_manifest["label"].tolist(), dtype=torch.long, device=device)
    if synthetic_index is not None and len(synthetic_index):
        decoded = [Image.open(io.BytesIO(synthetic_images[k][0])) for k in synthetic_index["key"]]
        synthetic = to_uint8(decoded, size).to(device)
        variants = synthetic_lookup(train_manifest["key"].tolist(), synthetic_index)
        alpha = settings.synthetic_probability
    else:
        synthetic = real[:0]
        variants = [torch.zeros(0, dtype=torch.long)] * len(real)
        alpha = 0.0
    model = build_model(settings, num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    bar = tqdm(range(1, settings.steps + 1), desc="classifier", disable=not progress)
    for step in bar:
        real_idx, syn_idx = draw_batch(generator, variants, alpha, settings.batch_size)
        real_idx, syn_idx = real_idx.to(device), syn_idx.to(device)
        x = real[real_idx]
        if (syn_idx >= 0).any():
            x = torch.where((syn_idx >= 0)[:, None, None, None], synthetic[syn_idx.clamp(min=0)], x)
        x = normalize(x)
        if settings.augmentation == "standard":
            x = augment(x, generator, settings.rotation_degrees)
        loss = F.cross_entropy(model(x), real_labels[real_idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % settings.eval_interval == 0 or step == settings.steps:
            metrics = evaluate(model, val, val_labels, num_classes)
            bar.set_postfix(loss=f"{loss.item():.3f}", val_acc=f"{metrics['accuracy']:.3f}")
            for name, value in metrics.items():
                if name.startswith("accuracy/"):
                    name = f"accuracy/{class_names[int(name.split('/')[1])]}"
                rows.append({"step": step, "split": "val", "metric": name, "value": value})
    return pd.DataFrame(rows)
