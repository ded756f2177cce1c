"""Manifest basics: the table every reader returns and every stage reads.

Kept free of the readers and of image decoding, so that anything handling manifests (the
readers, the stages, the workflow's scripts) can import it cheaply and without a cycle.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa

# Written with this schema, a manifest has the same types for every dataset, also where
# `path` or `image` is all null (images stored as bytes, or as files) or it has no rows.
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("path", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)
MANIFEST_COLUMNS = MANIFEST_SCHEMA.names
# Only datasets with object masks (pascal, coco) have this column.
MASK_PATH = pa.field("mask_path", pa.string())
SPLITS = ("train", "val", "test")


def resolve_masks(frame: pd.DataFrame, folder: str | Path) -> pd.DataFrame:
    """The manifest with each `mask_path` a file to open: a manifest stores it relative to
    its own folder (`datasets.write_masks`), so that a results folder can move."""
    if MASK_PATH.name not in frame:
        return frame
    paths = [None if p is None else str(Path(folder) / p) for p in frame[MASK_PATH.name]]
    return frame.assign(**{MASK_PATH.name: paths})


def manifest(rows: Iterable[Mapping]) -> pd.DataFrame:
    """Rows -> a manifest table; columns beyond the manifest's (such as `mask`) are kept."""
    frame = pd.DataFrame(list(rows))
    for col in MANIFEST_COLUMNS:
        if col not in frame:
            frame[col] = None
    extra = [col for col in frame.columns if col not in MANIFEST_COLUMNS]
    frame = frame[MANIFEST_COLUMNS + extra]
    frame["label"] = frame["label"].astype("int64")
    return frame


def manifest_schema(columns: Iterable[str]) -> pa.Schema:
    """The schema to write a manifest with these columns: `mask_path` is typed where the
    dataset has object masks, and not added where it has none."""
    return MANIFEST_SCHEMA.append(MASK_PATH) if MASK_PATH.name in columns else MANIFEST_SCHEMA


def _fold_accents(text: str) -> str:
    """'café' -> 'cafe' (NFKD, combining marks dropped): the readable ASCII part of a name in
    another script; characters with no ASCII form (猫, قطة, 🐶) stay, for the slug to drop."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _nfc_hash(text: str, digits: int) -> str:
    """Hex digits of the sha256 of the text's NFC form: one value for the composed and the
    decomposed spelling of the same text (macOS and some archivers write the latter)."""
    return hashlib.sha256(unicodedata.normalize("NFC", text).encode()).hexdigest()[:digits]


def sanitize_key(text: str) -> str:
    """Make a WebDataset-safe key: the reader splits extensions at the first dot.

    ASCII text keeps its punctuation-to-'_' key. Other text, e.g. '猫/0' and '犬/0', which
    would both give '_0', gets its accent-folded key plus 16 hex of its NFC hash
    ('0-<hash>'): 16, not 8, as a dataset can hold 10^5 images named in another script,
    where 8 hex would make two equal keys likely.
    """
    if text.isascii():
        return re.sub(r"[^A-Za-z0-9_-]+", "_", text)
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", _fold_accents(text)).strip("_")
    return "-".join(filter(None, [slug, _nfc_hash(text, 16)]))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def class_token(class_name: str) -> str:
    """The pseudo-word of a class, e.g. 'giant white arum lily' -> '<giant-white-arum-lily>'.

    A name with a character outside ASCII gets the slug of its accent-folded form ('class'
    where none is left) plus 8 hex of the NFC hash of its case-folded form: 'café' ->
    '<cafe-850f7dc4>', '猫' -> '<class-a810bf84>'. Such names are told apart by accents, as
    words are, but, like ASCII names, not by case ('Café' and 'café' clash, as 'Cat' and
    'cat' do) nor by Unicode normal form; the token stays lowercase ASCII letters, digits
    and hyphens, which CLIP's tokenizer adds as one token. ASCII names keep their tokens (and
    so their delta files and trained embeddings).
    """
    if class_name.isascii():
        return f"<{_slug(class_name) or 'class'}>"
    folded = unicodedata.normalize("NFC", class_name).casefold()
    return f"<{_slug(_fold_accents(class_name)) or 'class'}-{_nfc_hash(folded, 8)}>"


def class_names(frame: pd.DataFrame) -> list[str]:
    """Class names indexed by label."""
    pairs = frame[["label", "class_name"]].drop_duplicates().sort_values("label")
    names = pairs["class_name"].tolist()
    if pairs["label"].tolist() != list(range(len(names))):
        raise ValueError("labels must be 0..C-1 with one class name each")
    return names


def unknown_classes_error(unknown: Sequence[str], available: Sequence[str]) -> ValueError:
    """The error for `classes:` names a dataset lacks, listing the ones it has."""
    return ValueError(
        f"unknown classes in 'classes': {', '.join(map(repr, unknown))}; fix the names in the "
        f"config. The {len(available)} available classes: {', '.join(available)}"
    )
