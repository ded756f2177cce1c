"""Classifier stage: train on real images mixed with synthetic ones (eq. 6-7), evaluate.

Each training example is a uniformly drawn real image, replaced with probability alpha by one
of that image's M synthetic variants (drawn uniformly), then augmented as the original code's
datasets do (semantic_aug/datasets/*.py): a horizontal flip and a rotation (Leafy Spurge: a
vertical flip too, and 45 degrees), or RandAugment instead of them. CutMix, when on, pastes
boxes of other training examples, drawn and augmented the same way, into each example, as
the original's `cutmix` package.

The protocol is the original code's by default (`classifier.protocol: original`): inputs
normalized with mean = std = 0.5 for every backbone, and the frozen backbone in training
mode while the head trains (its `model.train()`), so that BatchNorm normalizes each batch
with the batch's own statistics and re-estimates its running statistics, which evaluation,
in eval mode, then uses. `protocol: clean` keeps the backbone in eval mode throughout, on
the weights' ImageNet statistics, and normalizes inputs with the backbone's own statistics.

Images are decoded once and kept as uint8 tensors on the training device; augmentation runs
on whole batches there, and the per-step random draws (made on the CPU generator) reach the
device without a stream sync.

By default every step draws a fresh augmentation and runs the backbone on it, as the paper
and the original code. `feature_cache: true` is a speed option that deviates from them:
with a frozen backbone the features of `cache_views` augmented views of every real and
synthetic image are computed once, and the linear head trains on those fixed views.
The original code's evaluation flaws are fixed by default, each with a setting that
restores it: the whole evaluation split once (`eval_samples: 6400` draws with replacement),
classes absent from a draw skipped (`absent_classes: zero` counts them as 0). A frozen
backbone whose features training mode does not change (in eval mode, or without BatchNorm
or dropout, as DeiT) embeds the evaluation images once per run, not at every evaluation.
`precision` sets the backbone's arithmetic (float32, the paper's; tf32; bf16).

A run can save what it trained (`head_path`; `save_head`): the final step's state, never a
step chosen on validation, so that the scores it gives synthetic images (the `classifier`
scorer, `load_classifier`) carry no information from the evaluation images.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..data.images import load_image
from ..jobs.io import atomic_path
from ..settings import ClassifierSettings
from .backbones import ORIGINAL_MEAN, ORIGINAL_STD, Backbone, build_backbone
from .mixing import VariantTable, draw_batch, synthetic_lookup


def to_uint8(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """Decode once: [N, 3, size, size] uint8."""
    arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)) for im in images]
    if not arrays:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def to_device(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A small CPU tensor (per-step indices, random draws) on `device`.

    On CUDA, through pinned memory without blocking: a plain `.to(device)` of pageable memory
    synchronizes the stream, which would make the CPU wait for the previous step every step.
    """
    device = torch.device(device)
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def augment(
    x: torch.Tensor, generator: torch.Generator, degrees: float, vertical_flip: bool = False
) -> torch.Tensor:
    """Per sample, as the original's RandomHorizontalFlip, (RandomVerticalFlip,)
    RandomRotation(degrees): flips with probability 0.5 each, an angle uniform in
    [-degrees, degrees] about the centre, zeros outside the image (bilinear here; the
    original's rotation of a PIL image samples the nearest pixel)."""
    n = x.shape[0]
    for dim in (-1, -2) if vertical_flip else (-1,):
        flip = to_device(torch.rand(n, generator=generator) < 0.5, x.device)
        x = torch.where(flip[:, None, None, None], x.flip(dim), x)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(to_device(theta, x.device).to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


class Augmenter:
    """The configured per-image augmentation: a uint8 batch -> a float batch in [0, 1].

    As the original's datasets: `standard` (and `cutmix`, which adds CutMix after it) flips
    and rotates; `randaugment` is RandAugment instead of them, on the uint8 image
    (semantic_aug/datasets/pascal.py:110-128).
    """

    def __init__(self, settings: ClassifierSettings, generator: torch.Generator):
        self.settings = settings
        self.generator = generator
        self.randaugment = None
        if settings.augmentation == "randaugment":
            from torchvision.transforms import v2

            self.randaugment = v2.RandAugment()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.randaugment is not None:  # per image: v2 would give a batch one shared op
            return torch.stack([self.randaugment(img) for img in x]).float() / 255.0
        x = x.float() / 255.0
        if self.settings.augmentation in ("standard", "cutmix"):
            x = augment(
                x, self.generator, self.settings.rotation_degrees, self.settings.vertical_flip
            )
        return x


class TrainingSet:
    """The real and synthetic images on the device, drawn as the original dataset's
    `__getitem__` draws an example (eq. 6-7) and augmented."""

    def __init__(
        self,
        real: torch.Tensor,
        labels: torch.Tensor,
        synthetic: torch.Tensor,
        variants: VariantTable,
        alpha: float,
        augmenter: Augmenter,
        generator: torch.Generator,
    ):
        self.pool = torch.cat([real, synthetic])
        self.num_real = len(real)
        self.labels = labels
        self.variants = variants
        self.alpha = alpha
        self.augmenter = augmenter
        self.generator = generator

    def indices(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions in `pool` of n drawn examples and their labels, on the device."""
        real, synthetic = draw_batch(self.generator, self.variants, self.alpha, n)
        position = torch.where(synthetic >= 0, self.num_real + synthetic, real)
        device = self.pool.device
        return to_device(position, device), self.labels[to_device(real, device)]

    def __call__(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n drawn and augmented examples (float in [0, 1]) and their labels."""
        position, labels = self.indices(n)
        return self.augmenter(self.pool[position]), labels


def cutmix_boxes(
    rows: int, cols: int, lam: torch.Tensor, row_centre: torch.Tensor, col_centre: torch.Tensor
) -> torch.Tensor:
    """The cutmix package's box (rand_bbox, cutmix/utils.py:48-71) around given centres.

    Its sides are int(side * sqrt(1 - lam)), halved with floor division on either side of
    the centre and clipped to the image. [n, 4]: top, left, bottom, right (exclusive).
    """
    ratio = (1.0 - lam.double()).sqrt()
    half_rows = (rows * ratio).long() // 2
    half_cols = (cols * ratio).long() // 2
    return torch.stack(
        [
            (row_centre - half_rows).clamp(0, rows),
            (col_centre - half_cols).clamp(0, cols),
            (row_centre + half_rows).clamp(0, rows),
            (col_centre + half_cols).clamp(0, cols),
        ],
        dim=1,
    )


def box_masks(boxes: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """[n, 1, rows, cols]: True inside each box (top, left, bottom, right; exclusive ends)."""
    r = torch.arange(rows, device=boxes.device)
    c = torch.arange(cols, device=boxes.device)
    in_rows = (r >= boxes[:, 0:1]) & (r < boxes[:, 2:3])
    in_cols = (c >= boxes[:, 1:2]) & (c < boxes[:, 3:4])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


class SampleCutMix:
    """The original code's CutMix, per example: the `cutmix` package's dataset wrapper as
    train_classifier.py:132-136 builds it, CutMix(beta=1.0, prob=0.5, num_mix=2).

    For each example, each of `rounds` rounds with probability `prob` (cutmix/cutmix.py:20-35):
    lam ~ Beta(1, 1), a partner drawn as any training example (eq. 6-7 and augmentation, by
    `draw`), its pixels pasted in the package's box, and the labels mixed by the box's
    clipped area: y <- y * (1 - area) + y_partner * area.
    """

    def __init__(
        self,
        draw: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
        num_classes: int,
        generator: torch.Generator,
        rounds: int = 2,
        prob: float = 0.5,
    ):
        self.draw = draw
        self.num_classes = num_classes
        self.generator = generator
        self.rounds = rounds
        self.prob = prob

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = F.one_hot(labels, self.num_classes).float()
        n, rows, cols = x.shape[0], x.shape[-2], x.shape[-1]
        for _ in range(self.rounds):
            mixed = torch.nonzero(torch.rand(n, generator=self.generator) < self.prob).flatten()
            if not len(mixed):
                continue
            lam = torch.rand(len(mixed), generator=self.generator, dtype=torch.float64)
            partner, partner_labels = self.draw(len(mixed))
            row_centre = torch.randint(rows, (len(mixed),), generator=self.generator)
            col_centre = torch.randint(cols, (len(mixed),), generator=self.generator)
            boxes = cutmix_boxes(rows, cols, lam, row_centre, col_centre)
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            lam = 1 - area.double() / (rows * cols)  # recomputed from the clipped box
            where = to_device(mixed, x.device)
            inside = box_masks(to_device(boxes, x.device), rows, cols)
            x = x.index_put((where,), torch.where(inside, partner, x[where]))
            weights = to_device(torch.stack([lam, 1 - lam], dim=1).float(), x.device)
            partner_targets = F.one_hot(partner_labels, self.num_classes).float()
            mixed_targets = targets[where] * weights[:, :1] + partner_targets * weights[:, 1:]
            targets = targets.index_put((where,), mixed_targets)
        return x, targets


def cutmix_transform(num_classes: int):
    """torchvision's CutMix (beta 1; torchvision >= 0.16, below the required version)."""
    from torchvision.transforms import v2

    return v2.CutMix(alpha=1.0, num_classes=num_classes)


class BatchCutMix:
    """`cutmix_mode: batch`: torchvision's CutMix on half of the batches, one box and lam per
    batch, the batch's own examples (rolled by one) as partners."""

    def __init__(self, num_classes: int, generator: torch.Generator):
        self.cutmix = cutmix_transform(num_classes)
        self.num_classes = num_classes
        self.generator = generator

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.rand(1, generator=self.generator).item() < 0.5:
            return self.cutmix(x, labels)
        return x, F.one_hot(labels, self.num_classes).float()


class Normalize(torch.nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def metrics_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, num_classes: int, absent: str = "skip"
) -> dict[str, float]:
    """Accuracy, loss, per-class accuracy and their mean (absent classes: skip or zero)."""
    correct = (logits.argmax(dim=1) == labels).float()
    out = {
        "accuracy": correct.mean().item(),
        "loss": F.cross_entropy(logits, labels).item(),
    }
    per_class = []
    for c in range(num_classes):
        mask = labels == c
        value = correct[mask].mean().item() if mask.any() else float("nan")
        out[f"accuracy/{c}"] = value
        per_class.append(0.0 if (np.isnan(value) and absent == "zero") else value)
    out["mean_class_accuracy"] = float(np.nanmean(per_class))
    return out


class Classifier(torch.nn.Module):
    """Normalization, backbone and a linear head.

    `normalization`: original is mean = std = 0.5 for every backbone, as the original code
    (semantic_aug/few_shot_dataset.py:34-39); backbone is the backbone's own statistics,
    which eval-mode BatchNorm on ImageNet running statistics expects.
    """

    def __init__(
        self, backbone: Backbone, num_classes: int, normalization: str, precision: str = "float32"
    ):
        super().__init__()
        self.backbone = backbone
        self.precision = precision
        if normalization == "backbone":
            self.normalize = Normalize(backbone.mean, backbone.std)
        else:
            self.normalize = Normalize(ORIGINAL_MEAN, ORIGINAL_STD)
        # Channels-last convolutions: faster on CPUs (oneDNN) and on GPUs' tensor cores,
        # the same arithmetic up to rounding.
        self.features = backbone.module.to(memory_format=torch.channels_last)
        self.head = torch.nn.Linear(backbone.dim, num_classes)
        if backbone.frozen:
            self.features.requires_grad_(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features of images in [0, 1]; no gradient through a frozen backbone."""
        x = self.normalize(x).contiguous(memory_format=torch.channels_last)
        bf16 = self.precision == "bf16"
        with (
            torch.set_grad_enabled(not self.backbone.frozen and torch.is_grad_enabled()),
            torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16),
            tf32(self.precision == "tf32"),
        ):
            return self.features(x).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TensorFloat-32 matmuls and cuDNN convolutions on or off (classifier.precision), the
    previous flags restored after; cuDNN's own default is on, so float32 must turn it off."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@torch.no_grad()
def embed_all(
    model: Classifier, images: torch.Tensor, batch: int = 256, views=None
) -> torch.Tensor:
    """Features of uint8 images in large batches, optionally through an augmentation."""
    out = []
    for start in range(0, len(images), batch):
        x = images[start : start + batch]
        x = views(x) if views is not None else x.float() / 255.0
        out.append(model.embed(x))
    if not out:
        return torch.zeros(0, model.backbone.dim, device=images.device)
    return torch.cat(out)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    batch: int = 512,
    features: torch.Tensor | None = None,
    samples: int | None = None,
    generator: torch.Generator | None = None,
    absent: str = "skip",
) -> dict[str, float]:
    """Metrics over every evaluation image exactly once, or `samples` draws with replacement."""
    index = torch.arange(len(labels))
    if samples:
        index = torch.randint(len(labels), (samples,), generator=generator)
    was_training = model.training
    model.eval()
    logits = []
    for start in range(0, len(index), batch):
        idx = index[start : start + batch].to(labels.device)
        if features is not None:
            logits.append(model.head(features[idx]))
        else:
            logits.append(model(images[idx].float() / 255.0))
    model.train(was_training)
    return metrics_from_logits(
        torch.cat(logits), labels[index.to(labels.device)], num_classes, absent
    )


def changes_in_training(module: torch.nn.Module) -> bool:
    """Whether training mode changes what a module computes: BatchNorm (batch statistics,
    running statistics updated) or dropout with p > 0."""
    return any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        or (isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0)
        for m in module.modules()
    )


def _set_mode(model: Classifier, bn_mode: str) -> None:
    """Training mode for the steps, as the original's `model.train()` (train_classifier.py
    l. 171), but a frozen backbone in eval mode with `bn_mode: eval`. `evaluate` switches to
    eval mode, as the original's `model.eval()` (l. 210)."""
    model.train()
    if model.backbone.frozen and bn_mode == "eval":
        model.features.eval()


def train_classifier(
    train_manifest: pd.DataFrame,
    val_manifest: pd.DataFrame,
    class_names: Sequence[str],
    synthetic_index: pd.DataFrame | None,
    synthetic_images: dict[str, tuple[bytes, int]] | None,
    settings: ClassifierSettings,
    seed: int,
    device: torch.device,
    progress: bool = True,
    test_manifest: pd.DataFrame | None = None,
    head_path: str | Path | None = None,
) -> pd.DataFrame:
    """Train one classifier; returns metrics per evaluation step (step, split, metric, value).

    With `head_path`, also writes what the run trained, as it is after the last step
    (`save_head`)."""
    torch.manual_seed(seed)
    num_classes = len(class_names)
    size = settings.image_size

    def decode(frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        images = to_uint8([load_image(r) for r in frame.to_dict("records")], size).to(device)
        labels = torch.tensor(frame["label"].tolist(), dtype=torch.long, device=device)
        return images, labels

    real, real_labels = decode(train_manifest)
    splits = {"val": decode(val_manifest)}
    if test_manifest is not None and len(test_manifest):
        splits["test"] = decode(test_manifest)
    if synthetic_index is not None and len(synthetic_index):
        raw = [Image.open(io.BytesIO(synthetic_images[k][0])) for k in synthetic_index["key"]]
        synthetic = to_uint8(raw, size).to(device)
        variants = VariantTable(synthetic_lookup(train_manifest["key"].tolist(), synthetic_index))
        alpha = settings.synthetic_probability
    else:
        synthetic = real[:0]
        variants = VariantTable([torch.zeros(0, dtype=torch.long)] * len(real))
        alpha = 0.0
    backbone = build_backbone(settings.backbone, settings.weights, settings.pretrained)
    model = Classifier(backbone, num_classes, settings.normalization, settings.precision)
    model = model.to(device)
    # A frozen backbone whose training mode changes nothing (eval-mode BatchNorm, or none)
    # gives each image the same features at every step and evaluation: the evaluation images
    # are embedded once, and feature_cache can cache views. CutMix mixes pixels, so with it
    # the backbone runs on every batch.
    fixed = backbone.frozen and (
        settings.bn_mode == "eval" or not changes_in_training(model.features)
    )
    cached = settings.feature_cache and settings.augmentation != "cutmix" and fixed
    generator = torch.Generator().manual_seed(seed)
    augmenter = Augmenter(settings, generator)
    data = TrainingSet(real, real_labels, synthetic, variants, alpha, augmenter, generator)
    mix: SampleCutMix | BatchCutMix | None = None
    if settings.augmentation == "cutmix" and settings.cutmix_mode == "sample":
        mix = SampleCutMix(data, num_classes, generator)  # partners drawn as any example
    elif settings.augmentation == "cutmix":
        mix = BatchCutMix(num_classes, generator)
    _set_mode(model, settings.bn_mode)
    params = model.head.parameters() if backbone.frozen else model.parameters()
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    if cached:
        # K augmented views of every real and synthetic image, embedded once.
        views = torch.stack(
            [embed_all(model, data.pool, views=augmenter) for _ in range(settings.cache_views)]
        )
    if fixed:
        eval_features = {name: embed_all(model, images) for name, (images, _) in splits.items()}
    eval_generator = torch.Generator().manual_seed(seed + 1)
    rows = []
    bar = tqdm(range(1, settings.steps + 1), desc="classifier", disable=not progress)
    for step in bar:
        if cached:
            idx, labels = data.indices(settings.batch_size)
            view = to_device(
                torch.randint(settings.cache_views, (len(idx),), generator=generator), device
            )
            logits = model.head(views[view, idx])
            targets = F.one_hot(labels, num_classes).float()
        else:
            x, labels = data(settings.batch_size)
            if mix is None:
                targets = F.one_hot(labels, num_classes).float()
            else:
                x, targets = mix(x, labels)
            logits = model(x)
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % settings.eval_interval == 0 or step == settings.steps:
            for name, (images, labels_) in splits.items():
                metrics = evaluate(
                    model, images, labels_, num_classes,
                    features=eval_features[name] if fixed else None,
                    samples=settings.eval_samples, generator=eval_generator,
                    absent=settings.absent_classes,
                )  # fmt: skip
                _set_mode(model, settings.bn_mode)
                for metric, value in metrics.items():
                    if metric.startswith("accuracy/"):
                        metric = f"accuracy/{class_names[int(metric.split('/')[1])]}"
                    rows.append({"step": step, "split": name, "metric": metric, "value": value})
                if name == "val":
                    bar.set_postfix(loss=f"{loss.item():.3f}", val_acc=f"{metrics['accuracy']:.3f}")
    if head_path is not None:
        save_head(model, head_path, settings, class_names)
    return pd.DataFrame(rows)


# The metadata key of a saved classifier (`save_head`): how to rebuild it, as JSON.
HEAD_KEY = "dafusion.classifier"


def trained_state(model: Classifier) -> dict[str, torch.Tensor]:
    """What a run trains, on the CPU in the plain layout: the head; every parameter of a
    backbone trained end to end (`small-cnn`), not those of a frozen one, which its
    pretrained weights give back; and every buffer (the input normalization, and BatchNorm's
    running statistics, which training mode updates even in a frozen backbone)."""
    frozen = {f"features.{name}" for name, _ in model.features.named_parameters()}
    frozen = frozen if model.backbone.frozen else set()
    return {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in model.state_dict().items()
        if name not in frozen
    }


def save_head(
    model: Classifier, path: str | Path, settings: ClassifierSettings, class_names: Sequence[str]
) -> None:
    """Write `trained_state` as safetensors, atomically, with what `load_classifier` needs
    to rebuild the classifier: the backbone and its weights, the input normalization and
    size, the arithmetic, the class names (by label)."""
    from safetensors.torch import save_file

    recipe = {
        "backbone": settings.backbone,
        "weights": settings.weights,
        "pretrained": settings.pretrained,
        "normalization": settings.normalization,
        "precision": settings.precision,
        "image_size": settings.image_size,
        "class_names": list(class_names),
    }
    with atomic_path(path) as tmp:
        save_file(trained_state(model), str(tmp), metadata={HEAD_KEY: json.dumps(recipe)})


@dataclass
class SavedClassifier:
    """A classifier rebuilt from `save_head`'s file (in eval mode), its class names by label
    and the image size it was trained at."""

    model: Classifier
    class_names: list[str]
    image_size: int

    @torch.no_grad()
    def logits(self, images: Sequence[Image.Image], batch: int = 256) -> torch.Tensor:
        """Logits [N, C] of RGB images, resized and scaled as the run's training images
        (`to_uint8`, then [0, 1]); on the CPU."""
        device = self.model.head.weight.device
        out = [torch.zeros(0, len(self.class_names))]
        for start in range(0, len(images), batch):
            x = to_uint8(images[start : start + batch], self.image_size).to(device)
            out.append(self.model(x.float() / 255.0).float().cpu())
        return torch.cat(out)


def load_classifier(
    path: str | Path, device: torch.device | str = "cpu", weights: str | None = None
) -> SavedClassifier:
    """Rebuild the classifier a run saved (`save_head`): its backbone (a frozen one from its
    pretrained weights, read as the run read them, or from `weights` when given), then the
    saved state. Raises if the file does not fit the backbone it names."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if HEAD_KEY not in metadata:
        raise ValueError(f"{path} is not a classifier saved by a classifier run (no '{HEAD_KEY}')")
    recipe = json.loads(metadata[HEAD_KEY])
    backbone = build_backbone(
        recipe["backbone"], weights or recipe["weights"], recipe["pretrained"]
    )
    names = list(recipe["class_names"])
    model = Classifier(backbone, len(names), recipe["normalization"], recipe["precision"])
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = {f"features.{n}" for n, _ in model.features.named_parameters()}
    frozen = frozen if backbone.frozen else set()
    if set(missing) - frozen or unexpected:
        raise ValueError(
            f"{path} does not fit a {recipe['backbone']} classifier of {len(names)} classes "
            f"(missing {sorted(set(missing) - frozen)[:3]}, unexpected {unexpected[:3]})"
        )
    return SavedClassifier(model.to(device).eval(), names, int(recipe["image_size"]))
