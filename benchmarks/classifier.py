"""This project's classifier stage against the original DA-Fusion training loop.

One (method, seed, shots) run, the same data both ways: few-shot digits with M synthetic
variants per real image (noisy copies stand in for SDEdit outputs: the cost is the same),
a frozen ResNet-50 (random weights offline; the cost is the pretrained one's) and a linear
head trained with Adam.

- original: PIL decode and torchvision transforms per draw in a DataLoader with 4 workers,
  the backbone forward every step (BatchNorm in training mode, as the original), and 6,400
  validation draws with replacement per evaluation.
- this stage (its defaults): images decoded once, a fresh augmentation of every batch on
  the device and the backbone forward every step (as the paper), the whole validation split
  evaluated once per evaluation.

`--compare-cache` instead runs this stage twice with the same configuration, `--seeds`
seeds each: a fresh augmentation every step (the default, the paper's) against
`feature_cache: true` (the features of `cache_views` augmented views of every image computed
once, the head trained on those fixed views), and prints the time, the mean best validation
accuracy of both, the time ratio and the accuracy difference.

Usage:
    python benchmarks/classifier.py                      # CPU, embedded scale (32 px)
    python benchmarks/classifier.py --classes 20 --image-size 256 --steps 10000  # GPU, paper scale
    python benchmarks/classifier.py --compare-cache --seeds 3   # fresh views vs feature cache
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from dafusion.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from dafusion.classifier import train_classifier
from dafusion.datasets import few_shot, read_dataset
from dafusion.devices import resolve_device
from dafusion.images import encode_png, load_image
from dafusion.settings import ClassifierSettings, DatasetSettings


def blob_dataset(classes: int, shots: int, per_class_val: int, size: int):
    """`classes` classes of coloured noise (for class counts digits does not have)."""
    rng = np.random.default_rng(0)
    rows = []
    for c in range(classes):
        color = rng.integers(0, 256, 3)
        for i in range(shots + per_class_val):
            pixels = np.clip(color + rng.normal(0, 60, (size, size, 3)), 0, 255).astype(np.uint8)
            rows.append(
                {
                    "key": f"blob-{c:02d}-{i:03d}",
                    "image": encode_png(Image.fromarray(pixels)),
                    "label": c,
                    "class_name": f"class{c}",
                    "split": "train" if i < shots else "val",
                }
            )
    frame = pd.DataFrame(rows)
    return frame[frame["split"] == "train"].reset_index(drop=True), frame[
        frame["split"] == "val"
    ].reset_index(drop=True)


def synthetic_set(split: pd.DataFrame, m: int) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(0)
    rows, images = [], {}
    for row in split.to_dict("records"):
        base = np.asarray(load_image(row), dtype=np.float32)
        for j in range(m):
            noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
            key = f"{row['key']}-{j:03d}"
            images[key] = (encode_png(Image.fromarray(noisy)), row["label"])
            rows.append({"key": key, "source_key": row["key"], "label": row["label"]})
    return pd.DataFrame(rows), images


class OriginalTrainSet(torch.utils.data.Dataset):
    """Eq. 6-7 per draw, decoding PNG bytes with PIL every time (the original's dataset)."""

    def __init__(self, real, synthetic, alpha, size, draws):
        self.real = real  # list of (bytes, label)
        self.synthetic = synthetic  # per real image, list of bytes
        self.alpha, self.draws = alpha, draws
        self.transform = transforms.Compose([
            transforms.Resize((size, size)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomRotation(15),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])  # fmt: skip

    def __len__(self):
        return self.draws

    def __getitem__(self, item):
        rng = np.random.default_rng(item)
        i = rng.integers(len(self.real))
        data, label = self.real[i]
        if rng.random() < self.alpha and self.synthetic[i]:
            data = self.synthetic[i][rng.integers(len(self.synthetic[i]))]
        return self.transform(Image.open(io.BytesIO(data)).convert("RGB")), label


class OriginalValSet(torch.utils.data.Dataset):
    def __init__(self, items, size):
        self.items = items
        self.transform = transforms.Compose([
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])  # fmt: skip

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        data, label = self.items[i]
        return self.transform(Image.open(io.BytesIO(data)).convert("RGB")), label


def original(split, val, index, images, args, device) -> float:
    torch.manual_seed(0)
    backbone = build_backbone("resnet50", pretrained=False)
    net = backbone.module.to(device).requires_grad_(False)
    net.train(args.original_bn == "train")  # train: BN statistics drift, as the original
    head = torch.nn.Linear(backbone.dim, split["label"].nunique()).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=args.lr)
    real = [(encode_png(load_image(r)), r["label"]) for r in split.to_dict("records")]
    by_source = index.groupby("source_key")["key"].apply(list).to_dict()
    synthetic = [[images[k][0] for k in by_source.get(key, [])] for key in split["key"]]
    loader = torch.utils.data.DataLoader(
        OriginalTrainSet(real, synthetic, 0.5, args.image_size, args.steps * args.batch_size),
        batch_size=args.batch_size, num_workers=4,
    )  # fmt: skip
    val_items = [(encode_png(load_image(r)), r["label"]) for r in val.to_dict("records")]
    sampler = torch.utils.data.RandomSampler(range(len(val_items)), True, 6400)
    best = 0.0
    for step, (x, y) in enumerate(loader, start=1):
        loss = F.cross_entropy(head(net(x.to(device))), y.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.eval_interval == 0:
            correct = 0
            val_loader = torch.utils.data.DataLoader(
                OriginalValSet(val_items, args.image_size), batch_size=args.batch_size,
                sampler=sampler, num_workers=4,
            )  # fmt: skip
            with torch.no_grad():
                for vx, vy in val_loader:
                    correct += (head(net(vx.to(device))).argmax(1).cpu() == vy).sum().item()
            best = max(best, correct / 6400)
    return best


def ours(split, val, index, images, args, device, seed=0, **overrides) -> float:
    settings = ClassifierSettings(
        backbone="resnet50", pretrained=False, image_size=args.image_size, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, eval_interval=args.eval_interval,
    ).replace(**overrides)  # fmt: skip
    names = [str(c) for c in range(split["label"].nunique())]
    metrics = train_classifier(split, val, names, index, images, settings, seed, device,
                               progress=False)  # fmt: skip
    return metrics[(metrics["split"] == "val") & (metrics["metric"] == "accuracy")]["value"].max()


def compare_cache(split, val, index, images, args, device) -> None:
    """The same configuration with a fresh augmentation every step and with the cache.

    The two sides alternate seed by seed, so that a change in the machine's load falls on
    both alike.
    """
    sides = {
        "fresh": {"feature_cache": False},
        "cache": {"feature_cache": True, "cache_views": args.cache_views},
    }
    times = {name: [] for name in sides}
    accs = {name: [] for name in sides}
    for seed in range(args.seeds):
        for name, overrides in sides.items():
            start = time.perf_counter()
            accs[name].append(ours(split, val, index, images, args, device, seed, **overrides))
            times[name].append(time.perf_counter() - start)
    seconds = {name: float(np.mean(t)) for name, t in times.items()}
    accuracy = {name: float(np.mean(a)) for name, a in accs.items()}
    for name in sides:
        print(
            f"{name:>6}: {seconds[name]:8.1f} s per run, best val accuracy {accuracy[name]:.3f} "
            f"(mean of {args.seeds} seeds: " + ", ".join(f"{a:.3f}" for a in accs[name]) + ")"
        )
    print(
        f" ratio: {seconds['fresh'] / seconds['cache']:8.1f}x time (fresh / cache), "
        f"accuracy {accuracy['cache'] - accuracy['fresh']:+.3f} (cache - fresh)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--classes",
        type=int,
        default=10,
        help="10: scikit-learn's digits; any other number: classes of coloured noise",
    )
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--num-synthetic", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-interval", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--original-bn",
        choices=["train", "eval"],
        default="train",
        help="BatchNorm mode of the original loop: train (faithful) or eval (same as this stage, "
        "to compare accuracies under one protocol)",
    )
    parser.add_argument(
        "--compare-cache",
        action="store_true",
        help="this stage only: a fresh augmentation every step (default) vs feature_cache: true",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per side of --compare-cache")
    parser.add_argument(
        "--cache-views", type=int, default=8, help="cache_views for --compare-cache"
    )
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.classes == 10:
        pool, val, _ = read_dataset(DatasetSettings(kind="digits", image_size=32))
        split = few_shot(pool, 0, args.shots)
    else:
        split, val = blob_dataset(args.classes, args.shots, 20, args.image_size)
    index, images = synthetic_set(split, args.num_synthetic)
    print(
        f"device={device} backbone=resnet50 (frozen) classes={args.classes} "
        f"image_size={args.image_size} "
        f"shots={args.shots} M={args.num_synthetic} steps={args.steps} "
        f"eval_interval={args.eval_interval} val={len(val)} original_bn={args.original_bn} "
        f"torch.threads={torch.get_num_threads()}"
    )
    if args.compare_cache:
        compare_cache(split, val, index, images, args, device)
        return
    results = {}
    for name, fn in (("this stage", ours), ("original", original)):
        start = time.perf_counter()
        accuracy = fn(split, val, index, images, args, device)
        results[name] = time.perf_counter() - start
        print(f"{name:>11}: {results[name]:8.1f} s, best val accuracy {accuracy:.3f}")
    print(
        f"      ratio: {results['original'] / results['this stage']:8.1f}x (original / this stage)"
    )


if __name__ == "__main__":
    main()
