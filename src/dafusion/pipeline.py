"""One function per workflow step, named after its rule: file paths and settings in, files out.

The Snakemake scripts only unpack the `snakemake` object and call these, so every step can
be run and tested without Snakemake. A step's function, with the library modules it imports,
is its rule's code rerun trigger (`dafusion.provenance`): keep each step's imports inside
its function, so that editing one stage's module reruns only the steps that use it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .io import resume_key, write_parquet
from .settings import (
    AggregateSettings,
    ClassifierSettings,
    DatasetSettings,
    ErasureSettings,
    GenerationSettings,
    InversionSettings,
    MethodSettings,
    ModelSettings,
)

log = logging.getLogger("dafusion")


def _model_source(model: ModelSettings, model_dir: str | None) -> str:
    """The path or hub id `from_pretrained` reads: an embedded model's folder (the job's
    model input), or the config's."""
    return model_dir if model.embedded else model.pretrained


def _load(model: ModelSettings, model_dir: str | None):
    from .devices import resolve_device, resolve_dtype
    from .models import load_components

    device = resolve_device(model.device)
    dtype = resolve_dtype(model.dtype, device)
    source = _model_source(model, model_dir)
    log.info("loading %s on %s (%s)", source, device, dtype)
    return load_components(source, device, dtype)


def _delta_of(deltas: Mapping, name: str):
    """A class's delta (file, fingerprint), with a clear error for a class not erased."""
    if name not in deltas:
        raise ValueError(
            f"class '{name}' has no erasure delta: the split and the eraser's check table "
            "disagree on the class names; rerun the erase job of this dataset"
        )
    return deltas[name]


def build_tiny_model(output_dir: str, resolution: int) -> None:
    from .tiny import save_tiny_model

    save_tiny_model(output_dir, resolution=resolution)
    log.info("tiny Stable Diffusion written to %s", output_dir)


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

    from .datasets import read_dataset
    from .io import atomic_path

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
    from .datasets import read_dataset
    from .manifest import write_manifest

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
    from .datasets import halve_per_seed
    from .manifest import read_manifest, write_manifest

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
    from .datasets import few_shot
    from .manifest import read_manifest, write_manifest

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
    import torch

    from .checkpoint import Checkpoint
    from .deltas import JOINT, DeltaSwitch, delta_meta, delta_path, save_delta
    from .erasure import erasure_scores, esd, uce
    from .manifest import class_names, read_manifest

    names = class_names(read_manifest(pool_path))
    # Training runs in float32 (or under bf16 autocast, erasure.precision) whatever
    # model.dtype is; the deltas are cast to the UNet's dtype when they are applied.
    model = model.replace(dtype="float32")
    components = _load(model, model_dir)
    folder = Path(output).parent
    folder.mkdir(parents=True, exist_ok=True)
    joint = settings.scope == "joint"
    units = {JOINT: list(names)} if joint else {name: [name] for name in names}
    paths = {key: delta_path(folder, None if key == JOINT else key) for key in units}
    for stale in folder.glob("*.safetensors"):
        if stale not in paths.values():
            stale.unlink()
    dtype = getattr(torch, settings.delta_dtype)
    fingerprints = {}
    for key, erased in units.items():
        prompts = [settings.prompt.format(name=n) for n in erased]
        preserve = [settings.prompt.format(name=n) for n in names if n not in erased]
        fingerprints[key] = resume_key(
            model=model.result_params(), erasure=settings.result_params(), erase=prompts,
            code=dict(code or {}), preserve=preserve if settings.method == "uce" else None,
        )  # fmt: skip
        path = paths[key]
        if path.exists() and delta_meta(path).get("fingerprint") == fingerprints[key]:
            log.info("%s: reusing %s", key, path)
            continue
        start = time.perf_counter()
        if settings.method == "uce":
            tensors = uce(components, prompts, preserve, settings)
        else:
            checkpoint = Checkpoint(
                folder / f".{path.stem}.checkpoint.safetensors", fingerprints[key]
            )
            tensors, losses = esd(
                components, prompts, settings, model.resolution, stream=key,
                checkpoint=checkpoint,
            )  # fmt: skip
            log.info("%s: ESD loss %.5f -> %.5f", key, losses[0], losses[-1])
        # What was erased and how, never when or how fast: a delta's bytes, like every
        # result's, depend only on its inputs (the time is in the log).
        meta = {
            "fingerprint": fingerprints[key], "erased": erased, "method": settings.method,
            "model": model.pretrained,
        }  # fmt: skip
        save_delta(path, tensors, dtype, meta)
        if settings.method == "esd":
            checkpoint.path.unlink(missing_ok=True)
        seconds = time.perf_counter() - start
        log.info("%s: erased %s in %.1fs -> %s", key, erased, seconds, path)
    switch = DeltaSwitch(components.unet)
    table = erasure_scores(components, switch, paths, units, names, settings, model.resolution)
    table.insert(1, "file", table["delta"].map(lambda k: paths[k].name))
    table.insert(2, "fingerprint", table["delta"].map(fingerprints))
    for key, group in table[table["erased"]].groupby("delta", sort=False):
        others = table[(table["delta"] == key) & ~table["erased"]]["erased_fraction"]
        log.info(
            "%s: erased %.3f (collateral: mean %.3f, max %.3f)", key,
            group["erased_fraction"].mean(), others.mean() if len(others) else 0.0,
            others.max() if len(others) else 0.0,
        )  # fmt: skip
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
    diffusers' `load_textual_inversion(path)` and AUTOMATIC1111 read) and the loss curves.
    A checkpoint beside the output lets a killed job resume; it is removed at the end.
    """
    import copy
    import dataclasses

    import numpy as np
    import torch

    from .checkpoint import Checkpoint
    from .deltas import DeltaSwitch, class_deltas
    from .images import load_image
    from .inversion import InversionResult, learn_tokens
    from .manifest import class_names, class_token, file_stem, read_manifest
    from .tokens import save_tokens

    manifest = read_manifest(split_path)
    names = class_names(manifest)
    # UNet and VAE in inversion.mixed_precision's dtype (CUDA only), as accelerate's
    # --mixed_precision casts them in the original; the text encoder holds the trainable
    # rows, so its weights stay in float32 and it runs under autocast (learn_tokens).
    components = _load(model.replace(dtype=settings.weight_dtype), model_dir)
    if components.unet.dtype != getattr(torch, settings.weight_dtype):
        log.info(
            "inversion.mixed_precision %s applies on CUDA: float32 on %s",
            settings.mixed_precision, components.unet.device,
        )  # fmt: skip
    components.text_encoder.to(torch.float32)
    out = Path(output)
    deltas = class_deltas(erasure_path) if erasure_path else {}
    job = resume_key(
        keys=manifest["key"].tolist(), labels=manifest["label"].tolist(), names=names,
        model=model.result_params(), settings=settings.result_params(), seed=seed,
        erasure={name: ref[1] for name, ref in deltas.items()},
    )  # fmt: skip
    switch = DeltaSwitch(components.unet)
    images = [load_image(r) for r in manifest.to_dict("records")]
    labels = manifest["label"].tolist()
    start = time.perf_counter()
    if len({path for path, _ in deltas.values()}) > 1:
        # Per-class erasure: class c's token is learned against the UNet with c erased.
        # Class-major order, one delta swap per class; each class's result equals its
        # joint-run result on that UNet (separate random streams and gradients).
        tokens, losses, tokenizer = {}, [], components.tokenizer
        for label, name in enumerate(names):
            switch.use_file(_delta_of(deltas, name)[0])
            rows = [i for i, y in enumerate(labels) if y == label]
            token = class_token(name)
            stem = f".{out.stem}.{file_stem(token.strip('<>'))}"
            part = learn_tokens(
                dataclasses.replace(components, tokenizer=copy.deepcopy(tokenizer)),
                [images[i] for i in rows], [0] * len(rows), [name], settings, seed=seed,
                resolution=model.resolution, keep_final=True,
                checkpoint=Checkpoint(
                    out.with_name(f"{stem}.checkpoint.safetensors"),
                    resume_key(job=job, class_name=name),
                ),
            )  # fmt: skip
            tokens.update(part.tokens)
            losses.append(part.losses)
        result = InversionResult(tokens, np.hstack(losses))
    else:
        if deltas:  # one joint delta for every class
            switch.use_file(_delta_of(deltas, names[0])[0])
        checkpoint = Checkpoint(out.with_name(f".{out.stem}.checkpoint.safetensors"), job)
        result = learn_tokens(
            components, images, labels, names, settings, seed=seed,
            resolution=model.resolution, checkpoint=checkpoint,
        )  # fmt: skip
    log.info("learned %d tokens in %.1fs", len(result.tokens), time.perf_counter() - start)
    # The configured model name, never the folder it was read from: results are portable.
    meta = {"classes": names, "model": str(model.pretrained), "seed": seed}
    if export_dir:
        folder = Path(export_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for token, rows in result.tokens.items():
            save_tokens(folder / f"{file_stem(token.strip('<>'))}.safetensors", {token: rows}, meta)
    if loss_path:
        steps, classes = result.losses.shape
        curves = pd.DataFrame(
            {
                "step": [s + 1 for s in range(steps) for _ in range(classes)],
                "class_name": names * steps,
                "token": list(result.tokens) * steps,
                "loss": result.losses.reshape(-1),
            }
        )
        write_parquet(curves, loss_path)
    save_tokens(output, result.tokens, meta)
    for stale in out.parent.glob(f".{out.stem}.*checkpoint.safetensors"):
        stale.unlink()


def _synthetic_job(
    split_path: str,
    model: ModelSettings,
    set_name: str,
    method: MethodSettings,
    settings: GenerationSettings,
    seed: int,
    model_dir: str | None,
    tokens_path: str | None,
    erasure_path: str | None,
) -> dict:
    """What every job writing shards of a synthetic set shares: the loaded engine, the plan
    (`work`), each image's shard json (`meta`) and the job's fingerprint (the sidecars')."""
    from .deltas import DeltaSwitch, class_deltas
    from .generation import Engine
    from .manifest import class_names, class_token, read_manifest
    from .models import load_safety_checker, scheduler_from_name
    from .synthetic import variant_plan
    from .tokens import expand, file_hash, load_into

    manifest = read_manifest(split_path)
    names = class_names(manifest)
    components = _load(model, model_dir)
    prompts, token_hash = {}, ""
    sizes = load_into(components, tokens_path) if tokens_path else {}
    if tokens_path:
        token_hash = file_hash(tokens_path)
    for label, name in enumerate(names):
        token = class_token(name)
        prompt = method.prompt.format(name=name, token=token)
        if token in sizes:
            prompt = expand(prompt, token, sizes[token])
        prompts[label] = prompt
    scheduler = scheduler_from_name(settings.scheduler, components.scheduler)
    deltas = class_deltas(erasure_path) if erasure_path else {}
    erasure = {label: _delta_of(deltas, name) for label, name in enumerate(names) if deltas}
    switch = DeltaSwitch(components.unet)  # before compile: it keeps the plain names
    if settings.compile:
        import torch

        components.unet = torch.compile(components.unet)
    checker = None
    if settings.safety_checker:
        checker = load_safety_checker(
            _model_source(model, model_dir), components.unet.device, components.unet.dtype
        )

    def on_class(label: int) -> None:
        switch.use_file(erasure[label][0])

    engine = Engine(
        components, scheduler, manifest, prompts, model.resolution, settings, checker,
        mask=method.mask, mask_dilation=method.mask_dilation,
        on_class=on_class if erasure else None,
    )  # fmt: skip
    records = manifest.to_dict("records")
    scheduler_name = type(scheduler).__name__

    def meta(item: Mapping) -> dict:
        source = records[item["row"]]
        return {
            "source_key": source["key"],
            "j": int(item["j"]),
            "label": int(source["label"]),
            "class_name": source["class_name"],
            "set": set_name,
            "strength": float(item["strength"]),
            "prompt": prompts[int(source["label"])],
            "guidance_scale": float(settings.guidance_scale),
            "scheduler": scheduler_name,
            "steps": int(settings.num_inference_steps),
            "seed": int(item["seed"]),
            "model_id": str(model.pretrained),
            "token_hash": token_hash,
            "erasure": erasure[int(source["label"])][1] if erasure else "",
        }

    work = variant_plan(manifest, seed, settings.num_synthetic, method.strengths).to_dict("records")
    job = resume_key(
        keys=manifest["key"].tolist(), prompts=prompts, method=method.result_params(),
        seed=seed, generation=settings.result_params(), model=model.result_params(),
        token_hash=token_hash, erasure={k: v[1] for k, v in erasure.items()},
    )  # fmt: skip
    return {"engine": engine, "work": work, "meta": meta, "fingerprint": job}


def _log_speed(rows: Sequence[Mapping], start: float) -> None:
    elapsed = time.perf_counter() - start
    dropped = sum(bool(r["dropped"]) for r in rows)
    log.info(
        "%d images (%d dropped) in %.1fs (%.2f img/s)", len(rows), dropped, elapsed,
        len(rows) / max(elapsed, 1e-9),
    )  # fmt: skip


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
) -> None:
    """SDEdit part `part` of `parts` of a synthetic set: the WebDataset shards of its run of
    the plan (`synthetic.shard_ranges`), written beside `output` (the part's rows, which
    `gather_synthetic` turns into the set's index).

    Finished shards of a killed run are reused, also those a job with another number of
    parts wrote. With `erasure_path` (an eraser's check table) class c's images come from
    the UNet with class c erased. A part beyond the set's shards (more parts than shards)
    writes no rows and loads no model.
    """
    import json

    from .io import atomic_path
    from .manifest import read_manifest
    from .synthetic import num_shards, shard_ranges, variant_plan, write_shards

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
        job = _synthetic_job(
            split_path, model, set_name, method, settings, seed, model_dir, tokens_path,
            erasure_path,
        )  # fmt: skip
        start = time.perf_counter()
        rows = write_shards(
            job["engine"], job["work"], Path(output).parent, seed=seed,
            shard_size=settings.shard_size, image_format=settings.image_format,
            fingerprint=job["fingerprint"], meta=job["meta"], shards=shards,
            workers=settings.workers or threads,
        )  # fmt: skip
        _log_speed(rows, start)
        job_fingerprint = job["fingerprint"]
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps({"fingerprint": job_fingerprint, "rows": rows}))


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
    checked against the set's plan; it records the set's identity (`Plan.set_identity`) and
    how many parts made it. The set's `classes.json` and dataset card (`dafusion.card`)
    say what it holds and what made it (`code`: the fingerprint of the code that did)."""
    import json

    from .card import write_card
    from .manifest import class_names, read_manifest
    from .synthetic import variant_plan, write_index

    records = [json.loads(Path(part).read_text()) for part in parts]
    fingerprints = {r["fingerprint"] for r in records if r["rows"]}
    if len(fingerprints) > 1:
        raise ValueError(
            f"the parts {', '.join(parts)} were written by jobs with different settings: "
            "delete them and rerun"
        )
    rows = [row for record in records for row in record["rows"]]
    manifest = read_manifest(split_path)
    planned = variant_plan(manifest, seed, settings.num_synthetic, method.strengths)["key"]
    keys = [row["key"] for row in rows]
    if sorted(keys) != sorted(planned):
        raise ValueError(
            f"the parts {', '.join(parts)} hold {len(keys)} images, not the {len(planned)} "
            f"planned for {split_path}: delete them and rerun"
        )
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
) -> None:
    """Train one classifier and write its metrics per evaluation step (val, and test).

    A run of M = `num_synthetic` reads the first M variants of each image of its set (a set
    shared with methods of a larger M holds more)."""
    from .classifier import train_classifier
    from .devices import resolve_device
    from .manifest import class_names, read_manifest
    from .mixing import kept_variants
    from .runs import RUN_COLUMNS
    from .shards import read_images

    train_manifest = read_manifest(split_path)
    val_manifest = read_manifest(val_path)
    index = images = None
    if synthetic_index:
        index = kept_variants(pd.read_parquet(synthetic_index), num_synthetic)
        images = read_images(synthetic_index)
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
    )
    metrics.insert(0, "shots", shots)
    metrics.insert(0, "seed", seed)
    metrics.insert(0, "method", method)
    metrics.insert(0, "dataset", dataset)
    best = metrics[metrics["metric"] == "accuracy"]["value"].max()
    log.info("best val accuracy %.4f", best)
    write_parquet(metrics[RUN_COLUMNS], output)


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
    from . import aggregate as agg
    from . import figures as fig

    runs = pd.concat([pd.read_parquet(p) for p in run_paths], ignore_index=True)
    best = agg.best_steps(runs, settings.metric, settings.selection, settings.report_split)
    summary = agg.summarize(best)
    frames = {
        "summary": summary,
        "scores": agg.overall_scores(best),
        "novelty": agg.novelty_scores(best, settings.novelty),
        "paired": agg.paired_deltas(best, settings.baseline),
        "areas": agg.curve_areas(best),
        "per_class": agg.per_class(runs, best),
        "runs": agg.run_table(best),
        "validation": agg.validation_curves(runs, settings.metric),
    }
    for name, frame in frames.items():
        Path(tables[name]).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(tables[name], index=False, float_format="%.6f")
    Path(tables["markdown"]).write_text(agg.markdown_table(summary))
    layout = pd.DataFrame(list(layout))

    def labelled(label: str) -> list[str]:
        members = set(layout.loc[layout["figures"].map(lambda f: label in f), "method"])
        return [m for m in methods if m in members]

    def draw(name: str):
        if name == "accuracy":
            return fig.accuracy_figure(summary, methods)
        if name == "scores":
            return fig.score_figure(frames["scores"], methods)
        if name == "per-class":
            return fig.per_class_figure(frames["per_class"], methods)
        if name == "validation":
            return fig.validation_figure(frames["validation"], methods, settings.metric)
        if name == "novelty":
            return fig.novelty_figure(frames["novelty"], methods)
        if name == "paired":
            return fig.paired_figure(frames["paired"], methods)
        if name == "figure-11":
            grid, reference = data_balance_grid(best, layout, settings.baseline)
            return fig.grid_figure(grid, reference)
        label = name.removeprefix("figure-")
        members = labelled(label)
        part = summary[summary["method"].isin(members)]
        return fig.accuracy_figure(part, members, title=f"Figure {label}")

    for name, path in figures.items():
        fig.save_figure(draw(name), str(path).removesuffix(".png"))
    log.info("summary:\n%s", summary.to_string(index=False))


def data_balance_grid(
    best: pd.DataFrame, layout: pd.DataFrame, baseline: str
) -> tuple[pd.DataFrame, str]:
    """Figure 11's cells: each method labelled 11 against the method labelled
    "11-reference" with the same alpha and M (the paper compares DA-Fusion with Real
    Guidance at equal settings), or against the baseline when no method is so labelled
    (`aggregate.grid_references`, checked at start-up)."""
    from . import aggregate as agg

    references = agg.grid_references(layout, baseline)
    if set(references.values()) <= {baseline}:
        return agg.ablation_grid(best, layout, baseline), baseline
    parts = [
        agg.ablation_grid(best, layout[layout["method"] == method], reference)
        for method, reference in references.items()
    ]
    return pd.concat(parts, ignore_index=True), "the 11-reference method with the same alpha and M"


def gallery(
    split_path: str,
    index_paths: Sequence[str],
    methods: Mapping[str, int],
    output: str,
    settings: AggregateSettings,
) -> None:
    """A dataset's gallery from the shards and index of each method (never regenerated);
    `methods` gives each one's M, in `index_paths`' order."""
    from .figures import save_figure
    from .gallery import gallery_figure
    from .manifest import read_manifest

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
    from .figures import save_figure
    from .recognition import recognition_figure, recognition_table
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
    """A dataset's textual-inversion loss curves, one panel per tokens file."""
    from .diagnostics import loss_figure
    from .figures import save_figure

    curves = {}
    for path in loss_paths:
        path = Path(path)
        run = path.name.removesuffix("-loss.parquet")
        eraser = path.parent.name if path.parent.name != "tokens" else ""
        curves[f"{eraser} {run}".strip()] = pd.read_parquet(path)
    save_figure(loss_figure(curves), output.removesuffix(".png"))


def erasure_check(check_path: str, output: str) -> None:
    """A dataset's erasure check as a classes x deltas heatmap that flags failed erasures."""
    from .diagnostics import erasure_figure, failed_erasures
    from .figures import save_figure

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
) -> None:
    """results/report.html: every figure and table of the run, with captions, in one page,
    and the provenance that makes it a research record: the resolved config (saved as
    `config_output` too), the model, the code fingerprint and the library versions. Its
    header says what the values are (metric, split, step selection), read from the summary
    table; a banner says so when a random-weight model made the images."""
    from .diagnostics import benchmark_table
    from .figures import measure
    from .provenance import library_versions
    from .record import LIBRARIES, banner, config_text, write_config
    from .report import Figure, Preformatted, Section, Table, write_report

    def figure(name: str, title: str) -> Figure:
        return Figure(Path(figures[name]), title, captions[name])

    def table(name: str, title: str, text: str) -> Table:
        return Table(pd.read_csv(tables[name]), title, text)

    def values_of(name: str, what: str) -> str:
        return f"The values of the figure above, {what}: tables/{name}.csv."

    runs = pd.read_csv(tables["summary"])
    values = ", ".join(measure(runs)) if len(runs) else "none"
    accuracy = [figure("accuracy", "Accuracy against examples per class")]
    accuracy += [
        Figure(
            Path(p),
            f"Recognized by the reference classifier: {Path(p).stem.removeprefix('recognition-')}",
            captions["recognition"],
        )
        for p in recognition
    ]
    accuracy += [
        figure(name, f"Figure {name.removeprefix('figure-')} of the paper")
        for name in figures
        if name.startswith("figure-") and name != "figure-11"
    ]
    accuracy.append(
        table("summary", "Summary", f"Values: {values}. Per dataset, method and examples per "
              "class: the mean over seeds, its 68% interval (± one standard error) and the "
              "number of seeds; the split, metric and selection columns say what was averaged. "
              "tables/summary.csv and tables/summary.md hold it.")
    )  # fmt: skip
    classes = pd.read_csv(tables["per_class"])
    by_class = classes.pivot_table(
        index=["dataset", "shots", "class_name"], columns="method", values="accuracy_mean"
    )
    by_class = by_class[[m for m in dict.fromkeys(runs["method"]) if m in by_class.columns]]
    per_class = [
        figure("per-class", "Accuracy per class"),
        Table(by_class, "Accuracy per class, every shot count", "Mean over seeds of each "
              "class's accuracy at the selected step, one column per method; "
              "tables/per_class.csv adds the 68% intervals and seed counts."),
    ]  # fmt: skip
    run_rows = pd.read_csv(tables["runs"])
    by_run = run_rows.pivot_table(index=["dataset", "method", "seed"], columns="shots",
                                  values="value")  # fmt: skip
    by_run.columns = [f"{shots} per class" for shots in by_run.columns]
    per_run = [
        Table(by_run, "Every run", f"Values: {values}. One row per dataset, method and seed, "
              "one column per number of examples per class: each run's value before any "
              "averaging; tables/runs.csv adds the step it was read at."),
        figure("validation", "Validation curves"),
    ]  # fmt: skip
    scores = [figure("scores", "Overall normalized score")]
    scores.append(table("scores", "Overall normalized score, values", values_of(
        "scores", "with the number of trials")))  # fmt: skip
    if "novelty" in figures:
        scores += [figure("novelty", "Concept novelty")]
        scores.append(table("novelty", "Concept novelty, values", values_of(
            "novelty", "per bin and method")))  # fmt: skip
    paired = (
        [figure("paired", "Paired improvement over the baseline")] if "paired" in figures else []
    )
    paired.append(table("paired", "Paired improvement, values", "Per dataset, method and "
                        "examples per class: the mean paired difference to the baseline "
                        "over seeds, ± one standard error (tables/paired.csv)."))  # fmt: skip
    paired.append(
        table("areas", "Area under the accuracy curve", f"Values: {values}. Per dataset and "
              "method: the area under the value against log2 examples per class (trapezoid "
              "rule) divided by the log2 range, so a mean value over shot counts; mean ± one "
              "standard error over seeds.")
    )  # fmt: skip
    ablations = [figure("figure-11", "Data balance (Figure 11)")] if "figure-11" in figures else []
    images = [
        Figure(Path(p), f"Gallery: {Path(p).stem.removeprefix('gallery-')}", captions["gallery"])
        for p in galleries
    ]
    diagnostics = [
        Figure(
            Path(p),
            f"Inversion loss: {Path(p).stem.removeprefix('inversion-loss-')}",
            captions["inversion"],
        )
        for p in curves
    ]
    diagnostics += [
        Figure(
            Path(p), f"Erasure check: {Path(p).stem.removeprefix('erasure-')}", captions["erasure"]
        )  # fmt: skip
        for p in erasure
    ]
    root = Path(benchmarks)
    timings = benchmark_table(sorted(root.rglob("*.tsv")), root)
    diagnostics.append(
        Table(
            timings,
            "Time and memory per rule",
            "From Snakemake's benchmark files (results/benchmarks/): jobs per rule, their "
            "summed and longest wall time, the largest peak resident memory (MB) and the "
            "summed CPU time. This report's own job is not counted.",
            float_format="{:.1f}",
        )
    )
    pretrained = config["model"]["pretrained"]
    versions = pd.DataFrame(library_versions(LIBRARIES).items(), columns=["library", "version"])
    provenance = [
        Table(pd.DataFrame({"item": ["model", "code fingerprint"], "value": [pretrained, code]}),
              "Model and code", "The model every generative stage loaded (model.pretrained), "
              "and a digest of the code every rule ran (dafusion.provenance): the same "
              "fingerprint, the same code."),
        Table(versions, "Library versions", "As installed where this report was written."),
        Preformatted(config_text(config), "Resolved config", "Every setting the results "
                     "depend on, defaults filled in (execution knobs left out); saved as "
                     "results/config.yaml, which --configfile reads."),
    ]  # fmt: skip
    sections = [
        Section("Accuracy", accuracy, "Few-shot classification accuracy of every method."),
        Section("Per-class accuracy", per_class, "Which classes each method gets right."),
        Section("Runs", per_run, "Every classifier run, and how its training went."),
        Section("Normalized scores", scores, "Scores comparable across datasets."),
        Section("Improvement over the baseline", paired, "Per-seed paired differences."),
        Section("Ablations", ablations, "Figure 11's alpha x M grid."),
        Section("Synthetic images", images, "What the generated images look like."),
        Section("Diagnostics", diagnostics, "Inversion, erasure, time and memory."),
        Section("Provenance", provenance, "What made these results."),
    ]
    meta = {
        "values": values,
        "datasets": ", ".join(sorted(runs["dataset"].unique())),
        "methods": ", ".join(dict.fromkeys(runs["method"])),
        "seeds per point": str(int(runs["num_seeds"].max())) if len(runs) else "0",
        "model": pretrained,
        "generated": time.strftime("%Y-%m-%d %H:%M"),
    }
    write_config(config_output, config)
    write_report(output, "DA-Fusion results", sections, meta, banner=banner(pretrained))
