"""One function per workflow step: file paths and config slices in, files out.

The Snakemake scripts only unpack the `snakemake` object and call these, so every step can
be run and tested without Snakemake.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from . import aggregate as agg
from .io import fingerprint, write_parquet

log = logging.getLogger("dafusion")


def _model_source(model_cfg: Mapping, model_dir: str | None) -> str:
    """The path or hub id `from_pretrained` reads: the built tiny model, or the config's."""
    return model_dir if model_cfg["pretrained"] == "tiny" else model_cfg["pretrained"]


def _load(model_cfg: Mapping, model_dir: str | None):
    from .models import load_components, resolve_device, resolve_dtype

    device = resolve_device(model_cfg.get("device", "auto"))
    dtype = resolve_dtype(model_cfg.get("dtype", "float32"), device)
    source = _model_source(model_cfg, model_dir)
    log.info("loading %s on %s (%s)", source, device, dtype)
    return load_components(source, device, dtype)


def build_model(output_dir: str, resolution: int) -> None:
    from .tiny import save_tiny_model

    save_tiny_model(output_dir, resolution=resolution)
    log.info("tiny Stable Diffusion written to %s", output_dir)


def index_dataset(
    spec: Mapping,
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
        spec["kind"],
        len(pool),
        len(val),
        len(test),
        pool["label"].nunique(),
    )
    write_parquet(test, test_path)
    write_parquet(val, val_path)
    write_parquet(pool, pool_path)


def few_shot_split(
    pool_path: str, seed: int, shots: int, output: str, allow_fewer: bool = False
) -> None:
    from .datasets import few_shot

    subset = few_shot(pd.read_parquet(pool_path), seed, shots, allow_fewer=allow_fewer)
    log.info("seed %d, %d shots: %d images", seed, shots, len(subset))
    write_parquet(subset, output)


def invert(
    split_path: str,
    model_cfg: Mapping,
    inversion_cfg: Mapping,
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

    from .datasets import class_names, load_image
    from .inversion import Checkpoint, InversionSettings
    from .inversion import invert as run
    from .tokens import save_tokens

    manifest = pd.read_parquet(split_path)
    names = class_names(manifest)
    components = _load(model_cfg, model_dir)
    # The text encoder holds the trainable rows: keep it in float32 under mixed precision.
    components.text_encoder.to(torch.float32)
    settings = InversionSettings(**inversion_cfg)
    out = Path(output)
    checkpoint = Checkpoint(
        out.with_name(f".{out.stem}.checkpoint.safetensors"),
        fingerprint(
            keys=manifest["key"].tolist(),
            labels=manifest["label"].tolist(),
            names=names,
            model=model_cfg,
            settings=settings,
            seed=seed,
        ),
    )
    start = time.perf_counter()
    result = run(
        components,
        [load_image(r) for r in manifest.to_dict("records")],
        manifest["label"].tolist(),
        names,
        settings,
        seed=seed,
        resolution=model_cfg["resolution"],
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
    model_cfg: Mapping,
    method_name: str,
    method: Mapping,
    generation_cfg: Mapping,
    seed: int,
    output: str,
    model_dir: str | None = None,
    tokens_path: str | None = None,
    threads: int = 2,
) -> None:
    """SDEdit M images per real image into WebDataset shards beside `output` (index.parquet).

    Finished shards of a killed run of the same job are reused.
    """
    from .datasets import class_names
    from .generation import Engine, GenerationSettings, plan
    from .models import load_safety_checker, scheduler_from_name
    from .synthetic import build
    from .tokens import class_token, expand, file_hash, load_into

    manifest = pd.read_parquet(split_path)
    names = class_names(manifest)
    components = _load(model_cfg, model_dir)
    prompts, token_hash = {}, ""
    sizes = load_into(components, tokens_path) if tokens_path else {}
    if tokens_path:
        token_hash = file_hash(tokens_path)
    for label, name in enumerate(names):
        token = class_token(name)
        prompt = method["prompt"].format(name=name, token=token)
        if token in sizes:
            prompt = expand(prompt, token, sizes[token])
        prompts[label] = prompt
    scheduler = scheduler_from_name(generation_cfg["scheduler"], components.scheduler)
    if generation_cfg.get("compile"):
        import torch

        components.unet = torch.compile(components.unet)
    checker = None
    if generation_cfg.get("safety_checker"):
        checker = load_safety_checker(
            _model_source(model_cfg, model_dir), components.unet.device, components.unet.dtype
        )
    settings = GenerationSettings(
        num_synthetic=generation_cfg["num_synthetic"],
        guidance_scale=generation_cfg["guidance_scale"],
        num_inference_steps=generation_cfg["num_inference_steps"],
        batch_size=generation_cfg["batch_size"],
        resize_to_source=generation_cfg["resize_to_source"],
    )
    engine = Engine(
        components, scheduler, manifest, prompts, model_cfg["resolution"], settings, checker,
        max_retries=generation_cfg.get("safety_retries", 3), mask=method.get("mask", "none"),
        mask_dilation=method.get("mask_dilation", 16),
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
            "model_id": str(model_cfg["pretrained"]),
            "token_hash": token_hash,
        }

    work = plan(manifest, seed, settings.num_synthetic, method["strengths"]).to_dict("records")
    job = fingerprint(
        keys=manifest["key"].tolist(), prompts=prompts, method=method, seed=seed,
        generation={k: v for k, v in generation_cfg.items() if k not in ("batch_size", "workers")},
        model=model_cfg, token_hash=token_hash,
    )  # fmt: skip
    start = time.perf_counter()
    index = build(
        engine, work, Path(output).parent, output, seed=seed,
        shard_size=generation_cfg["shard_size"], image_format=generation_cfg["image_format"],
        fingerprint=job, meta=meta, workers=generation_cfg.get("workers") or threads,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    log.info(
        "%d images (%d dropped) in %.1fs (%.2f img/s)", len(index), int(index["dropped"].sum()),
        elapsed, len(index) / max(elapsed, 1e-9),
    )  # fmt: skip


def train(
    split_path: str,
    val_path: str,
    classifier_cfg: Mapping,
    dataset: str,
    method: str,
    seed: int,
    shots: int,
    output: str,
    synthetic_index: str | None = None,
    test_path: str | None = None,
) -> None:
    """Train one classifier and write its metrics per evaluation step (val, and test)."""
    from .classifier import ClassifierSettings
    from .classifier import train as run
    from .datasets import class_names
    from .models import resolve_device
    from .shards import read_images

    train_manifest = pd.read_parquet(split_path)
    val_manifest = pd.read_parquet(val_path)
    index = images = None
    if synthetic_index:
        index = pd.read_parquet(synthetic_index)
        index = index[~index["dropped"]].reset_index(drop=True)
        images = read_images(synthetic_index)
        log.info("%d synthetic images from %s", len(index), synthetic_index)
    cfg = {k: v for k, v in classifier_cfg.items() if k != "device"}
    metrics = run(
        train_manifest,
        val_manifest,
        class_names(train_manifest),
        index,
        images,
        ClassifierSettings(**cfg),
        seed,
        resolve_device(classifier_cfg.get("device", "auto")),
        test_manifest=pd.read_parquet(test_path) if test_path else None,
    )
    metrics.insert(0, "shots", shots)
    metrics.insert(0, "seed", seed)
    metrics.insert(0, "method", method)
    metrics.insert(0, "dataset", dataset)
    best = metrics[metrics["metric"] == "accuracy"]["value"].max()
    log.info("best val accuracy %.4f", best)
    write_parquet(metrics[agg.RUN_COLUMNS], output)


def aggregate(
    run_paths: Sequence[str],
    methods: Sequence[str],
    figure: str,
    table: str,
    report_split: str = "test",
) -> None:
    """Figure of accuracy against examples per class and the summary table."""
    runs = pd.concat([pd.read_parquet(p) for p in run_paths], ignore_index=True)
    summary = agg.summarize(agg.best_steps(runs, report_split=report_split))
    Path(table).parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(table, index=False, float_format="%.6f")
    Path(figure).parent.mkdir(parents=True, exist_ok=True)
    agg.plot(summary, figure, methods)
    log.info("summary:\n%s", summary.to_string(index=False))
