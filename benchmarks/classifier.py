"""This project's classifier stage against the original loop and a plain DataLoader loop.

One (method, seed, shots) run, the same data every way: few-shot digits with M synthetic
variants per real image (noisy copies stand in for SDEdit outputs: the cost is the same),
a frozen ResNet-50 (random weights offline; the cost is the pretrained one's) and a linear
head trained with Adam for the same steps, batch and learning rate.

- original: PIL decode and torchvision transforms per draw in a DataLoader with 4 workers,
  the backbone forward every step (BatchNorm in training mode, as the original), and 6,400
  validation draws with replacement per evaluation. One run (seed 0).
- dataloader (the strongest plain-library loop we could write): images decoded and resized
  once into PIL images; per item the eq. 6-7 draw (a RandomSampler with replacement picks
  the real image, which is swapped with probability alpha for one of its variants) and
  RandomHorizontalFlip, RandomRotation(15), ToTensor, Normalize; a DataLoader with each
  worker count of `--loader-workers` (persistent workers; pinned memory on CUDA), the frozen
  backbone in eval mode under `no_grad` every step, the whole validation split once per
  evaluation in batches of 512. The fastest worker count is the one compared.
- this stage (its defaults): images decoded once as uint8 tensors on the device, a fresh
  augmentation of every batch there (one flip and one grid_sample for the batch) and the
  backbone forward every step (as the paper), the whole validation split once per evaluation.

The dataloader loop and this stage run the same backbone passes (same weights, same head
initialization for a seed, same evaluations), so their time ratio is what removing the
loader and the per-image work saves. `--seeds N` runs both N seeds (the sides alternate seed
by seed, so a change in the machine's load falls on both alike) and prints the mean and
standard deviation of the best validation accuracy. On a GPU it also prints the backbone's
achieved TFLOP/s (its FLOPs counted by torch's FlopCounterMode) as a fraction of the bf16
matmul peak measured on the spot (the backbone itself runs in float32).

`--compare-precision` instead runs this stage at each `classifier.precision` and prints
its seconds per step (with `--costs`, written to a costs file for `dafusion.workflow.estimate`).

`--compare-cache` instead runs this stage twice with the same configuration, `--seeds`
seeds each: a fresh augmentation every step (the default, the paper's) against
`feature_cache: true` (the features of `cache_views` augmented views of every image computed
once, the head trained on those fixed views), and prints the time, the mean best validation
accuracy of both, the time ratio and the accuracy difference.

Usage:
    python benchmarks/classifier.py                      # CPU, embedded scale (32 px)
    python benchmarks/classifier.py --seeds 3            # accuracy within noise over 3 seeds
    python benchmarks/classifier.py --full-size          # GPU: 20 classes, 256 px, 1,000 steps
    python benchmarks/classifier.py --full-size --steps 10000   # the paper's steps
    python benchmarks/classifier.py --compare-cache --seeds 3   # fresh views vs feature cache
    python benchmarks/classifier.py --full-size --compare-precision   # float32, tf32, bf16
"""

from __future__ import annotations

import argparse
import io
import resource
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from common import device_name, matmul_peak_tflops, record_cost, sync
from PIL import Image
from torchvision import transforms

from dafusion.data.datasets import few_shot, read_dataset
from dafusion.data.images import encode_png, load_image
from dafusion.jobs.devices import resolve_device
from dafusion.settings import ClassifierSettings, DatasetSettings
from dafusion.stages.backbones import ORIGINAL_MEAN, ORIGINAL_STD, build_backbone
from dafusion.stages.classifier import train_classifier

ORIGINAL_DRAWS = 6400  # the original's validation draws (with replacement) per evaluation
EVAL_BATCH = 512  # this stage's evaluation batch (dafusion.stages.classifier.evaluate)
# --full-size: the paper's classifier (20 classes here, 256 px); its 10,000 steps with --steps
FULL_SIZE = {"classes": 20, "image_size": 256, "steps": 1000, "eval_interval": 200}
EMBEDDED = {"classes": 10, "image_size": 32, "steps": 1000, "eval_interval": 200}


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
            transforms.Normalize(ORIGINAL_MEAN, ORIGINAL_STD),
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
            transforms.Normalize(ORIGINAL_MEAN, ORIGINAL_STD),
        ])  # fmt: skip

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        data, label = self.items[i]
        return self.transform(Image.open(io.BytesIO(data)).convert("RGB")), label


def original(split, val, index, images, args, device, seed=0) -> float:
    torch.manual_seed(seed)
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
    sampler = torch.utils.data.RandomSampler(range(len(val_items)), True, ORIGINAL_DRAWS)
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
            best = max(best, correct / ORIGINAL_DRAWS)
    return best


class PlainTrainSet(torch.utils.data.Dataset):
    """Images decoded once; an item is real image i, swapped with prob. alpha (eq. 6-7)."""

    def __init__(self, real, labels, variants, alpha, transform):
        self.real, self.labels, self.variants = real, labels, variants
        self.alpha, self.transform = alpha, transform

    def __len__(self):
        return len(self.real)

    def __getitem__(self, i):
        image, options = self.real[i], self.variants[i]
        if options and float(torch.rand(())) < self.alpha:
            image = options[int(torch.randint(len(options), ()))]
        return self.transform(image), self.labels[i]


class PlainValSet(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def decoded(images, size):
    """Decode once and resize once, as this stage does (bilinear to size x size)."""
    return [im.convert("RGB").resize((size, size), Image.BILINEAR) for im in images]


def dataloader(split, val, index, images, args, device, seed=0, workers=0) -> float:
    """The strongest plain PyTorch loop we could write for the same work (module docstring)."""
    torch.manual_seed(seed)  # as train_classifier: the same backbone and head initialization
    backbone = build_backbone("resnet50", pretrained=False)
    net = backbone.module.to(device).eval().requires_grad_(False)
    head = torch.nn.Linear(backbone.dim, split["label"].nunique()).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=args.lr)
    size = args.image_size
    normalize = transforms.Normalize(ORIGINAL_MEAN, ORIGINAL_STD)
    train_tf = transforms.Compose([
        transforms.RandomHorizontalFlip(), transforms.RandomRotation(15),
        transforms.ToTensor(), normalize,
    ])  # fmt: skip
    val_tf = transforms.Compose([transforms.ToTensor(), normalize])
    real = decoded([load_image(r) for r in split.to_dict("records")], size)
    by_source = index.groupby("source_key")["key"].apply(list).to_dict()
    variants = [
        decoded([Image.open(io.BytesIO(images[k][0])) for k in by_source.get(key, [])], size)
        for key in split["key"]
    ]
    train_set = PlainTrainSet(real, split["label"].tolist(), variants, 0.5, train_tf)
    val_images = decoded([load_image(r) for r in val.to_dict("records")], size)
    val_set = PlainValSet(val_images, val["label"].tolist(), val_tf)
    common = {
        "num_workers": workers, "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
    }  # fmt: skip
    sampler = torch.utils.data.RandomSampler(
        train_set, replacement=True, num_samples=args.steps * args.batch_size,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.batch_size, sampler=sampler, **common
    )
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=EVAL_BATCH, **common)
    best = 0.0
    for step, (x, y) in enumerate(loader, start=1):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.no_grad():
            features = net(x)
        loss = F.cross_entropy(head(features), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.eval_interval == 0 or step == args.steps:
            correct = torch.zeros((), dtype=torch.long, device=device)
            with torch.no_grad():
                for vx, vy in val_loader:
                    logits = head(net(vx.to(device, non_blocking=True)))
                    correct += (logits.argmax(1) == vy.to(device, non_blocking=True)).sum()
            best = max(best, correct.item() / len(val_set))
    return best


def ours(split, val, index, images, args, device, seed=0, **overrides) -> float:
    settings = ClassifierSettings(
        backbone="resnet50", pretrained=False, image_size=args.image_size, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, eval_interval=args.eval_interval,
        bn_mode="eval",  # as the reference loops run the backbone (their feature cache)
    ).replace(**overrides)  # fmt: skip
    names = [str(c) for c in range(split["label"].nunique())]
    metrics = train_classifier(split, val, names, index, images, settings, seed, device,
                               progress=False)  # fmt: skip
    return metrics[(metrics["split"] == "val") & (metrics["metric"] == "accuracy")]["value"].max()


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn, *args, **kwargs) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, result) of one run, device work included."""
    device = args[5]
    sync(device)
    start, cpu = time.perf_counter(), cpu_seconds()
    result = fn(*args, **kwargs)
    sync(device)
    return time.perf_counter() - start, cpu_seconds() - cpu, result


def spread(values) -> str:
    values = np.asarray(values, dtype=float)
    sd = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.3f} ± {sd:.3f}"


def backbone_gflop(size: int, device: torch.device) -> float:
    """GFLOP of one ResNet-50 forward of one size x size image (torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = build_backbone("resnet50", pretrained=False).module.to(device).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(1, 3, size, size, device=device))
    return counter.get_total_flops() / 1e9


def compare(split, val, index, images, args, device) -> None:
    """The original once, then the dataloader loop and this stage `--seeds` seeds each.

    Seed 0 runs every worker count of `--loader-workers`; the fastest runs the other seeds.
    """
    seconds, cpu, accs = {}, {}, {}

    def record(name, fn, seed, **kwargs):
        t, c, acc = timed(fn, split, val, index, images, args, device, seed, **kwargs)
        seconds.setdefault(name, []).append(t)
        cpu.setdefault(name, []).append(c)
        accs.setdefault(name, []).append(acc)
        print(
            f"  seed {seed} {name:>24}: {t:8.1f} s ({c:.1f} CPU s), best val accuracy {acc:.3f}",
            flush=True,
        )

    workers = list(dict.fromkeys(args.loader_workers))
    best_workers = workers[0]
    for seed in range(args.seeds):
        counts = workers if seed == 0 else [best_workers]
        sides = [("this stage", ours, {})] + [
            (f"dataloader ({w} workers)", dataloader, {"workers": w}) for w in counts
        ]
        if seed % 2:  # alternate the order, so a drift in the machine's load falls on both
            sides.reverse()
        for name, fn, kwargs in sides:
            record(name, fn, seed, **kwargs)
        if seed == 0:
            best_workers = min(workers, key=lambda w: seconds[f"dataloader ({w} workers)"][0])
            if not args.skip_original:
                record("original", original, 0)
    plain = f"dataloader ({best_workers} workers)"
    print("summary (mean over seeds; accuracy mean ± sd):")
    for name in [n for n in ("original", plain, "this stage") if n in seconds]:
        print(
            f"{name:>24}: {np.mean(seconds[name]):8.1f} s ({np.mean(cpu[name]):.1f} CPU s), "
            f"best val accuracy "
            f"{spread(accs[name])} ({len(accs[name])} seeds)"
        )
    ours_s = np.mean(seconds["this stage"])
    if "original" in seconds:
        print(f"{'ratio':>24}: {seconds['original'][0] / ours_s:8.2f}x (original / this stage)")
    print(
        f"{'ratio':>24}: {np.mean(seconds[plain]) / ours_s:8.2f}x "
        f"({plain} / this stage, the fastest worker count of {workers}; CPU time "
        f"{np.mean(cpu[plain]) / np.mean(cpu['this stage']):.2f}x)"
    )
    diff = np.mean(accs["this stage"]) - np.mean(accs[plain])
    print(f"{'accuracy':>24}: {diff:+.3f} (this stage - {plain})")
    if device.type == "cuda":
        peak = matmul_peak_tflops(device)
        gflop = backbone_gflop(args.image_size, device)
        evals = len([s for s in range(1, args.steps + 1) if s % args.eval_interval == 0])
        evals_ours = evals + (args.steps % args.eval_interval != 0)
        train = args.steps * args.batch_size
        work = {
            "original": train + evals * ORIGINAL_DRAWS,
            plain: train + evals_ours * len(val),
            "this stage": train + evals_ours * len(val),
        }
        print(
            f"{'bf16 matmul peak':>24}: {peak:7.1f} TFLOP/s (8192^3, measured now); "
            f"backbone {gflop:.2f} GFLOP per {args.image_size} px image"
        )
        for name in [n for n in work if n in seconds]:
            tflops = work[name] * gflop / 1e3 / np.mean(seconds[name])
            print(
                f"{name:>24}: {tflops:7.2f} TFLOP/s of backbone work "
                f"= {tflops / peak:6.2%} of the measured peak"
            )


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


def compare_precision(split, val, index, images, args, device) -> None:
    """This stage at each `--precisions` (classifier.precision), `--seeds` runs each after
    one untimed short run: seconds per step (evaluations included, the evaluation images
    embedded once per run), best val accuracy and, on a GPU, the backbone's TFLOP/s."""
    ours(split, val, index, images, args, device, 0, steps=args.eval_interval)
    gflop = backbone_gflop(args.image_size, device) if device.type == "cuda" else None
    backbone_images = args.steps * args.batch_size + len(val)
    for precision in args.precisions:
        runs = [
            timed(ours, split, val, index, images, args, device, seed, precision=precision)
            for seed in range(args.seeds)
        ]
        seconds = float(np.mean([r[0] for r in runs]))
        accs = [float(r[2]) for r in runs]
        print(
            f"{precision:>8}: {seconds:8.1f} s per run, best val accuracy {spread(accs)} "
            f"({args.seeds} seeds)",
            flush=True,
        )
        record_cost(
            args.costs, "train" if precision == "float32" else f"train_{precision}",
            seconds / args.steps,
            f"{device_name(device)}, `classifier.py --compare-precision`, {args.classes} "
            f"classes, {args.image_size} px: {args.steps} steps in {seconds:.1f} s",
            backbone_images * gflop / 1e3 / seconds if gflop else None,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--full-size",
        action="store_true",
        help="the paper's scale: 20 classes of coloured noise at 256 px, 1,000 steps "
        "(a subset of the paper's 10,000; pass --steps 10000 for all)",
    )
    parser.add_argument(
        "--classes",
        type=int,
        help="10 (default): scikit-learn's digits; any other number: classes of coloured noise",
    )
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--num-synthetic", type=int, default=2)
    parser.add_argument("--image-size", type=int, help="32 (256 with --full-size)")
    parser.add_argument("--steps", type=int, help="1000")
    parser.add_argument("--eval-interval", type=int, help="200")
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
        "--loader-workers",
        type=int,
        nargs="+",
        default=[0, 2],
        help="DataLoader worker counts of the dataloader loop, each timed on seed 0; the "
        "fastest is compared (and runs the other seeds)",
    )
    parser.add_argument(
        "--skip-original", action="store_true", help="leave out the original loop (slow)"
    )
    parser.add_argument(
        "--compare-cache",
        action="store_true",
        help="this stage only: a fresh augmentation every step (default) vs feature_cache: true",
    )
    parser.add_argument(
        "--seeds", type=int, help="seeds per side (default 1; 3 with --compare-cache)"
    )
    parser.add_argument(
        "--cache-views", type=int, default=8, help="cache_views for --compare-cache"
    )
    parser.add_argument(
        "--compare-precision",
        action="store_true",
        help="this stage only, at each of --precisions (classifier.precision)",
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["float32", "tf32", "bf16"],
        help="for --compare-precision",
    )
    parser.add_argument("--costs", help="costs file to add --compare-precision's per-step costs to")
    args = parser.parse_args()
    for key, value in (FULL_SIZE if args.full_size else EMBEDDED).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.seeds is None:
        args.seeds = 3 if args.compare_cache else 1
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
        f"batch={args.batch_size} eval_interval={args.eval_interval} val={len(val)} "
        f"seeds={args.seeds} original_bn={args.original_bn} "
        f"torch.threads={torch.get_num_threads()}",
        flush=True,
    )
    if args.compare_precision:
        compare_precision(split, val, index, images, args, device)
    elif args.compare_cache:
        compare_cache(split, val, index, images, args, device)
    else:
        compare(split, val, index, images, args, device)


if __name__ == "__main__":
    main()
