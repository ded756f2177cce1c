"""Galleries of synthetic images beside the real images they were made from.

Only reads what the workflow wrote (the few-shot manifest, each method's `index.parquet`
and its shards); nothing is regenerated, so a gallery shows exactly the images the
classifiers were trained on.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..data.images import load_image
from ..data.shards import INDEX, verify_shards

# The image members a shard may hold, one per sample (`generation.image_format`).
IMAGE_EXTS = ("png", "webp", "jpg")
# Images up to this size are upsampled in the figure; nearest keeps their pixels sharp.
TINY_PIXELS = 128
CELL_INCHES = 1.5
TITLE_INCHES = 0.4
FONTSIZE = 8


def _present(index: pd.DataFrame) -> pd.DataFrame:
    """The rows of images that are in a shard (not dropped by the safety checker)."""
    return index[~index["dropped"].astype(bool) & index["shard"].notna()]


def read_synthetic(
    index: pd.DataFrame, shard_dir: Path, keys: Iterable[str]
) -> dict[str, Image.Image]:
    """The RGB images of `keys`, read from the shards the index names (each opened once).

    Dropped images have no shard and are skipped; a key the index does not list, or one
    missing from its shard, is an error.
    """
    keys = list(dict.fromkeys(keys))
    unknown = [key for key in keys if key not in set(index["key"])]
    if unknown:
        raise ValueError(f"keys not in the index: {', '.join(unknown)}")
    wanted = _present(index)
    wanted = wanted[wanted["key"].isin(keys)]
    images = {}
    verify_shards(Path(shard_dir) / INDEX, wanted["shard"])
    for shard, group in wanted.groupby("shard"):
        path = Path(shard_dir) / shard
        with tarfile.open(path) as tar:
            names = set(tar.getnames())
            for key in group["key"]:
                member = next((f"{key}.{e}" for e in IMAGE_EXTS if f"{key}.{e}" in names), None)
                if member is None:
                    raise ValueError(
                        f"shard '{path}' has no image of key '{key}' "
                        f"(looked for {', '.join(f'{key}.{e}' for e in IMAGE_EXTS)})"
                    )
                data = tar.extractfile(member).read()
                images[key] = Image.open(io.BytesIO(data)).convert("RGB")
    return {key: images[key] for key in keys if key in images}


def _choose_sources(
    split: pd.DataFrame, available: set[str], images_per_class: int, max_classes: int, seed: int
) -> pd.DataFrame:
    """Up to `images_per_class` rows of `split` per class among `available` keys, for the
    `max_classes` lowest labels. Each class draws from its own stream (seed, label), so its
    choice does not depend on which other classes are shown."""
    candidates = split[split["key"].isin(available)]
    picked = []
    for label in sorted(candidates["label"].unique())[:max_classes]:
        keys = sorted(candidates.loc[candidates["label"] == label, "key"])
        rng = np.random.default_rng([seed, int(label)])
        take = rng.choice(len(keys), size=min(images_per_class, len(keys)), replace=False)
        picked += sorted(keys[i] for i in take)
    return candidates.set_index("key").loc[picked].reset_index()


def _show(ax, image: Image.Image, title: str) -> None:
    tiny = max(image.size) <= TINY_PIXELS
    ax.imshow(np.asarray(image), interpolation="nearest" if tiny else "antialiased")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=FONTSIZE)


def gallery_figure(
    split: pd.DataFrame,
    synthetic: Mapping[str, tuple[pd.DataFrame, Path, int]],
    images_per_class: int = 1,
    max_classes: int = 6,
    variants: int = 3,
    seed: int = 0,
):
    """One row per real source image: the image, then up to `variants` synthetic images of
    it per method (lowest `j` first), titled with the method and its strength t0.

    `split` is the few-shot training manifest; `synthetic` maps a method to its index, shard
    folder and M, in display order. A set may hold more variants than a method's runs read
    (sets are shared by methods of different M), so only `j < M` is shown. Sources are
    drawn (deterministically, by `seed`) among those with images in the first method that
    has any. Cells of a method with fewer images for a source stay blank (a method without
    any image says so in its first cell).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = {
        method: _present(index[index["j"] < size]) for method, (index, _, size) in synthetic.items()
    }
    first = next((method for method, rows in present.items() if not rows.empty), None)
    if first is None:
        given = ", ".join(f"'{m}'" for m in synthetic) or "none"
        raise ValueError(f"no synthetic images to show: no image in any method given ({given})")
    sources = _choose_sources(
        split, set(present[first]["source_key"]), images_per_class, max_classes, seed
    )
    if sources.empty:
        raise ValueError(f"no image of the split has synthetic images in method '{first}'")
    # Each method gets as many columns as it has variants to show (at most `variants`).
    chosen = {}
    for method, rows in present.items():
        mine = rows[rows["source_key"].isin(sources["key"])].sort_values(["source_key", "j"])
        chosen[method] = mine.groupby("source_key").head(variants)
    widths = [max(1, int(c.groupby("source_key").size().max())) if len(c) else 1
              for c in chosen.values()]  # fmt: skip
    starts = [1 + sum(widths[:m]) for m in range(len(widths))]
    ncols = 1 + sum(widths)
    fig, axes = plt.subplots(
        len(sources), ncols, squeeze=False,
        figsize=(CELL_INCHES * ncols, (CELL_INCHES + TITLE_INCHES) * len(sources)),
    )  # fmt: skip
    for ax in axes.flat:
        ax.axis("off")
    for row, source in zip(axes, sources.to_dict("records"), strict=True):
        row[0].axis("on")
        _show(row[0], load_image(source), f"real: {source['class_name']}")
    for (method, rows), start in zip(chosen.items(), starts, strict=True):
        if present[method].empty:  # say so where its column is, rather than leave it blank
            ax = axes[0][start]
            ax.text(0.5, 0.5, f"{method}:\nno images", ha="center", va="center", fontsize=FONTSIZE)
            continue
        images = read_synthetic(rows, synthetic[method][1], rows["key"])
        for r, source_key in enumerate(sources["key"]):
            mine = rows[rows["source_key"] == source_key]
            for v, image_row in enumerate(mine.itertuples(index=False)):
                ax = axes[r][start + v]
                ax.axis("on")
                _show(ax, images[image_row.key], f"{method}\nt0={image_row.strength:g}")
    fig.tight_layout()
    return fig
