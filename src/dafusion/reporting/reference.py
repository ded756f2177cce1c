"""A reference digit classifier that scores generated images, in tests and in the report.

It is a measuring instrument, not a stage of the method: the paper's classifier stage never
uses it. Shipped as `assets/reference-digits.safetensors`, trained by
`dafusion.training.reference` (which jobs never import: scoring needs only the network).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..shipped import REFERENCE_CLASSIFIER

SHIPPED = REFERENCE_CLASSIFIER
SIZE = 16


class ReferenceClassifier(nn.Module):
    """Four 3x3 convolutions and two linear layers on 16x16 grayscale (ink = 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Images as (N, H, W) or (N, H, W, 3) uint8, dark ink on white, -> (N, 1, 16, 16) ink
    in [0, 1], resized with antialiasing whatever their size."""
    x = torch.as_tensor(np.asarray(images)).float()
    if x.ndim == 4:
        x = x.mean(-1)
    x = (255 - x[:, None]) / 255
    if x.shape[-1] != SIZE:
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True)
    return x


@torch.no_grad()
def probabilities(model: nn.Module, images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Class probabilities of each image (uint8, dark ink on white, any size)."""
    x = to_input(images)
    return torch.cat([model(x[i : i + 512]).softmax(-1) for i in range(0, len(x), 512)])


def accuracy(model: nn.Module, images: np.ndarray, labels: Sequence[int]) -> float:
    """Fraction of `images` recognized as their label."""
    predicted = probabilities(model, images).argmax(-1).numpy()
    return float((predicted == np.asarray(labels)).mean())


def load_reference(path: str | Path = SHIPPED) -> nn.Module:
    """The shipped reference classifier (safetensors), in eval mode."""
    from safetensors.torch import load_file

    model = ReferenceClassifier()
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.eval()
