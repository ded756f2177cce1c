"""What a synthetic set folder says about itself: `classes.json` and a dataset card.

A set is read outside this workflow (your own training code, Hugging Face `datasets`), so
its folder names its classes and tokens and what made it. The card's YAML header declares
the shards' features, so `datasets.load_dataset(folder)` gives `cls` as a `ClassLabel` with
the class names. Nothing here depends on where the results lie or when the set was made:
the same set is the same bytes in any results folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import yaml

from ..jobs.io import atomic_path
from ..provenance import digest, library_versions
from .manifest import class_token

CLASSES = "classes.json"
CARD = "README.md"
# The libraries whose versions shape a set's images, named in its card.
LIBRARIES = ("torch", "diffusers", "transformers", "pillow", "webdataset")  # after dafusion
# The shards' json fields (INDEX_SCHEMA's but key, shard and dropped), as datasets' dtypes.
JSON_FIELDS = {
    "source_key": "string", "j": "int64", "label": "int64", "class_name": "string",
    "set": "string", "strength": "float64", "prompt": "string", "guidance_scale": "float64",
    "scheduler": "string", "steps": "int64", "seed": "int64", "model_id": "string",
    "token_hash": "string", "erasure": "string",
}  # fmt: skip


def classes_record(names: Sequence[str], tokens_path: str | None, folder: Path) -> dict:
    """label -> class name, and its token and tokens file (relative to the set's folder)
    where the set's prompt uses tokens."""
    tokens = os.path.relpath(tokens_path, folder) if tokens_path else None
    return {
        str(label): {
            "class_name": name,
            "token": class_token(name) if tokens else None,
            "tokens_file": tokens,
        }
        for label, name in enumerate(names)
    }


def card_text(
    index: pd.DataFrame,
    names: Sequence[str],
    identity: Mapping,
    code: Mapping,
    image_format: str,
    title: str,
) -> str:
    """The dataset card: YAML header (data files, features), counts, what made the set."""
    header = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": "train", "path": "shard-*.tar"}],
            }
        ],
        "dataset_info": {
            "features": [
                {"name": image_format, "dtype": "image"},
                {
                    "name": "cls",
                    "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(names)}}},
                },
                {
                    "name": "json",
                    "struct": [{"name": k, "dtype": v} for k, v in JSON_FIELDS.items()],
                },
            ]
        },
    }
    kept = index[~index["dropped"]]
    per_class = kept.groupby("label").size().reindex(range(len(names)), fill_value=0)
    rows = "\n".join(f"| {i} | {n} | {per_class[i]} |" for i, n in enumerate(names))
    m = int(index["j"].max()) + 1 if len(index) else 0
    made = yaml.safe_dump(dict(identity), sort_keys=True, allow_unicode=True).rstrip()
    libraries = ", ".join(f"{k} {v}" for k, v in library_versions(LIBRARIES).items())
    return f"""---
{yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip()}
---

# {title}

Synthetic images of DA-Fusion (SDEdit, Trabucco et al., ICLR 2024) made by the dafusion
workflow: {len(kept)} images in WebDataset shards (`{image_format}`, `cls`, `json`), M = {m}
per source image for {index["source_key"].nunique()} source images, {len(index) - len(kept)}
dropped by the safety checker. `index.parquet` lists every image; `classes.json` gives
each label's class name and, where the prompt uses them, its learned token and tokens file.
A run that uses M' < M variants reads those with `j < M'`.

| label | class | images |
|---|---|---|
{rows}

## What made it

The set's identity (the settings that determine its images; its folder name is a digest
of it):

```yaml
{made}
```

Code fingerprint: `{digest(json.dumps(code, sort_keys=True).encode())}`. Libraries:
{libraries}.
"""


def write_card(
    folder: Path,
    index: pd.DataFrame,
    names: Sequence[str],
    identity: Mapping,
    code: Mapping,
    image_format: str,
    title: str,
    tokens_path: str | None,
) -> None:
    """Write `classes.json` and the card into a set's folder, each atomically."""
    record = classes_record(names, tokens_path, folder)
    with atomic_path(folder / CLASSES) as tmp:
        tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    with atomic_path(folder / CARD) as tmp:
        tmp.write_text(card_text(index, names, identity, code, image_format, title))
