"""The `classifier` scorer: how surely the baseline run recognizes each synthetic image.

The baseline run of the same dataset, seed and shots trained its classifier on the real
few-shot split only and saved its final step (`classifier.save_head`, never a step chosen
on validation). Rebuilt here (`classifier.load_classifier`), it scores each image the set
holds as its run evaluates: in eval mode, resized to the run's image size. `confidence` is
the softmax probability of the image's label (the label of its source image), `top1` the
label it predicts. ALIA drops edits a real-data classifier finds mislabelled with this.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from ..classifier import load_classifier
from . import read_set, write_scores


def score(
    index_path: str | Path,
    head_path: str | Path,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> pd.DataFrame:
    """`key`, `confidence` and `top1` of every image of the set of `index_path`, under the
    classifier saved at `head_path`."""
    saved = load_classifier(head_path, device)
    rows, images = read_set(index_path)
    names = saved.class_names
    for label, name in rows[["label", "class_name"]].drop_duplicates().itertuples(index=False):
        if not 0 <= label < len(names) or names[label] != name:
            raise ValueError(
                f"the classifier of {head_path} does not know class '{name}' as label {label} "
                f"of the set {index_path} (it knows {', '.join(names)}): it must be the "
                "baseline run of the set's own dataset, seed and shots"
            )
    confidence, top1 = [], []
    for start in range(0, len(images), batch_size):
        batch = [
            Image.open(io.BytesIO(data)).convert("RGB")
            for data in images[start : start + batch_size]
        ]
        probabilities = saved.logits(batch, batch=batch_size).double().softmax(dim=1)
        labels = torch.tensor(rows["label"].to_numpy()[start : start + batch_size])
        confidence += probabilities.gather(1, labels[:, None]).squeeze(1).tolist()
        top1 += probabilities.argmax(dim=1).tolist()
    return pd.DataFrame(
        {"key": rows["key"], "confidence": confidence, "top1": pd.Series(top1, dtype="int64")}
    )


def write(
    index_path: str | Path,
    head_path: str | Path,
    output: str | Path,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> pd.DataFrame:
    """Score the set and write `scores-classifier.parquet` atomically."""
    frame = score(index_path, head_path, device, batch_size)
    write_scores(frame, output, "classifier", {"head": Path(head_path).name})
    return frame
