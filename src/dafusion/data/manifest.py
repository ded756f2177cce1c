"""Manifest basics: the table every reader returns and every stage reads.

Kept free of the readers and of image decoding, so that anything handling manifests (the
readers, the stages, the workflow's scripts) can import it cheaply and without a cycle.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
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
# The schema metadata key (and `DataFrame.attrs` key) of a manifest's dataset root, as the
# config names it (relative to the working directory, or absolute): a manifest stores each
# `path` under it relative to it, so that a moved or copied project reads its own images.
ROOT_KEY = "dafusion.root"
# A file name made from a class name keeps at most this many UTF-8 bytes before its suffix:
# file systems allow 255, and checkpoints and temporaries add to the stem.
MAX_STEM_BYTES = 100


def _map_paths(column: pd.Series, change: Callable[[str], str]) -> pd.Series:
    """`change` applied to each path of `column`, missing ones left missing, in the column's
    own type (a list of no values would make an empty manifest's column float)."""
    values = [None if pd.isna(p) else change(p) for p in column]
    return pd.Series(values, index=column.index, dtype=column.dtype)


def resolve_masks(frame: pd.DataFrame, folder: str | Path) -> pd.DataFrame:
    """The manifest with each `mask_path` a file to open: a manifest stores it relative to
    its own folder (`write_manifest`), so that a results folder can move."""
    if MASK_PATH.name not in frame:
        return frame
    paths = _map_paths(frame[MASK_PATH.name], lambda p: str(Path(folder) / p))
    return frame.assign(**{MASK_PATH.name: paths})


def read_manifest(path: str | Path) -> pd.DataFrame:
    """A manifest whose files open from the working directory: each `path` joined to the
    dataset root its metadata records, each `mask_path` to the manifest's folder.

    The root stays in `attrs[ROOT_KEY]`, so that `write_manifest` writes a subset (e.g.
    `datasets.few_shot` of it) relative to the same root. A manifest without a recorded
    root (written by other code) keeps its paths as they are.
    """
    import pyarrow.parquet as pq

    frame = pd.read_parquet(path)
    root = (pq.read_schema(path).metadata or {}).get(ROOT_KEY.encode())
    if root is not None:
        base = Path(root.decode()).expanduser()
        frame["path"] = _map_paths(frame["path"], lambda p: str(base / p))
    frame = resolve_masks(frame, Path(path).parent)
    frame.attrs = {ROOT_KEY: root.decode()} if root is not None else {}
    return frame


def _relative(path: str, roots: Sequence[Path]) -> str:
    """`path` relative to the first of `roots` it lies under, in POSIX form; absolute where
    it lies under none (a file outside the dataset's root, such as a download cache)."""
    for root in roots:
        if Path(path).is_relative_to(root):
            return Path(path).relative_to(root).as_posix()
    return os.path.abspath(path)


def write_manifest(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a manifest in its schema (`manifest_schema`), its files as `read_manifest`
    finds them again wherever the project moves.

    `frame`'s files open from the working directory (as `datasets.read_dataset` and
    `read_manifest` give them). Each `path` under the dataset root of `frame.attrs[ROOT_KEY]`
    is stored relative to it and the root recorded in the file's metadata; each `mask_path`
    is stored relative to the manifest's folder.
    """
    from ..jobs.io import write_parquet

    root = frame.attrs.get(ROOT_KEY)
    if root is not None:
        lexical = Path(root).expanduser()
        roots = (lexical, lexical.resolve())
        frame = frame.assign(path=_map_paths(frame["path"], lambda p: _relative(p, roots)))
    if MASK_PATH.name in frame:
        folder = Path(path).parent
        relative = _map_paths(frame[MASK_PATH.name], lambda p: os.path.relpath(p, folder))
        frame = frame.assign(**{MASK_PATH.name: relative})
    # Not also in pandas' own metadata (pyarrow stores `attrs` there), where `pd.read_parquet`
    # would hand the root to frames whose paths it does not join to it.
    frame = frame.copy(deep=False)
    frame.attrs = {}
    metadata = None if root is None else {ROOT_KEY: root}
    write_parquet(frame, path, manifest_schema(frame.columns), metadata=metadata)


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


def file_stem(name: str, limit: int = MAX_STEM_BYTES) -> str:
    """`name` (a class token, say) as a file name stem of at most `limit` UTF-8 bytes.

    A name that fits is kept as it is, so existing results keep their paths; a longer one
    becomes its longest prefix that fits beside '-' and 16 hex of the name's sha256, the
    same in every run and different for names that share the prefix.
    """
    data = name.encode()
    if len(data) <= limit:
        return name
    digest = hashlib.sha256(data).hexdigest()[:16]
    return f"{data[: limit - len(digest) - 1].decode(errors='ignore')}-{digest}"


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
