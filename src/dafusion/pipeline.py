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

import pandas as pd

from .io import fingerprint, write_parquet
from .settings import (
    AggregateSettings,
    ClassifierSettings,
    DatasetSettings,
    GenerationSettings,
    InversionSettings,
    MethodSettings,
    ModelSettings,
)

log = logging.getLogger("dafusion")


def _model_source(model: ModelSettings, model_dir: str | None) -> str:
    """The path or hub id `from_pretrained` reads: the built tiny model, or the config's."""
    return model_dir if model.pretrained == "tiny" else model.pretrained


def _load(model: ModelSettings, model_dir: str | None):
    from .devices import resolve_device, resolve_dtype
    from .models import load_components

    device = resolve_device(model.device)
    dtype = resolve_dtype(model.dtype, device)
    source = _model_source(model, model_dir)
    log.info("loading %s on %s (%s)", source, device, dtype)
    return load_components(source, device, dtype)


def build_tiny_model(output_dir: str, resolution: int) -> None:
    from .tiny import save_tiny_model

    save_tiny_model(output_dir, resolution=resolution)
    log.info("tiny Stable Diffusion written to %s", output_dir)


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

    Path(mask_dir).mkdir(parents=True, exist_ok=True)
    pool, val, test = read_dataset(spec, base_dir, mask_dir=mask_dir, threads=threads)
    log.info(
        "%s: %d training, %d evaluation, %d test images, %d classes",
        spec.kind, len(pool), len(val), len(test), pool["label"].nunique(),
    )  # fmt: skip
    write_parquet(test, test_path)
    write_parquet(val, val_path)
    write_parquet(pool, pool_path)


def seed_split(pool_path: str, seed: int, pool_output: str, val_output: str) -> None:
    """Halve the pool per seed, as the original DA-Fusion code did (split_protocol:
    original-code): this seed's training pool and evaluation manifest."""
    from .datasets import halve_per_seed

    pool, val = halve_per_seed(pd.read_parquet(pool_path), seed)
    log.info("seed %d: %d training, %d evaluation images", seed, len(pool), len(val))
    write_parquet(val, val_output)
    write_parquet(pool, pool_output)


def few_shot_split(
    pool_path: str, seed: int, shots: int, output: str, allow_fewer: bool = False
) -> None:
    """The nested few-shot training manifest of one (seed, shots)."""
    from .datasets import few_shot

    subset = few_shot(pd.read_parquet(pool_path), seed, shots, allow_fewer=allow_fewer)
    log.info("seed %d, %d shots: %d images", seed, shots, len(subset))
    write_parquet(subset, output)


def invert(
    split_path: str,
    model: ModelSettings,
    settings: InversionSettings,
    seed: int,
    output: str,
    model_dir: str | None = None,
    export_dir: str | None = None,
    loss_path: str | None = None,
) -> None:
    """Learn one token per class of the split in a single job.

    Writes the tokens file, optionally one single-key safetensors file per class (the form
    diffusers' `load_textual_inversion(path)` and AUTOMATIC1111 read) and the loss curves.
    A checkpoint beside the output lets a killed job resume; it is removed at the end.
    """
    import torch

    from .images import load_image
    from .inversion import Checkpoint, learn_tokens
    from .manifest import class_names
    from .tokens import save_tokens

    manifest = pd.read_parquet(split_path)
    names = class_names(manifest)
    components = _load(model, model_dir)
    # The text encoder holds the trainable rows: keep it in float32 under mixed precision.
    components.text_encoder.to(torch.float32)
    out = Path(output)
    checkpoint = Checkpoint(
        out.with_name(f".{out.stem}.checkpoint.safetensors"),
        fingerprint(
            keys=manifest["key"].tolist(),
            labels=manifest["label"].tolist(),
            names=names,
            model=model.result_params(),
            settings=settings.result_params(),
            seed=seed,
        ),
    )
    start = time.perf_counter()
    result = learn_tokens(
        components,
        [load_image(r) for r in manifest.to_dict("records")],
        manifest["label"].tolist(),
        names,
        settings,
        seed=seed,
        resolution=model.resolution,
        checkpoint=checkpoint,
    )
    log.info("learned %d tokens in %.1fs", len(result.tokens), time.perf_counter() - start)
    meta = {"classes": names, "model": components.model_id, "seed": seed}
    if export_dir:
        folder = Path(export_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for token, rows in result.tokens.items():
            save_tokens(folder / f"{token.strip('<>')}.safetensors", {token: rows}, meta)
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
    checkpoint.path.unlink(missing_ok=True)


def generate(
    split_path: str,
    model: ModelSettings,
    method_name: str,
    method: MethodSettings,
    settings: GenerationSettings,
    seed: int,
    output: str,
    model_dir: str | None = None,
    tokens_path: str | None = None,
    threads: int = 2,
) -> None:
    """SDEdit M images per real image into WebDataset shards beside `output` (index.parquet).

    Finished shards of a killed run of the same job are reused.
    """
    from .generation import Engine, plan
    from .manifest import class_names, class_token
    from .models import load_safety_checker, scheduler_from_name
    from .synthetic import build
    from .tokens import expand, file_hash, load_into

    manifest = pd.read_parquet(split_path)
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
    if settings.compile:
        import torch

        components.unet = torch.compile(components.unet)
    checker = None
    if settings.safety_checker:
        checker = load_safety_checker(
            _model_source(model, model_dir), components.unet.device, components.unet.dtype
        )
    engine = Engine(
        components, scheduler, manifest, prompts, model.resolution, settings, checker,
        mask=method.mask, mask_dilation=method.mask_dilation,
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
            "method": method_name,
            "strength": float(item["strength"]),
            "prompt": prompts[int(source["label"])],
            "guidance_scale": float(settings.guidance_scale),
            "scheduler": scheduler_name,
            "steps": int(settings.num_inference_steps),
            "seed": int(item["seed"]),
            "model_id": str(model.pretrained),
            "token_hash": token_hash,
        }

    work = plan(manifest, seed, settings.num_synthetic, method.strengths).to_dict("records")
    job = fingerprint(
        keys=manifest["key"].tolist(), prompts=prompts, method=method.result_params(),
        seed=seed, generation=settings.result_params(), model=model.result_params(),
        token_hash=token_hash,
    )  # fmt: skip
    start = time.perf_counter()
    index = build(
        engine, work, Path(output).parent, output, seed=seed, shard_size=settings.shard_size,
        image_format=settings.image_format, fingerprint=job, meta=meta,
        workers=settings.workers or threads,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    log.info(
        "%d images (%d dropped) in %.1fs (%.2f img/s)", len(index), int(index["dropped"].sum()),
        elapsed, len(index) / max(elapsed, 1e-9),
    )  # fmt: skip


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
    test_path: str | None = None,
) -> None:
    """Train one classifier and write its metrics per evaluation step (val, and test)."""
    from .classifier import train_classifier
    from .devices import resolve_device
    from .manifest import class_names
    from .runs import RUN_COLUMNS
    from .shards import read_images

    train_manifest = pd.read_parquet(split_path)
    val_manifest = pd.read_parquet(val_path)
    index = images = None
    if synthetic_index:
        index = pd.read_parquet(synthetic_index)
        index = index[~index["dropped"]].reset_index(drop=True)
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
        test_manifest=pd.read_parquet(test_path) if test_path else None,
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
    figure: str,
    table: str,
    settings: AggregateSettings,
) -> None:
    """Figure of accuracy against examples per class and the summary table."""
    from . import aggregate as agg

    runs = pd.concat([pd.read_parquet(p) for p in run_paths], ignore_index=True)
    summary = agg.summarize(agg.best_steps(runs, report_split=settings.report_split))
    Path(table).parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(table, index=False, float_format="%.6f")
    Path(figure).parent.mkdir(parents=True, exist_ok=True)
    agg.plot(summary, figure, methods)
    log.info("summary:\n%s", summary.to_string(index=False))
