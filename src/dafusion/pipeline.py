"""One function per workflow step, named after its rule: file paths and settings in, files out.

The Snakemake scripts only unpack the `snakemake` object and call these, so every step can
be run and tested without Snakemake. A step's function, with the library modules it imports,
is its rule's code rerun trigger (`dafusion.provenance`): keep each step's imports inside
its function, so that editing one stage's module reruns only the steps that use it. A
step's work lives in its stage's module, so that this file reads as the index of the steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .jobs.io import write_parquet
from .settings import (
    AggregateSettings,
    ClassifierSettings,
    DatasetSettings,
    ErasureSettings,
    GenerationSettings,
    InversionSettings,
    LoraSettings,
    MethodSettings,
    ModelSettings,
    ScoringSettings,
)

log = logging.getLogger("dafusion")


def _model_source(model: ModelSettings, model_dir: str | None) -> str:
    """The path or hub id `from_pretrained` reads: an embedded model's folder (the job's
    model input), or the config's."""
    return model_dir if model.embedded else model.pretrained


def _load(model: ModelSettings, model_dir: str | None):
    from .jobs.devices import resolve_device, resolve_dtype
    from .stages.models import load_components

    device = resolve_device(model.device)
    dtype = resolve_dtype(model.dtype, device)
    source = _model_source(model, model_dir)
    log.info("loading %s on %s (%s)", source, device, dtype)
    return load_components(source, device, dtype, vae=model.vae)


def _delta_of(deltas: Mapping, name: str):
    """A class's delta (file, fingerprint), with a clear error for a class not erased."""
    if name not in deltas:
        raise ValueError(
            f"class '{name}' has no erasure delta: the split and the eraser's check table "
            "disagree on the class names; rerun the erase job of this dataset"
        )
    return deltas[name]


def build_tiny_model(output_dir: str, name: str, resolution: int) -> None:
    from .settings import EMBEDDED_FAMILIES
    from .stages.tiny import save_tiny_model

    save_tiny_model(output_dir, resolution=resolution, family=EMBEDDED_FAMILIES[name])
    log.info("%s (random weights, %d px) written to %s", name, resolution, output_dir)


def place_shipped(name: str, output_dir: str) -> None:
    """Copy a shipped asset under the results, where the jobs read it (`dafusion.shipped`)."""
    from .shipped import place_shipped as place

    place(name, output_dir)
    log.info("%s placed in %s", name, output_dir)


def check_dataset(
    spec: DatasetSettings, output: str, base_dir: str = ".", threads: int = 1
) -> None:
    """Read a dataset as index_dataset will, and write only its classes' image counts.

    The job index_dataset waits for, named by a digest of the dataset's settings: a value
    the data refuses (an unknown class, a val_fraction that leaves a class nothing to train
    on, an unreadable image without skip_corrupt) stops here, where no finished output is
    deleted, and index_dataset never starts. Putting the old value back names the old check
    file, which still exists, so nothing reruns.
    """
    import json

    from .data.datasets import read_dataset
    from .jobs.io import atomic_path

    splits = read_dataset(spec, base_dir, threads=threads, masks=False)
    counts: dict[str, dict[str, int]] = {}
    for split, frame in zip(("train", "val", "test"), splits, strict=True):
        for name, count in frame.groupby("class_name", sort=False).size().items():
            counts.setdefault(str(name), {"train": 0, "val": 0, "test": 0})[split] = int(count)
    log.info("%s: %d classes, every setting of the entry holds", spec.kind, len(counts))
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps({"classes": counts}, indent=1, ensure_ascii=False) + "\n")


def index_dataset(
    spec: DatasetSettings,
    pool_path: str,
    val_path: str,
    test_path: str,
    mask_dir: str,
    base_dir: str = ".",
    threads: int = 1,
) -> None:
    """Read a dataset once: its training pool, evaluation and test splits, object masks.

    All parsing (annotation files, segmentation masks, image checks) happens here, once per
    dataset; the per-(seed, shots) jobs only sample from the pool. The test manifest and the
    mask directory always exist (empty where the dataset has none): outputs are fixed per rule.
    """
    from .data.datasets import read_dataset
    from .data.manifest import write_manifest

    Path(mask_dir).mkdir(parents=True, exist_ok=True)
    pool, val, test = read_dataset(spec, base_dir, mask_dir=mask_dir, threads=threads)
    log.info(
        "%s: %d training, %d evaluation, %d test images, %d classes",
        spec.kind, len(pool), len(val), len(test), pool["label"].nunique(),
    )  # fmt: skip
    # Image paths relative to the dataset's root, which each manifest records (read_manifest)
    write_manifest(test, test_path)
    write_manifest(val, val_path)
    write_manifest(pool, pool_path)


def seed_split(pool_path: str, seed: int, pool_output: str, val_output: str) -> None:
    """Halve the pool per seed, as the original DA-Fusion code did (split_protocol:
    original-code): this seed's training pool and evaluation manifest."""
    from .data.datasets import halve_per_seed
    from .data.manifest import read_manifest, write_manifest

    pool, val = halve_per_seed(read_manifest(pool_path), seed)
    log.info("seed %d: %d training, %d evaluation images", seed, len(pool), len(val))
    write_manifest(val, val_output)
    write_manifest(pool, pool_output)


def few_shot_split(
    pool_path: str,
    seed: int,
    shots: int | None,
    output: str,
    allow_fewer: bool = False,
    dataset: str | None = None,
) -> None:
    """The nested few-shot training manifest of one (seed, shots); every pool image with
    `shots=None` (examples_per_class 'all'). A class with too few images is named with its
    `dataset`."""
    from .data.datasets import few_shot
    from .data.manifest import read_manifest, write_manifest

    pool = read_manifest(pool_path)
    subset = few_shot(pool, seed, shots, allow_fewer=allow_fewer, dataset=dataset)
    log.info("seed %d, %s shots: %d images", seed, shots or "all", len(subset))
    write_manifest(subset, output)


def erase(
    pool_path: str,
    model: ModelSettings,
    settings: ErasureSettings,
    output: str,
    model_dir: str | None = None,
    code: Mapping | None = None,
) -> None:
    """Erase the dataset's class names from the UNet: one delta per class (or one joint
    delta) beside `output`, and the erasure check table at `output`.

    An erasure depends on the base model, the class names and the settings only, so every
    seed and shot count shares it. A finished delta of the same erasure (same model,
    classes, settings and `code`) is reused, so a rerun that changes none of them (a
    re-indexed dataset, a killed job) costs only the check. ESD checkpoints beside the
    deltas let a killed job resume mid-class.
    """
    from .data.manifest import class_names, read_manifest
    from .stages.erasure import erase_classes

    names = class_names(read_manifest(pool_path))
    # Training runs in float32 (or under bf16 autocast, erasure.precision) whatever
    # model.dtype is; the deltas are cast to the UNet's dtype when they are applied.
    model = model.replace(dtype="float32")
    components = _load(model, model_dir)
    table = erase_classes(components, names, model, settings, Path(output).parent, code)
    write_parquet(table, output)


def invert(
    split_path: str,
    model: ModelSettings,
    settings: InversionSettings,
    seed: int,
    output: str,
    model_dir: str | None = None,
    export_dir: str | None = None,
    loss_path: str | None = None,
    erasure_path: str | None = None,
) -> None:
    """Learn one token per class of the split in a single job.

    With `erasure_path` (an eraser's check table) each class's token is learned against
    the UNet with that class erased, as the paper's model-centric leakage prevention does.

    Writes the tokens file, optionally one single-key safetensors file per class (the form
    diffusers' `load_textual_inversion(path)` and AUTOMATIC1111 read; on SDXL the common
    `{"clip_l": rows, "clip_g": rows}` layout) and the loss curves. A checkpoint beside the
    output lets a killed job resume; it is removed at the end.
    """
    import torch

    from .data.images import load_image
    from .data.manifest import class_names, file_stem, read_manifest
    from .stages.deltas import DeltaSwitch, class_deltas
    from .stages.inversion import learn_split, remove_checkpoints
    from .stages.tokens import class_file_tensors, file_tensors, save_tokens

    manifest = read_manifest(split_path)
    names = class_names(manifest)
    # UNet and VAE in inversion.mixed_precision's dtype (CUDA only), as accelerate's
    # --mixed_precision casts them in the original; the text encoder holds the trainable
    # rows, so its weights stay in float32 and it runs under autocast (learn_tokens);
    # SDXL's second text encoder too.
    components = _load(model.replace(dtype=settings.weight_dtype), model_dir)
    if components.unet.dtype != getattr(torch, settings.weight_dtype):
        log.info(
            "inversion.mixed_precision %s applies on CUDA: float32 on %s",
            settings.mixed_precision, components.unet.device,
        )  # fmt: skip
    for _, encoder in components.text_encoders:
        encoder.to(torch.float32)
    deltas = class_deltas(erasure_path) if erasure_path else {}
    switch = DeltaSwitch(components.unet)
    images = [load_image(r) for r in manifest.to_dict("records")]
    start = time.perf_counter()
    result = learn_split(
        components, manifest, images, model, settings, seed, output, deltas,
        erase=lambda name: switch.use_file(_delta_of(deltas, name)[0]),
    )  # fmt: skip
    log.info("learned %d tokens in %.1fs", len(result.tokens), time.perf_counter() - start)
    # The configured model name, never the folder it was read from: results are portable.
    meta = {"classes": names, "model": str(model.pretrained), "seed": seed}
    if export_dir:
        folder = Path(export_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for token in result.tokens:
            save_tokens(
                folder / f"{file_stem(token.strip('<>'))}.safetensors",
                class_file_tensors(result.encoders, token), meta,
            )  # fmt: skip
    if loss_path:
        write_parquet(result.loss_table(names), loss_path)
    save_tokens(output, file_tensors(result.encoders), meta)
    remove_checkpoints(output)


def lora(
    split_path: str,
    model: ModelSettings,
    inversion: InversionSettings,
    settings: LoraSettings,
    seed: int,
    adapter_dir: str,
    tokens_path: str,
    loss_path: str,
    model_dir: str | None = None,
) -> None:
    """Learn every class's token of the split jointly with one LoRA on the UNet's attention
    (`learner: lora`, `dafusion.stages.lora`): the token rows follow `inversion` for
    `settings.steps` steps.

    Writes the adapter folder (diffusers' `load_lora_weights` layout, the model family's
    pipeline's), the tokens file (as invert's: on SDXL both encoders' rows) and the loss
    curves (invert's columns). A checkpoint beside the tokens file lets a killed job
    resume; it is removed at the end.
    """
    import torch

    from .data.images import load_image
    from .data.manifest import class_names, read_manifest
    from .stages.inversion import remove_checkpoints
    from .stages.lora import save_adapter
    from .stages.lora_learner import learn_split
    from .stages.tokens import file_tensors, save_tokens

    manifest = read_manifest(split_path)
    names = class_names(manifest)
    # As invert: UNet and VAE in inversion.mixed_precision's dtype on CUDA, the text
    # encoders (holding the trainable rows; SDXL's two) in float32; the LoRA's weights are
    # float32.
    components = _load(model.replace(dtype=inversion.weight_dtype), model_dir)
    for _, encoder in components.text_encoders:
        encoder.to(torch.float32)
    images = [load_image(r) for r in manifest.to_dict("records")]
    start = time.perf_counter()
    result = learn_split(
        components, manifest, images, model, inversion, settings, seed, tokens_path
    )
    log.info(
        "learned a LoRA of rank %d with %d class tokens in %.1fs",
        settings.rank, len(result.tokens), time.perf_counter() - start,
    )  # fmt: skip
    assert result.adapter is not None
    save_adapter(adapter_dir, result.adapter, components.conditioner.family.name)
    write_parquet(result.loss_table(names), loss_path)
    # The configured model name, never the folder it was read from: results are portable.
    meta = {"classes": names, "model": str(model.pretrained), "seed": seed, "learner": "lora"}
    save_tokens(tokens_path, file_tensors(result.encoders), meta)
    remove_checkpoints(tokens_path)


def generate(
    split_path: str,
    model: ModelSettings,
    set_name: str,
    method: MethodSettings,
    settings: GenerationSettings,
    seed: int,
    part: int,
    parts: int,
    output: str,
    model_dir: str | None = None,
    tokens_path: str | None = None,
    threads: int = 2,
    erasure_path: str | None = None,
    lora_path: str | None = None,
) -> None:
    """SDEdit part `part` of `parts` of a synthetic set: the WebDataset shards of its run of
    the plan (`synthetic.shard_ranges`), written beside `output` (the part's rows, which
    `gather_synthetic` turns into the set's index).

    Finished shards of a killed run are reused, also those a job with another number of
    parts wrote. With `erasure_path` (an eraser's check table) class c's images come from
    the UNet with class c erased; with `lora_path` (a lora job's adapter folder) the UNet
    carries that LoRA. A part beyond the set's shards (more parts than shards) writes no
    rows and loads no model.
    """
    from .data.manifest import class_names, read_manifest
    from .stages.deltas import class_deltas
    from .stages.generation import set_job
    from .stages.synthetic import num_shards, shard_ranges, variant_plan, write_part

    manifest = read_manifest(split_path)
    images = len(variant_plan(manifest, seed, settings.num_synthetic, method.strengths))
    total = num_shards(images, settings.shard_size)
    shards = shard_ranges(total, parts)[part]
    if not shards:
        log.info(
            "part %d of %d has nothing to do: the set has %d shard(s), fewer than "
            "generation.parts (%d); the parts beyond them write no rows",
            part + 1, parts, total, parts,
        )  # fmt: skip
        rows, job_fingerprint = [], ""
    else:
        log.info("part %d of %d: shards %d to %d", part + 1, parts, shards.start, shards.stop - 1)
        deltas = class_deltas(erasure_path) if erasure_path else {}
        names = class_names(manifest)
        erasure = {label: _delta_of(deltas, name) for label, name in enumerate(names) if deltas}
        job = set_job(
            _load(model, model_dir), manifest, model, set_name, method, settings, seed,
            tokens_path, erasure, _model_source(model, model_dir), lora_path=lora_path,
        )  # fmt: skip
        rows = job.write(Path(output).parent, shards, settings.workers or threads)
        job_fingerprint = job.fingerprint
    write_part(output, rows, job_fingerprint)


def gather_synthetic(
    split_path: str,
    identity: Mapping[str, Any],
    method: MethodSettings,
    settings: GenerationSettings,
    seed: int,
    parts: Sequence[str],
    output: str,
    code: Mapping[str, str] | None = None,
    tokens_path: str | None = None,
) -> None:
    """The index of a synthetic set (`output`) from the rows its `generate` parts wrote,
    checked against the set's plan; it records the set's identity (`SyntheticSets.identity`) and
    how many parts made it. The set's `classes.json` and dataset card (`dafusion.data.card`)
    say what it holds and what made it (`code`: the fingerprint of the code that did)."""
    from .data.card import write_card
    from .data.manifest import class_names, read_manifest
    from .stages.synthetic import read_parts, variant_plan, write_index

    manifest = read_manifest(split_path)
    planned = variant_plan(manifest, seed, settings.num_synthetic, method.strengths)["key"]
    rows = read_parts(parts, planned, split_path)
    folder = Path(output).parent
    index = write_index(
        rows, folder, output, shard_size=settings.shard_size, parts=len(parts), identity=identity
    )
    title = (
        f"Synthetic set {folder.parent.name} of {folder.parent.parent.parent.name}, {folder.name}"
    )
    write_card(
        folder, index, class_names(manifest), identity, code or {}, settings.image_format, title,
        tokens_path,
    )  # fmt: skip
    log.info("%d images from %d part(s) in %s", len(index), len(parts), output)


def train(
    split_path: str,
    val_path: str,
    settings: ClassifierSettings,
    dataset: str,
    method: str,
    seed: int,
    shots: int,
    output: str,
    synthetic_index: str | None = None,
    num_synthetic: int | None = None,
    test_path: str | None = None,
    head_path: str | None = None,
    filter: Mapping[str, Any] | None = None,
    scores_path: str | None = None,
) -> None:
    """Train one classifier and write its metrics per evaluation step (val, and test), and
    with `head_path` what it trained after its last step (`classifier.save_head`).

    A run of M = `num_synthetic` reads the first M variants of each image of its set (a set
    shared with methods of a larger M holds more), less those its `filter` drops, read
    against the set's scores at `scores_path` (`mixing.select_variants`)."""
    from .data.manifest import class_names, read_manifest
    from .data.runs import RUN_COLUMNS
    from .data.shards import read_images
    from .jobs.devices import resolve_device
    from .stages.classifier import train_classifier
    from .stages.mixing import select_variants

    train_manifest = read_manifest(split_path)
    val_manifest = read_manifest(val_path)
    index = images = None
    if synthetic_index:
        selection = select_variants(synthetic_index, num_synthetic, filter, scores_path)
        index = selection.rows
        images = read_images(synthetic_index)
        if selection.filter is not None:
            log.info(
                "filter %s over %s keeps %d of %d synthetic images; %d real images keep none "
                "and are drawn as real",
                selection.filter.describe(), scores_path, len(index),
                len(selection.candidates), len(selection.emptied),
            )  # fmt: skip
        log.info("%d synthetic images from %s", len(index), synthetic_index)
    metrics = train_classifier(
        train_manifest,
        val_manifest,
        class_names(train_manifest),
        index,
        images,
        settings,
        seed,
        resolve_device(settings.device),
        test_manifest=read_manifest(test_path) if test_path else None,
        head_path=head_path,
    )
    metrics.insert(0, "shots", shots)
    metrics.insert(0, "seed", seed)
    metrics.insert(0, "method", method)
    metrics.insert(0, "dataset", dataset)
    best = metrics[metrics["metric"] == "accuracy"]["value"].max()
    log.info("best val accuracy %.4f", best)
    write_parquet(metrics[RUN_COLUMNS], output)


def score_classifier(
    index_path: str, head_path: str, output: str, settings: ScoringSettings
) -> None:
    """A set's `classifier` scores (`scores-classifier.parquet`): the confidence in each
    image's label and the top-1 label of the classifier a baseline run saved at
    `head_path` (its final step, trained on the real few-shot split only)."""
    from .jobs.devices import resolve_device
    from .stages.scoring import classifier

    device = resolve_device(settings.device)
    frame = classifier.write(index_path, head_path, output, device, settings.batch_size)
    log.info(
        "%d images scored by %s: mean confidence %.3f, top-1 is the label for %.1f%%",
        len(frame), head_path, frame["confidence"].mean() if len(frame) else float("nan"),
        100 * _top1_share(frame, index_path),
    )  # fmt: skip


def _top1_share(frame: pd.DataFrame, index_path: str) -> float:
    """The share of scored images whose top-1 class is their label (for the job's log)."""
    if frame.empty:
        return float("nan")
    labels = pd.read_parquet(index_path, columns=["key", "label"]).set_index("key")["label"]
    return float((frame["top1"].to_numpy() == labels.loc[frame["key"]].to_numpy()).mean())


def score_clip(index_path: str, output: str, settings: ScoringSettings) -> None:
    """A set's `clip` scores (`scores-clip.parquet`): the cosine similarity of each image
    and its class prompt (`settings.clip_prompt`) under `settings.clip_model`."""
    from .jobs.devices import resolve_device
    from .stages.scoring import clip

    device = resolve_device(settings.device)
    frame = clip.write(
        index_path, settings.clip_model, output, settings.clip_prompt, device,
        settings.batch_size,
    )  # fmt: skip
    mean = frame["clip_score"].mean() if len(frame) else float("nan")
    log.info("%d images scored by %s: mean CLIP score %.3f", len(frame), settings.clip_model, mean)


def score_change(index_path: str, split_path: str, output: str) -> None:
    """A set's `change` scores (`scores-change.parquet`): each image's mean absolute pixel
    difference from its source image of the few-shot split `split_path`."""
    from .stages.scoring import change

    frame = change.write(index_path, split_path, output)
    mean = frame["change"].mean() if len(frame) else float("nan")
    log.info("%d images scored: mean change %.3f", len(frame), mean)


def filtering(
    index_paths: Sequence[str],
    score_paths: Sequence[str],
    filters: Mapping[str, Mapping[str, Any]],
    own: Mapping[str, str],
    methods: Mapping[str, int],
    cells: Sequence[Sequence[int | str]],
    scorers: Sequence[str],
    shown: Sequence[int | str],
    table: str,
    figure: str,
    dataset: str = "",
    classes: int = 6,
) -> None:
    """A dataset's filters (`reporting.filtering`): per filter (by filtered method), per
    synthetic set, split and class, how many of its images the filter keeps and how many
    real images it empties (`table`); and the filtered methods' kept and dropped images of
    the split `shown` (`figure`, a PDF beside it). `methods` names one method per set and
    M, with its M; `own` the one of them that stands for each filtered method's images;
    `index_paths` holds each one's set per split (`methods`' order, then `cells`'),
    `score_paths` the same per scorer of `scorers`."""
    from .reporting.figures import save_figure
    from .reporting.filtering import filter_figure, keep_rates

    per = len(cells)
    sets = {
        method: {
            (int(seed), shots): (index_paths[i * per + j], size)
            for j, (seed, shots) in enumerate(cells)
        }
        for i, (method, size) in enumerate(methods.items())
    }
    scores = {
        scorer: {
            method: {
                (int(seed), shots): score_paths[(s * len(methods) + i) * per + j]
                for j, (seed, shots) in enumerate(cells)
            }
            for i, method in enumerate(methods)
        }
        for s, scorer in enumerate(scorers)
    }
    rates = keep_rates(sets, scores, filters, own, dataset)
    rates.to_csv(table, index=False, float_format="%.6f")
    overall = rates.groupby(["filter", "method"], sort=False)[["candidates", "kept"]].sum()
    log.info("images each filter keeps, over every split and class:\n%s", overall.to_string())
    cell = (int(shown[0]), shown[1])
    fig = filter_figure(sets, scores, filters, own, cell, classes=classes)
    save_figure(fig, figure.removesuffix(".png"))


def aggregate(
    run_paths: Sequence[str],
    methods: Sequence[str],
    layout: Sequence[Mapping],
    figures: Mapping[str, str],
    tables: Mapping[str, str],
    settings: AggregateSettings,
) -> None:
    """The summary tables and the figures named in `figures` (name -> PNG path; a PDF is
    written beside each). `layout` holds each (dataset, method)'s figure labels and
    resolved alpha and M, which the figures group runs by."""
    from .reporting.aggregate import write_summary

    runs = pd.concat([pd.read_parquet(p) for p in run_paths], ignore_index=True)
    summary = write_summary(runs, methods, layout, figures, tables, settings)
    log.info("summary:\n%s", summary.to_string(index=False))


def gallery(
    split_path: str,
    index_paths: Sequence[str],
    methods: Mapping[str, int],
    output: str,
    settings: AggregateSettings,
) -> None:
    """A dataset's gallery from the shards and index of each method (never regenerated);
    `methods` gives each one's M, in `index_paths`' order."""
    from .data.manifest import read_manifest
    from .reporting.figures import save_figure
    from .reporting.gallery import gallery_figure

    synthetic = {
        method: (pd.read_parquet(path), Path(path).parent, size)
        for (method, size), path in zip(methods.items(), index_paths, strict=True)
    }
    figure = gallery_figure(
        read_manifest(split_path),
        synthetic,
        images_per_class=settings.gallery_images_per_class,
        max_classes=settings.gallery_classes,
        variants=settings.gallery_variants,
    )
    save_figure(figure, output.removesuffix(".png"))


def recognition(
    split_paths: Sequence[str],
    index_paths: Sequence[str],
    methods: Mapping[str, int],
    table: str,
    figure: str,
    reference_dir: str,
) -> None:
    """The reference digit classifier's recognition rate per method and class: `index_paths`
    holds each method's sets (one per split, in `split_paths`' order) in `methods`' order,
    and `methods` each one's M; `reference_dir` holds the classifier (`place_shipped`)."""
    from .reporting.figures import save_figure
    from .reporting.recognition import recognition_figure, recognition_table
    from .shipped import placed_file

    per = len(split_paths)
    sets = {
        method: [(index_paths[i * per + j], m) for j in range(per)]
        for i, (method, m) in enumerate(methods.items())
    }
    frame = recognition_table(split_paths, sets, placed_file("reference-digits", reference_dir))
    frame.to_csv(table, index=False, float_format="%.6f")
    save_figure(recognition_figure(frame), figure.removesuffix(".png"))


def inversion_curves(loss_paths: Sequence[str], output: str) -> None:
    """A dataset's textual-inversion loss curves, one panel per tokens file, titled in
    words (`diagnostics.loss_title`)."""
    from .reporting.diagnostics import loss_figure, loss_title
    from .reporting.figures import save_figure

    curves = {loss_title(path): pd.read_parquet(path) for path in loss_paths}
    save_figure(loss_figure(curves), output.removesuffix(".png"))


def erasure_check(check_path: str, output: str) -> None:
    """A dataset's erasure check as a classes x deltas heatmap that flags failed erasures."""
    from .reporting.diagnostics import erasure_figure, failed_erasures
    from .reporting.figures import save_figure

    check = pd.read_parquet(check_path)
    failed = failed_erasures(check)
    if len(failed):
        log.warning("erasures that did not work:\n%s", failed.to_string(index=False))
    save_figure(erasure_figure(check), output.removesuffix(".png"))


def report(
    tables: Mapping[str, str],
    figures: Mapping[str, str],
    galleries: Sequence[str],
    recognition: Sequence[str],
    curves: Sequence[str],
    erasure: Sequence[str],
    captions: Mapping[str, str],
    benchmarks: str,
    config: Mapping,
    code: str,
    output: str,
    config_output: str,
    filtering: Sequence[str] = (),
    filtering_figures: Sequence[str] = (),
    filters: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> None:
    """results/report.html: every figure and table of the run in one page, with the
    provenance that makes it a research record (`report.results_report`); `filtering`
    and `filtering_figures`: the `filtering` jobs' tables and figures, `filters` each
    dataset's filters in words and their unfiltered twins."""
    from .reporting.report import results_report

    results_report(
        tables, figures, galleries, recognition, curves, erasure, captions, benchmarks, config,
        code, output, config_output, filtering=filtering, filtering_figures=filtering_figures,
        filters=filters or {},
    )  # fmt: skip
