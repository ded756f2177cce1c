"""The disk a config's grid needs (`python -m dafusion.workflow.estimate`'s second table):
each output's bytes. Synthetic images at their shard format's bytes per image, measured
(SHARD_IMAGE_BYTES); tokens files and erasure deltas from the model's architecture
(`architecture`: the text encoder's width, the UNet parameters an erasure changes);
classifier runs' metrics tables at a measured size per row."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import runtime
from .grid import check_numbers, dataset_classes, set_images
from .plan import Plan

if TYPE_CHECKING:
    from ..settings import ModelSettings

# A synthetic image's bytes in its shard, per `generation.image_format`, at
# SHARD_MEASURED_RESOLUTION px: `dafusion.data.shards.encode_image`'s bytes (lossless PNG,
# lossless WebP, JPEG at quality 95; Pillow 13.0), the mean over 8 photos resized to 512 x 512
# bilinear as the generation resizes its sources (scikit-image 0.26's astronaut, chelsea,
# coffee, motorcycle_left and rocket, scikit-learn's china and flower, matplotlib's
# grace_hopper; PNG 268,462 to 432,314 bytes), plus SHARD_SAMPLE_BYTES, the tar headers of a
# sample's three members (image, `cls`, `json`; a PAX header each, for the fixed float mtime):
# all 8 written 125 times into one 1,000-image shard by `shards.write_shard`, 5,827 to 5,950
# bytes a sample beyond the images. At another resolution the image bytes scale with the
# pixels (an approximation), and SDEdit's images, decoded by the VAE, may compress a little
# better than camera photos.
SHARD_MEASURED_RESOLUTION = 512
SHARD_IMAGE_BYTES = {"png": 375_941, "webp": 281_134, "jpg": 91_207}
SHARD_SAMPLE_BYTES = 5_900
SHARD_MEASURED = (
    "measured: 8 sample photos resized to 512 px, encoded and written into a shard as the "
    "generation does"
)
FORMAT_NAMES = {"png": "PNG", "webp": "WebP", "jpg": "JPEG"}
# A parquet table's bytes per row, written by `dafusion.jobs.io.write_parquet` (pandas,
# snappy) with random values: a run's metrics (20 classes, 50 evaluations, val and test: 2,300
# rows in 27,502 bytes, 10,300 rows in 107,727: about 4,400 bytes and 10 a row) and an
# inversion's loss table (1000 steps x 20 classes: 20,000 rows in 128,880 bytes).
RUN_FILE_BYTES = 4_400
RUN_ROW_BYTES = 10.0
LOSS_ROW_BYTES = 6.5
# A run's metrics per split and evaluation: accuracy, loss, mean class accuracy and one
# accuracy per class (`dafusion.stages.classifier.metrics_from_logits`).
RUN_METRICS = 3
# Bytes of a float32 (tokens, ESD's checkpoints) and of each `erasure.delta_dtype`.
FLOAT32_BYTES = 4
DTYPE_BYTES = {"float32": 4, "float16": 2}


@dataclass(frozen=True)
class Architecture:
    """What the disk of tokens and deltas needs of a model: its text encoder's width (a
    token vector's length) and the UNet parameters each erasure changes, by ESD's
    `erasure.train_method` and, for UCE, `uce` (cross-attention keys and values) or
    `uce-values` (values only, `edit_keys: false`)."""

    name: str
    text_width: int
    delta_parameters: Mapping[str, int]


# Counted with `dafusion.stages.erasure.trained_names` and `cross_attention_projections`
# on `dafusion.stages.tiny.sd_v1_unet()` (Stable Diffusion v1's UNet: 859,520,964 parameters,
# CLIP ViT-L/14's width 768) and on the tiny models' UNet (`tiny` and `tiny-digits`, one
# architecture; xlayer and selflayer name blocks it does not have).
SD_V1 = Architecture(
    "Stable Diffusion v1",
    768,
    {
        "full": 859_520_964, "xattn": 43_962_560, "noxattn": 813_495_680,
        "selfattn": 49_574_080, "notime": 857_458_240, "xlayer": 3_605_760,
        "selflayer": 8_193_920, "xattn-strict": 19_169_280, "uce": 19_169_280,
        "uce-values": 9_584_640,
    },
)  # fmt: skip
TINY = Architecture(
    "the tiny models",
    32,
    {
        "full": 985_444, "xattn": 49_408, "noxattn": 914_080, "selfattn": 65_792,
        "notime": 963_488, "xattn-strict": 16_384, "uce": 16_384, "uce-values": 8_192,
    },
)  # fmt: skip


# Counted the same way on `dafusion.stages.tiny.sdxl_unet()` (SDXL base's UNet, 2,567,463,684
# parameters) and the tiny SDXL's; a token's rows are in both text encoders (768 + 1280 wide,
# 32 + 32 in the tiny one).
SDXL = Architecture(
    "SDXL base",
    768 + 1280,
    {
        "full": 2_567_463_684, "xattn": 545_670_400, "noxattn": 2_019_730_560,
        "selfattn": 409_683_200, "notime": 2_565_400_960, "xattn-strict": 340_787_200,
        "uce": 340_787_200, "uce-values": 170_393_600,
    },
)  # fmt: skip
TINY_SDXL = Architecture(
    "the tiny SDXL",
    32 + 32,
    {
        "full": 1_028_708, "xattn": 65_792, "noxattn": 940_960, "selfattn": 65_792,
        "notime": 1_006_752, "xattn-strict": 32_768, "uce": 32_768, "uce-values": 16_384,
    },
)  # fmt: skip


def architecture(model: ModelSettings) -> Architecture | None:
    """The architecture of `model.pretrained`, where the estimate knows it: the embedded
    models', Stable Diffusion v1.x's (a hub id naming stable-diffusion-v1) and SDXL base's
    (a hub id naming stable-diffusion-xl-base)."""
    if model.pretrained == "tiny-sdxl":
        return TINY_SDXL
    if model.embedded:
        return TINY
    if re.search(r"stable-diffusion-xl-base\b", model.pretrained, re.IGNORECASE):
        return SDXL
    if re.search(r"stable-diffusion-v1\b", model.pretrained, re.IGNORECASE):
        return SD_V1
    return None


@dataclass(frozen=True)
class Output:
    """One kind of output of the grid: its files in words, its bytes (None: not known to
    the estimate) and what it holds, in words."""

    name: str
    files: str
    bytes: float | None
    holds: str


def image_bytes(image_format: str, resolution: int) -> float:
    """A synthetic image's bytes in its shard (SHARD_IMAGE_BYTES)."""
    scale = (resolution / SHARD_MEASURED_RESOLUTION) ** 2
    return SHARD_IMAGE_BYTES[image_format] * scale + SHARD_SAMPLE_BYTES


def run_rows(plan: Plan, dataset: str, method: str) -> int:
    """The rows of a run's metrics table, at most: every evaluation of val and test (a
    dataset without a test split has half as many)."""
    evaluations = runtime.evaluations(plan.classifier_for(dataset, method))
    return evaluations * 2 * (dataset_classes(plan, dataset) + RUN_METRICS)


def delta_parameters(plan: Plan) -> int | None:
    """The UNet parameters one erasure delta holds (None: not known to the estimate)."""
    arch, erasure = architecture(plan.model), plan.erasure
    if arch is None:
        return None
    if erasure.method == "esd":
        return arch.delta_parameters.get(erasure.train_method)
    return arch.delta_parameters["uce" if erasure.edit_keys else "uce-values"]


def disk(plan: Plan) -> list[Output]:
    """The bytes of each kind of output the grid keeps: synthetic shards, tokens, erasure
    deltas and classifier runs."""
    check_numbers(plan)
    resolution, cells = plan.model.resolution, len(plan.seeds) * len(plan.shots)
    arch = architecture(plan.model)
    images = shards = 0
    shard_bytes, formats, resized = 0.0, set(), False
    token_files = token_classes = runs = rows = 0
    for dataset in plan.datasets:
        classes = dataset_classes(plan, dataset)
        for name in plan.sets.by_name(dataset):
            generation = plan.sets.generation(dataset, name)
            count = set_images(plan, dataset, name)
            images += count
            shards += sum(
                -(-classes * int(k) * generation.num_synthetic // generation.shard_size)
                for k in plan.shots
            ) * len(plan.seeds)
            shard_bytes += count * image_bytes(generation.image_format, resolution)
            formats.add(generation.image_format)
            resized = resized or generation.resize_to_source
        # invert, invert_erased, lora (whose adapter, rank x width per projection, is small)
        kinds = {plan.token_job(dataset, m) for m in plan.token_methods(dataset)}
        token_files += len(kinds) * cells
        token_classes += len(kinds) * cells * classes
        for method, spec in plan.methods.items():
            if spec.runs_on(dataset):
                runs += cells
                rows += cells * run_rows(plan, dataset, method)
    holds = "no synthetic set"
    if formats:
        each = "; ".join(
            f"{FORMAT_NAMES[f]}, {image_bytes(f, resolution):,.0f} bytes an image"
            for f in sorted(formats)
        )
        scaled = "" if resolution == SHARD_MEASURED_RESOLUTION else ", scaled by pixels"
        holds = (
            f"{each} at {resolution} px (`generation.image_format`, `model.resolution`), "
            f"{SHARD_SAMPLE_BYTES:,} bytes of it tar headers ({SHARD_MEASURED}{scaled})"
        )
    if resized:
        holds += (
            ". `generation.resize_to_source` stores each image at its source's size instead, "
            "which the data gives: the bytes scale with the sources' pixels against "
            f"{resolution} × {resolution}"
        )
    synthetic = Output(
        "synthetic images", f"{images:,} images in {shards:,} shards", shard_bytes, holds
    )
    inversion = plan.inversion
    vectors = f"{inversion.num_vectors} vector{'s' if inversion.num_vectors > 1 else ''}"
    if arch is None:
        tokens = Output(
            "tokens", f"{token_files:,} tokens files", None,
            f"{vectors} a class of the text encoder's width: not known to the estimate for "
            f"'{plan.model.pretrained}'",
        )  # fmt: skip
    else:
        vector = inversion.num_vectors * arch.text_width * FLOAT32_BYTES
        losses = inversion.steps * token_classes * LOSS_ROW_BYTES
        tokens = Output(
            "tokens",
            f"{token_files:,} tokens files, each with its per-class copies and loss table",
            2 * token_classes * vector + losses,
            f"{token_classes:,} classes × {vectors} × {arch.text_width} ({arch.name}'s text "
            f"encoder) × {FLOAT32_BYTES} bytes, twice (the tokens file and its per-class "
            f"export); the loss tables, {inversion.steps} steps a class at about "
            f"{LOSS_ROW_BYTES} bytes a row (measured)",
        )
    erasure = plan.erasure
    deltas = sum(
        runtime.erase_deltas(erasure, dataset_classes(plan, d)) for d in plan.erased_datasets()
    )
    params = delta_parameters(plan)
    if erasure.method == "esd":
        changed = f"`erasure.train_method: {erasure.train_method}`"
    else:
        changed = "UCE's cross-attention " + ("keys and values" if erasure.edit_keys else "values")
    if params is None:
        what = f"the UNet parameters of {changed}: not known to the estimate for "
        what += f"'{plan.model.pretrained}'"
        delta_bytes = None if deltas else 0.0
    else:
        size = DTYPE_BYTES[erasure.delta_dtype]
        what = (
            f"{params:,} UNet parameters ({changed}) × {size} bytes "
            f"(`erasure.delta_dtype: {erasure.delta_dtype}`)"
        )
        delta_bytes = deltas * params * size
        if erasure.method == "esd" and deltas and 0 < erasure.checkpoint_every < erasure.iterations:
            checkpoint = 3 * params * FLOAT32_BYTES
            what += (
                f"; while an erase job runs, its ESD checkpoint takes {_gb(checkpoint)} GB "
                "more (the parameters and Adam's two moments in float32)"
            )
    outputs = [
        synthetic,
        tokens,
        Output("erasure deltas", f"{deltas:,} deltas", delta_bytes, what),
        Output(
            "classifier runs", f"{runs:,} metrics tables",
            runs * RUN_FILE_BYTES + rows * RUN_ROW_BYTES,
            f"{rows:,} rows at most (each evaluation's metrics on val and test; a dataset "
            f"without a test split has half), about {RUN_ROW_BYTES:.0f} bytes a row and "
            f"{RUN_FILE_BYTES:,} a table (measured)",
        ),
    ]  # fmt: skip
    return outputs


def _gb(size: float) -> str:
    """Bytes in GB (10^9 bytes): to 0.1 GB, to 0.001 GB below 1 GB."""
    gb = size / 1e9
    if gb >= 1 or gb == 0:
        return f"{gb:,.1f}"
    return f"{gb:.3f}" if gb >= 0.001 else "< 0.001"


def disk_table(plan: Plan) -> str:
    """`disk` as a markdown table: each output's files, GB and what they hold."""
    outputs = disk(plan)
    lines = ["| output | files | GB | what they hold |", "|---|---|---|---|"]
    for o in outputs:
        size = "not known" if o.bytes is None else _gb(o.bytes)
        lines.append(f"| {o.name} | {o.files} | {size} | {o.holds} |")
    total = sum(o.bytes for o in outputs if o.bytes is not None)
    unknown = [o.name for o in outputs if o.bytes is None]
    without = f" (without the {' and '.join(unknown)})" if unknown else ""
    lines.append(f"| total{without} | | {_gb(total)} | |")
    return "\n".join(lines) + "\n"
