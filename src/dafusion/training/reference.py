"""Trains the reference digit classifier (`dafusion.reporting.reference`) shipped as
`assets/reference-digits.safetensors`. A tool run by hand, never by a job:

    python -m dafusion.training.reference src/dafusion/assets/reference-digits.safetensors

It learns from scikit-learn's handwritten digits (disjoint from the fonts the miniature
generator learned from), with random affine transforms and stroke widths so that it also
reads typeset digits.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..reporting.reference import SIZE, ReferenceClassifier, accuracy, to_input

log = logging.getLogger(__name__)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random affine (rotation, scale, shear, shift), stroke width (dilate or erode) and
    contrast: handwritten digits drawn up from 8x8 are thick and blurred, typeset ones
    thin and sharp, and the classifier must read both."""
    n = len(x)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-15, 15) * math.pi / 180
    scale = uniform(0.65, 1.15)
    shear = uniform(-0.25, 0.25)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos, sin + shear * cos, uniform(-0.15, 0.15)], -1),
            torch.stack([-sin, cos - shear * sin, uniform(-0.15, 0.15)], -1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False)
    stroke = torch.randint(3, (n,), generator=generator)
    thick = F.max_pool2d(x, 3, 1, 1)
    thin = -F.max_pool2d(-x, 2, 1, 1)[..., :SIZE, :SIZE]
    x = torch.where((stroke == 1).view(-1, 1, 1, 1), thick, x)
    x = torch.where((stroke == 2).view(-1, 1, 1, 1), thin, x)
    sharp = ((x - 0.3) * uniform(1.0, 3.0).view(-1, 1, 1, 1)).clamp(0, 1)
    return torch.where((torch.rand(n, generator=generator) < 0.5).view(-1, 1, 1, 1), sharp, x)


def handwritten_digits(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits drawn as the workflow's `digits` kind draws them."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = (255 - digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = np.stack(
        [np.asarray(Image.fromarray(g).resize((size, size), Image.BILINEAR)) for g in gray]
    )
    return images, digits.target.astype(np.int64)


def train_reference(
    seed: int = 0, steps: int = 1500, batch_size: int = 64
) -> tuple[nn.Module, dict]:
    """Train on 80% of the handwritten digits; report held-out accuracy on the other 20%
    and on typeset digits (a style the classifier never trained on)."""
    from ..training.miniature import find_fonts, render_digits

    torch.set_flush_denormal(True)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = handwritten_digits()
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = int(0.8 * len(order))
    x, y = to_input(images), torch.from_numpy(labels)
    train, held = order[:cut], order[cut:]
    model = ReferenceClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    model.train()
    for step in range(steps):
        idx = torch.from_numpy(train)[torch.randint(len(train), (batch_size,), generator=generator)]
        loss = F.cross_entropy(model(augment(x[idx], generator)), y[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            log.info("reference step %d/%d loss %.3f", step, steps, loss.item())
    model.eval()
    typeset, typeset_labels = render_digits(30, seed + 7, [None, *find_fonts()])
    card = {
        "seed": seed,
        "steps": steps,
        "held_out_accuracy": accuracy(model, images[held], labels[held]),
        "typeset_accuracy": accuracy(model, typeset, typeset_labels),
    }
    return model, card


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from safetensors.torch import save_file

    model, card = train_reference(args.seed, args.steps)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.output), metadata={k: json.dumps(v) for k, v in card.items()})
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
