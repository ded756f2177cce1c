"""Dataset manifests: read a `datasets:` entry once, then draw few-shot subsets from it.

A manifest is a parquet table with columns `key` (stable, no dots), `path` or `image`
(encoded image bytes), `label`, `class_name` and `split`, plus `mask_path` for datasets with
object masks. A reader (`dafusion.data.readers`) turns one dataset format into such a table;
`read_dataset` then does what is common to every format: the evaluation split of datasets
without one, the class subset, the image check and the mask files. Few-shot subsets are
drawn from the resulting training pool. In memory, a manifest's files open from the working
directory and `attrs[manifest.ROOT_KEY]` names its dataset root; `manifest.write_manifest`
stores them relative to that root, and `manifest.read_manifest` reads them back.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..settings import DatasetSettings
from .images import describe, load_image, register_openers
from .manifest import ROOT_KEY, SPLITS, class_token, unknown_classes_error
from .readers import KINDS, original_split_kinds

log = logging.getLogger(__name__)

# The evaluation split of datasets without one is drawn with this fixed seed, independent
# of the experiment seeds, so every seed is evaluated on the same images.
VAL_SPLIT_SEED = 20240
# `classes: N` draws its N classes with this fixed seed: every seed and method sees the same.
CLASS_SUBSET_SEED = 0


def hold_out(pool: pd.DataFrame, fraction: float, per_class: int | None) -> pd.DataFrame:
    """Split a pool into train/val per class with a fixed seed; returns it with `split` set."""
    rng = np.random.default_rng(VAL_SPLIT_SEED)
    parts = []
    for _, group in pool.groupby("label", sort=True):
        order = rng.permutation(len(group))
        n_val = max(1, int(np.ceil(fraction * len(group))))
        if n_val >= len(group):
            raise ValueError(
                f"class '{group['class_name'].iloc[0]}' has {len(group)} image(s): too few to "
                "hold out an evaluation image and keep one to train on; add images"
                f"{' or lower val_fraction' if len(group) > 1 else ''}, or give the dataset its "
                "own evaluation split (for imagefolder: root/train/ and root/val/)"
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


def _cap_per_class(frame: pd.DataFrame, per_class: int) -> pd.DataFrame:
    """At most `per_class` rows of each class, drawn with a fixed seed per class."""
    parts = []
    for label, group in frame.sort_values("key").groupby("label", sort=True):
        order = np.random.default_rng([VAL_SPLIT_SEED, int(label)]).permutation(len(group))
        parts.append(group.iloc[order[:per_class]])
    return pd.concat(parts) if parts else frame


def _unicode_forms(texts: Sequence[str]) -> bool:
    """Whether distinct texts are one text in different Unicode forms: they look the same,
    so an error naming them must say how they differ."""
    return len(set(texts)) > 1 and len({unicodedata.normalize("NFC", t) for t in texts}) == 1


# Why two names that look the same clash, for the errors of both kinds of clash.
UNICODE_FORMS = (
    "one text in two Unicode forms (an accent composed, as in 'é', or written as a separate "
    "mark after its letter, as macOS and some archivers write it), which count as one"
)


def _check_keys(frame: pd.DataFrame, kind: str) -> None:
    duplicated = frame["key"][frame["key"].duplicated(keep=False)]
    if len(duplicated):
        key = duplicated.iloc[0]
        sources = frame.loc[frame["key"] == key, "path"].fillna("<bytes>").tolist()
        if _unicode_forms(sources):
            raise ValueError(
                f"dataset kind '{kind}': images {', '.join(map(ascii, sources))} map to the "
                f"same key '{key}': their paths are {UNICODE_FORMS}; merge the two folders, "
                "or remove one of the files"
            )
        raise ValueError(
            f"dataset kind '{kind}': images {sources} map to the same key '{key}' (keys drop "
            "dots and other punctuation); rename one of the files"
        )


def _folders(paths: pd.Series) -> str:
    """Where a class's images lie, for errors: the folder holding all its files."""
    files = paths.dropna().tolist()
    if not files:
        return "its images are stored in the dataset as bytes"
    return f"folder '{os.path.commonpath([os.path.dirname(p) for p in files])}'"


def _check_no_class_emptied(checked: pd.DataFrame, readable: pd.DataFrame) -> None:
    """A class whose training images were all unreadable (`skip_corrupt` left them out) is
    an error naming its folder: it would vanish from every run."""
    train = checked[checked["split"] == "train"]
    kept = set(readable.loc[readable["split"] == "train", "class_name"])
    emptied = train[~train["class_name"].isin(kept)].groupby("class_name", sort=True)["path"]
    if not len(emptied):
        return
    names = ", ".join(repr(name) for name, _ in emptied)
    where = "; ".join(_folders(paths) for _, paths in emptied)
    raise ValueError(
        f"class {names} has no readable training images left ({where}; skip_corrupt left "
        "them all out); add readable images there, or leave the class out with the entry's "
        "classes: list"
    )


def _check_every_class_remains(
    frame: pd.DataFrame, names: Sequence[str], needs_val: bool, policy: str
) -> list[str]:
    """No class may vanish silently; returns the classes kept, in order.

    A class without evaluation images would have no accuracy in any run: an error, or with
    `unevaluated_classes: drop` left out of every split with a warning naming it.
    """

    def missing(split: str) -> list[str]:
        present = set(frame.loc[frame["split"] == split, "class_name"])
        return [name for name in names if name not in present]

    unevaluated = missing("val") if needs_val else []
    if unevaluated and policy != "drop":
        raise ValueError(
            f"class {', '.join(map(repr, unevaluated))} has no evaluation images, so no run "
            "could report its accuracy; add some to the evaluation split, leave the class out "
            "with the entry's classes: list, or set unevaluated_classes: drop in its datasets "
            "entry to drop such classes"
        )
    if unevaluated:
        log.warning(
            "dropped class %s: no evaluation images (unevaluated_classes: drop)",
            ", ".join(map(repr, unevaluated)),
        )
    return [name for name in names if name not in unevaluated]


def _check_tokens(names: Sequence[str]) -> None:
    """Every class must get its own learned token; 'Cat' and 'cat' would share '<cat>'."""
    by_token: dict[str, list[str]] = {}
    for name in names:
        by_token.setdefault(class_token(name), []).append(name)
    for token, group in by_token.items():
        if len(group) > 1 and _unicode_forms(group):
            raise ValueError(
                f"classes {', '.join(map(ascii, group))} give the same class token '{token}': "
                f"they are {UNICODE_FORMS}; merge them into one class (one folder)"
            )
        if len(group) > 1:
            raise ValueError(
                f"classes {', '.join(map(repr, group))} give the same class token '{token}' "
                "(tokens ignore case and punctuation); rename one, or merge them"
            )


def choose_classes(
    frame: pd.DataFrame, classes: int | Sequence[str] | None, aliases: Mapping[str, str]
) -> list[str]:
    """The classes a `classes:` entry asks for, in label order.

    Without a subset, the dataset's own class order; a subset (a list of names, or N classes
    drawn with a fixed seed) in sorted class-name order. Only classes with training images
    can be chosen: no classifier can learn the others.
    """
    train = frame[frame["split"] == "train"]
    native = train.drop_duplicates("label").sort_values("label")["class_name"].tolist()
    available = sorted(native)
    if classes is None:
        return native
    if isinstance(classes, int):
        if classes > len(available):
            raise ValueError(
                f"classes: {classes} asks for more classes than the {len(available)} with "
                "training images; lower it"
            )
        rng = np.random.default_rng(CLASS_SUBSET_SEED)
        return sorted(rng.choice(np.array(available, dtype=object), classes, replace=False))
    requested = [aliases.get(name, name) for name in classes]
    unknown = [name for name, req in zip(classes, requested, strict=True) if req not in native]
    if unknown:
        raise unknown_classes_error(unknown, available)
    return sorted(set(requested))


def select_classes(frame: pd.DataFrame, chosen: Sequence[str]) -> pd.DataFrame:
    """Keep the `chosen` classes, numbered 0..C-1 in that order, in every split."""
    untrainable = sorted(
        set(frame["class_name"]) - set(frame.loc[frame["split"] == "train", "class_name"])
    )
    if untrainable:
        log.warning("dropped classes with no training images: %s", ", ".join(untrainable))
    index = {name: i for i, name in enumerate(chosen)}
    frame = frame[frame["class_name"].isin(index)].copy()
    frame["label"] = frame["class_name"].map(index).astype("int64")
    log.info("%d classes: %s", len(chosen), ", ".join(chosen))
    return frame


def _decode_error(row: Mapping) -> str | None:
    """A full decode, as training will do: header checks (PIL's verify) miss truncated files."""
    try:
        load_image(row)
    except Exception as exc:
        cause = exc.__cause__ or exc  # load_image's own error repeats the file's name
        return f"{type(cause).__name__}: {cause}"
    return None


def check_images(frame: pd.DataFrame, skip_corrupt: bool, threads: int = 1) -> pd.DataFrame:
    """Stop at an unreadable image, naming it; with `skip_corrupt`, leave it out and log it.

    Every image is decoded once, in `threads` threads, so that a truncated file stops
    indexing rather than a GPU stage hours later. A missing HEIC reader stops it first, as
    itself rather than as every image unreadable.
    """
    register_openers()
    records = frame[["key", "path", "image"]].to_dict("records")
    with ThreadPoolExecutor(max(1, threads)) as executor:
        errors = list(executor.map(_decode_error, records))
    bad = [(row, err) for row, err in zip(records, errors, strict=True) if err is not None]
    if bad and not skip_corrupt:
        row, err = bad[0]
        raise ValueError(
            f"cannot read {describe(row)} ({err}; {len(bad)} unreadable in all); replace it, "
            "or set skip_corrupt: true in its datasets entry to leave unreadable images out"
        )
    for row, err in bad:
        log.warning("skipped unreadable %s: %s", describe(row), err)
    return frame[[err is None for err in errors]]


def _write_mask(args: tuple[Callable[[], np.ndarray], Path]) -> None:
    source, path = args
    Image.fromarray(source().astype(np.uint8) * 255).save(path)


def write_masks(frame: pd.DataFrame, mask_dir: str | Path | None, threads: int = 1) -> pd.DataFrame:
    """Write each row's object mask (`mask`: a function returning a bool array) as an 8-bit
    PNG (255 = object) named after its key, and reference it in `mask_path`.

    `mask_path` opens from the working directory; `manifest.write_manifest` stores it
    relative to the manifest's folder (`masks/{key}.png` in the workflow), so that a results
    folder reads the same wherever it lies.
    """
    if "mask" not in frame:
        return frame
    if mask_dir is None:
        raise ValueError("this dataset kind has object masks: pass mask_dir to store them")
    mask_dir = Path(mask_dir)
    mask_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{key}.png" for key in frame["key"]]
    jobs = [(source, mask_dir / name) for source, name in zip(frame["mask"], names, strict=True)]
    with ThreadPoolExecutor(max(1, threads)) as executor:
        list(executor.map(_write_mask, jobs))
    return frame.drop(columns="mask").assign(mask_path=[str(mask_dir / name) for name in names])


def read_dataset(
    spec: DatasetSettings,
    base_dir: str | Path = ".",
    mask_dir: str | Path | None = None,
    threads: int = 1,
    masks: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return the (training pool, evaluation, test) manifests of a `datasets:` entry.

    Without `masks`, object masks are neither written nor referenced: every check is made,
    nothing is stored (`pipeline.check_dataset`).

    The test manifest is empty for datasets without a test split. With `split_protocol:
    original-code` the evaluation manifest is empty too: `halve_per_seed` halves the pool per
    seed, as the original DA-Fusion code did. Each one's `attrs[ROOT_KEY]` is the entry's
    root as seen from the working directory (`base_dir` joined), which `write_manifest`
    stores its image paths relative to.
    """
    kind = spec.kind
    protocol = spec.split_protocol
    if protocol == "original-code" and not KINDS[kind].original_split:
        raise ValueError(
            f"split_protocol 'original-code' applies to {original_split_kinds()}, not '{kind}'"
        )
    frame = KINDS[kind].read(spec, Path(base_dir))
    aliases = frame.attrs.get("class_aliases", {})
    if not (frame["split"] == "train").any():
        raise ValueError(f"dataset kind '{kind}' found no training images; check its root")
    _check_keys(frame, kind)
    chosen = choose_classes(frame, spec.classes, aliases)
    _check_tokens(chosen)
    # Unreadable images go before the hold-out, so that no class is left without evaluation
    # images by them; only the chosen classes' images are read, and the others' rows keep
    # their places, so the held-out split is unchanged where every image reads.
    frame = frame.reset_index(drop=True)
    wanted = frame["class_name"].isin(chosen)
    readable = check_images(frame[wanted], spec.skip_corrupt, threads)
    _check_no_class_emptied(frame[wanted], readable)
    frame = frame[~wanted | frame.index.isin(readable.index)]
    per_class = spec.val_per_class
    has_val = (frame["split"] == "val").any()
    # val_fraction 0 holds nothing out: every image is a source (synthetic data only).
    holds_out = protocol == "default" and not has_val and spec.val_fraction > 0
    if holds_out:
        held = hold_out(frame[frame["split"] == "train"], spec.val_fraction, per_class)
        frame = pd.concat([held, frame[frame["split"] == "test"]])
    elif has_val and per_class is not None:
        val = _cap_per_class(frame[frame["split"] == "val"], per_class)
        frame = pd.concat([frame[frame["split"] != "val"], val])
    evaluated = protocol != "default" or has_val or holds_out
    if not evaluated:
        log.info("no evaluation split: val_fraction is 0, every training image is a source")
    chosen = _check_every_class_remains(
        frame, chosen, needs_val=protocol == "default" and evaluated,
        policy=spec.unevaluated_classes,
    )  # fmt: skip
    frame = select_classes(frame, chosen)
    if masks:
        frame = write_masks(frame, mask_dir, threads)
    else:
        frame = frame.drop(columns="mask", errors="ignore")
    pool, val, test = (
        frame[frame["split"] == split].sort_values("key").reset_index(drop=True) for split in SPLITS
    )
    root = None if spec.root is None else str(Path(base_dir) / Path(spec.root).expanduser())
    for part in (pool, val, test):
        part.attrs = {} if root is None else {ROOT_KEY: root}
    return pool, val, test


def halve_per_seed(pool: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The original DA-Fusion code's split of caltech101, flowers102 and leafy_spurge.

    One generator seeded with the experiment seed draws a permutation of each class's images
    (classes in label order, images in key order); the first half (rounded up) trains, the
    second half evaluates. Returns (training pool, evaluation manifest) of this seed.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for _, group in pool.sort_values("key").groupby("label", sort=True):
        first, second = np.array_split(rng.permutation(len(group)), 2)
        train.append(group.iloc[first].assign(split="train"))
        val.append(group.iloc[second].assign(split="val"))
    halves = [pd.concat(part).sort_values("key").reset_index(drop=True) for part in (train, val)]
    for half in halves:
        half.attrs = dict(pool.attrs)  # the dataset root: written halves keep it
    return tuple(halves)


def few_shot(
    pool: pd.DataFrame,
    seed: int,
    shots: int | None,
    allow_fewer: bool = False,
    dataset: str | None = None,
) -> pd.DataFrame:
    """The first `shots` images of each class under a per-(seed, class) permutation.

    The permutation depends only on the seed and the class, so the k-shot subset is the
    prefix of every larger subset (nested shots), and `shots=None` (examples_per_class
    'all') is the whole pool in that order. A class with fewer images is an error, or with
    `allow_fewer` keeps all it has; either message names `dataset` (the `datasets:` entry),
    as a grid of datasets can have a class of that name in several.
    """
    where = "" if dataset is None else f"dataset '{dataset}': "
    entry = "its datasets entry" if dataset is None else f"datasets.{dataset}"
    parts = []
    for label, group in pool.sort_values("key").groupby("label", sort=True):
        name = group["class_name"].iloc[0]
        if shots is not None and len(group) < shots:
            if not allow_fewer:
                raise ValueError(
                    f"{where}class '{name}' has {len(group)} training images, fewer than "
                    f"examples_per_class={shots}; lower it, add images, or set allow_fewer: "
                    f"true in {entry} to keep what exists"
                )
            log.warning(
                "%sclass '%s' has %d training images, fewer than examples_per_class=%d: "
                "keeping all %d (allow_fewer)",
                where,
                name,
                len(group),
                shots,
                len(group),
            )
        rng = np.random.default_rng([seed, int(label)])
        order = rng.permutation(len(group))[:shots]
        parts.append(group.iloc[order])
    subset = pd.concat(parts).reset_index(drop=True)
    subset.attrs = dict(pool.attrs)  # the dataset root: a written subset keeps it
    return subset
