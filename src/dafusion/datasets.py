"""Dataset readers: turn data on disk (or the embedded digits) into manifest tables.

A manifest is a parquet table with columns `key` (stable, no dots), `path` or `image`
(PNG bytes), `label`, `class_name` and `split`. Readers produce the full training pool
and the evaluation split once per dataset; few-shot subsets are drawn from the pool.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
MANIFEST_COLUMNS = ["key", "path", "image", "label", "class_name", "split"]
# The evaluation split of datasets without one is drawn with this fixed seed, independent
# of the experiment seeds, so every seed is evaluated on the same images.
VAL_SPLIT_SEED = 20240


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def load_image(row: Mapping) -> Image.Image:
    """Open a manifest row's image as RGB, with EXIF orientation applied."""
    data = row.get("image")
    if data is not None and not (isinstance(data, float) and np.isnan(data)):
        image = Image.open(io.BytesIO(data))
    else:
        try:
            image = Image.open(row["path"])
        except (OSError, FileNotFoundError) as exc:
            raise OSError(f"cannot read image '{row['path']}' (key {row['key']}): {exc}") from exc
    image = ImageOps.exif_transpose(image)
    return image.convert("RGB")


def sanitize_key(text: str) -> str:
    """Make a WebDataset-safe key: the reader splits extensions at the first dot."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)


def _manifest(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for col in MANIFEST_COLUMNS:
        if col not in frame:
            frame[col] = None
    frame = frame[MANIFEST_COLUMNS]
    frame["label"] = frame["label"].astype("int64")
    return frame


def _hold_out(pool: pd.DataFrame, fraction: float, per_class: int | None) -> pd.DataFrame:
    """Split a pool into train/val per class with a fixed seed; returns it with `split` set."""
    rng = np.random.default_rng(VAL_SPLIT_SEED)
    parts = []
    for _, group in pool.groupby("label", sort=True):
        order = rng.permutation(len(group))
        n_val = max(1, int(np.ceil(fraction * len(group))))
        if n_val >= len(group):
            raise ValueError(
                f"class '{group['class_name'].iloc[0]}' has {len(group)} images: too few to "
                "hold out an evaluation split; add images or lower val_fraction"
            )
        group = group.iloc[order].copy()
        group["split"] = "train"
        val_idx = group.index[:n_val]
        if per_class is not None:
            val_idx = val_idx[:per_class]
        group.loc[val_idx, "split"] = "val"
        group = group[(group["split"] == "train") | group.index.isin(val_idx)]
        parts.append(group)
    return pd.concat(parts).sort_values("key").reset_index(drop=True)


def read_digits(spec: Mapping, base_dir: Path) -> pd.DataFrame:
    """scikit-learn's bundled 8x8 handwritten digits as RGB PNGs (ink dark on white)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    size = spec.get("image_size", 32)
    rows = []
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        gray = (255 - pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(gray, mode="L").resize((size, size), Image.BILINEAR)
        rows.append(
            {
                "key": f"digits-{index:04d}",
                "image": encode_png(image.convert("RGB")),
                "label": int(label),
                "class_name": DIGIT_NAMES[int(label)],
            }
        )
    pool = _manifest(rows)
    return _hold_out(pool, spec.get("val_fraction", 0.2), spec.get("val_per_class"))


def _list_class_folders(root: Path) -> dict[str, list[Path]]:
    classes = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(
            p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if files:
            classes[folder.name] = files
    if not classes:
        raise ValueError(
            f"no class folders with images under '{root}'; expected root/<class>/*.jpg"
        )
    return classes


def read_imagefolder(spec: Mapping, base_dir: Path) -> pd.DataFrame:
    """Images in `root/<class>/*`, or `root/train/<class>/*` with `root/val/<class>/*`."""
    root = Path(base_dir, spec["root"])
    has_splits = (root / "train").is_dir()
    train_classes = _list_class_folders(root / "train" if has_splits else root)
    names = sorted(train_classes)
    labels = {name: i for i, name in enumerate(names)}

    def rows_for(classes: dict[str, list[Path]], split: str) -> list[dict]:
        rows = []
        for name, files in classes.items():
            if name not in labels:
                raise ValueError(f"class folder '{name}' of the {split} split is not in train")
            for path in files:
                rel = path.relative_to(root)
                rows.append(
                    {
                        "key": sanitize_key(str(rel.with_suffix(""))),
                        "path": str(path.resolve()),
                        "label": labels[name],
                        "class_name": name.replace("_", " "),
                        "split": split,
                    }
                )
        return rows

    if has_splits and (root / "val").is_dir():
        val_rows = rows_for(_list_class_folders(root / "val"), "val")
        frame = _manifest(rows_for(train_classes, "train") + val_rows)
    else:
        frame = _hold_out(
            _manifest(rows_for(train_classes, "train")),
            spec.get("val_fraction", 0.2),
            spec.get("val_per_class"),
        )
    duplicated = frame["key"][frame["key"].duplicated()]
    if len(duplicated):
        raise ValueError(
            f"image files under '{root}' map to the same key '{duplicated.iloc[0]}'; rename one"
        )
    return frame


READERS: dict[str, Callable[[Mapping, Path], pd.DataFrame]] = {
    "digits": read_digits,
    "imagefolder": read_imagefolder,
}


def read_dataset(spec: Mapping, base_dir: str | Path = ".") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (training pool, evaluation split) manifests for a `datasets:` entry."""
    frame = READERS[spec["kind"]](spec, Path(base_dir))
    pool = frame[frame["split"] == "train"].reset_index(drop=True)
    val = frame[frame["split"] == "val"].reset_index(drop=True)
    return pool, val


def few_shot(pool: pd.DataFrame, seed: int, shots: int) -> pd.DataFrame:
    """The first `shots` images of each class under a per-(seed, class) permutation.

    The permutation depends only on the seed and the class, so the k-shot subset is the
    prefix of every larger subset (nested shots).
    """
    parts = []
    for label, group in pool.sort_values("key").groupby("label", sort=True):
        if len(group) < shots:
            raise ValueError(
                f"class '{group['class_name'].iloc[0]}' has {len(group)} training images, "
                f"fewer than examples_per_class={shots}; lower it or add images"
            )
        rng = np.random.default_rng([seed, int(label)])
        order = rng.permutation(len(group))[:shots]
        parts.append(group.iloc[order])
    return pd.concat(parts).reset_index(drop=True)


def class_names(frame: pd.DataFrame) -> list[str]:
    """Class names indexed by label."""
    pairs = frame[["label", "class_name"]].drop_duplicates().sort_values("label")
    names = pairs["class_name"].tolist()
    if pairs["label"].tolist() != list(range(len(names))):
        raise ValueError("labels must be 0..C-1 with one class name each")
    return names
