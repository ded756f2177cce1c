"""How often the reference digit classifier recognizes each method's synthetic images as the
class they were made for: whether the generator did what a method asks, apart from what
the classifier stage makes of the images. Datasets of digits only (the classifier knows
nothing else)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.card import CLASSES
from ..data.manifest import read_manifest
from ..data.readers.folders import DIGIT_NAMES
from ..stages.mixing import kept_variants
from .gallery import read_synthetic

REAL = "real (few-shot)"


def _digits(names: Sequence[str]) -> np.ndarray:
    unknown = [n for n in names if n not in DIGIT_NAMES]
    if unknown:
        raise ValueError(
            f"recognition: classes {unknown} are not digit names ({', '.join(DIGIT_NAMES)}); "
            "the reference classifier scores datasets of kind digits only"
        )
    return np.array([DIGIT_NAMES.index(n) for n in names])


def _rates(
    reference, images: list, labels: np.ndarray, digits: np.ndarray, names: Sequence[str]
) -> list:
    """Per class: images and the fraction the reference classifier calls that class."""
    from .reference import probabilities

    arrays = np.stack([np.asarray(i.convert("RGB")) for i in images])
    predicted = probabilities(reference, arrays).argmax(-1).numpy()
    rows = []
    for label, name in enumerate(names):
        mine = labels == label
        rows.append(
            {
                "class_name": name,
                "images": int(mine.sum()),
                "recognized": float((predicted[mine] == digits[label]).mean())
                if mine.any()
                else np.nan,
            }
        )
    return rows


def recognition_table(
    splits: Sequence[str | Path],
    sets: Mapping[str, Sequence[tuple[str | Path, int]]],
    reference_path: str | Path | None = None,
) -> pd.DataFrame:
    """One row per (method, class): how many images and the fraction recognized as the
    class. `sets` maps a method to its (index.parquet, M) per seed and shot count; a method
    reads the first M variants of its set, as its runs do. The few-shot real images of
    `splits` come first, as the reference point. `reference_path`: the reference classifier's
    weights (the shipped file by default)."""
    from ..data.images import load_image
    from .reference import load_reference

    # once for every method
    reference = load_reference() if reference_path is None else load_reference(reference_path)

    real = pd.concat([read_manifest(p) for p in splits]).drop_duplicates("key")
    real = real[real["split"] == "train"] if "split" in real else real
    names = list(real.sort_values("label").drop_duplicates("label")["class_name"])
    digits = _digits(names)
    tables = []
    for row in _rates(
        reference,
        [load_image(r) for r in real.to_dict("records")],
        real["label"].to_numpy(),
        digits,
        names,
    ):
        tables.append({"method": REAL, **row})
    for method, indices in sets.items():
        images, labels = [], []
        for index_path, num_synthetic in indices:
            folder = Path(index_path).parent
            classes = json.loads((folder / CLASSES).read_text())
            if [classes[str(i)]["class_name"] for i in range(len(classes))] != names:
                raise ValueError(f"{folder / CLASSES}: classes differ from the splits' {names}")
            index = kept_variants(pd.read_parquet(index_path), num_synthetic)
            found = read_synthetic(index, folder, index["key"])
            images += [found[k] for k in index["key"]]
            labels += index["label"].tolist()
        for row in _rates(reference, images, np.array(labels), digits, names):
            tables.append({"method": method, **row})
    return pd.DataFrame(tables)


def recognition_figure(table: pd.DataFrame):
    """Methods x classes heatmap of the recognized fraction (chance is 1 / classes)."""
    import matplotlib.pyplot as plt

    grid = table.pivot(index="method", columns="class_name", values="recognized")
    grid = grid.loc[list(dict.fromkeys(table["method"])), list(dict.fromkeys(table["class_name"]))]
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * grid.shape[1], 0.9 + 0.45 * grid.shape[0]))
    image = ax.imshow(grid.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=45, ha="right")
    ax.set_yticks(range(grid.shape[0]), grid.index)
    for (i, j), value in np.ndenumerate(grid.to_numpy()):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="black" if value > 0.5 else "white")  # fmt: skip
    fig.colorbar(image, ax=ax, fraction=0.04, label="recognized as its class")
    fig.tight_layout()
    return fig
