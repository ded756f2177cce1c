"""Classifier backbones: the paper's frozen ImageNet ResNet-50, DeiT, and a small CNN.

Pretrained weights are read from safetensors files only, offline: ResNet-50 from a file
path or the local Hugging Face cache, DeiT from the local Hugging Face cache
(`facebook/deit-base-distilled-patch16-224`, the original code's). The default ResNet-50
weights are torchvision's IMAGENET1K_V2, what the original code's
`resnet50(weights=ResNet50_Weights.DEFAULT)` loads (train_classifier.py:331), as timm
republished them in safetensors (`timm/resnet50.tv2_in1k`); torchvision's first weights,
IMAGENET1K_V1, are `timm/resnet50.tv_in1k`. timm's ResNet names its modules as torchvision's
does (conv1, bn1, layer1-4 of Bottlenecks with conv1-3/bn1-3 and downsample.0/.1, fc), so
those files load into torchvision's resnet50 as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..settings import BACKBONE_WEIGHTS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The original code normalizes every image with mean = std = 0.5 whatever the backbone
# (semantic_aug/few_shot_dataset.py:34-39 and each dataset's transforms).
ORIGINAL_MEAN = (0.5, 0.5, 0.5)
ORIGINAL_STD = (0.5, 0.5, 0.5)
RESNET50_HUB = BACKBONE_WEIGHTS["resnet50"]
DEIT_HUB = BACKBONE_WEIGHTS["deit"]


@dataclass
class Backbone:
    """A feature extractor, the size of its features, the input statistics its weights were
    trained with (used with `classifier.normalization: backbone`), whether it is frozen."""

    module: torch.nn.Module
    dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    frozen: bool


class SmallCNN(torch.nn.Module):
    """A compact CNN trained end to end: the embedded default's backbone.

    16 channels wide at the input: the embedded default's 16 classifier runs take seconds
    each on a CPU (32 wide costs three times as much for no accuracy that means anything).
    """

    def __init__(self, width: int = 16):
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
        self.dim = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


class _DeiTFeatures(torch.nn.Module):
    """The class token's last hidden state, as the original code's
    `self.base_model(x)[0][:, 0, :]` (train_classifier.py:365); not the distillation token."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
        return hidden[:, 0]


def _resnet50_weights(weights: str | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if weights and Path(weights).is_file():
        return load_file(weights)
    from huggingface_hub import hf_hub_download

    repo = weights or RESNET50_HUB
    try:
        path = hf_hub_download(repo, "model.safetensors", local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure here means "not in the cache"
        raise OSError(
            f"config key 'classifier.weights': ImageNet ResNet-50 weights not found offline "
            f"('{repo}'). Put them in the Hugging Face cache on a machine with internet "
            f"(`hf download {RESNET50_HUB}`: torchvision's IMAGENET1K_V2, the original code's; "
            "`timm/resnet50.tv_in1k` is IMAGENET1K_V1), or point classifier.weights at a "
            "torchvision-layout resnet50 .safetensors file."
        ) from exc
    return load_file(path)


def build_backbone(name: str, weights: str | None = None, pretrained: bool = True) -> Backbone:
    """Construct a backbone; `pretrained=False` gives random weights (tests, benchmarks)."""
    if name == "small-cnn":
        net = SmallCNN()
        return Backbone(net, net.dim, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), frozen=False)
    if name == "resnet50":
        from torchvision.models import resnet50

        net = resnet50()
        if pretrained:
            state = _resnet50_weights(weights)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            if [k for k in missing if not k.startswith("fc.")] or unexpected:
                raise ValueError(
                    "config key 'classifier.weights': not torchvision-layout resnet50 weights "
                    "(keys conv1.weight, bn1.*, layer1.0.conv1.weight, ..., as torchvision's and "
                    f"timm's resnet50; missing {missing[:3]}, unexpected {unexpected[:3]})"
                )
        dim = net.fc.in_features
        net.fc = torch.nn.Identity()
        return Backbone(net, dim, IMAGENET_MEAN, IMAGENET_STD, frozen=True)
    if name == "deit":
        from transformers import DeiTConfig, DeiTModel

        if pretrained:
            try:
                model = DeiTModel.from_pretrained(
                    weights or DEIT_HUB, use_safetensors=True, local_files_only=True,
                    add_pooling_layer=False,
                )  # fmt: skip
            except OSError as exc:
                raise OSError(
                    f"config key 'classifier.weights': DeiT weights '{weights or DEIT_HUB}' "
                    f"not in the local Hugging Face cache (`hf download {DEIT_HUB}`)"
                ) from exc
        else:
            model = DeiTModel(DeiTConfig(), add_pooling_layer=False)
        return Backbone(
            _DeiTFeatures(model), model.config.hidden_size, IMAGENET_MEAN, IMAGENET_STD,
            frozen=True,
        )  # fmt: skip
    raise ValueError(f"config key 'classifier.backbone': unknown backbone '{name}'")
