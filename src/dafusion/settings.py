"""Typed settings: one object per config section, the only place the library reads them.

Every field is one of two kinds:

- a **result setting** changes what a job writes. Rules receive the result settings their
  outputs depend on through `params:` (`result_params`), so changing one reruns exactly the
  jobs it affects;
- an **execution knob** (`knob(...)`) changes only how fast or where a job runs: device,
  batch sizes, workers, chunking, checkpoint interval, compile. Knobs never travel in
  `params:`; a job reads them from the config (`from_parts`), so changing one reruns nothing.

A few fields of dataset and method entries shape other settings or the set of jobs instead
(`layout(...)`): per-dataset and per-method overrides of `generation:` and `classifier:`,
which `resolve` merges into those sections' params of exactly the jobs they concern, and
which datasets a method runs on. They are never their own section's params.

The defaults here equal the schema's (`src/dafusion/config.schema.yaml`); a test compares
every key. This module imports nothing heavy: the Snakefile uses it at start-up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

S = TypeVar("S", bound="Settings")


def knob(default: Any) -> Any:
    """An execution knob: a field that changes how a job runs, never what it writes."""
    return field(default=default, metadata={"knob": True})


def layout(**default: Any) -> Any:
    """A field that shapes other sections' settings or the set of jobs (module docstring):
    `layout(default=x)` or `layout(default_factory=f)`."""
    return field(**default, metadata={"layout": True})


@dataclass(frozen=True)
class Settings:
    """Base of every section's settings."""

    @classmethod
    def knob_keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.metadata.get("knob")]

    @classmethod
    def result_keys(cls) -> list[str]:
        return [
            f.name
            for f in dataclasses.fields(cls)
            if not f.metadata.get("knob") and not f.metadata.get("layout")
        ]

    @classmethod
    def from_config(cls: type[S], section: Mapping[str, Any]) -> S:
        """Settings from a validated config section (every key known)."""
        return cls(**section)

    @classmethod
    def resolve(cls: type[S], section: Mapping[str, Any], *overrides: Mapping[str, Any]) -> S:
        """The settings of one job: the section, then a dataset's and a method's overrides
        (later ones win; overrides hold result settings only, checked at start-up)."""
        merged = dict(section)
        for override in overrides:
            merged.update(override)
        return cls.from_config(merged)

    @classmethod
    def from_parts(cls: type[S], params: Mapping[str, Any], section: Mapping[str, Any]) -> S:
        """A job's settings: result settings from its rule's params, knobs from the config."""
        return cls(**params, **{key: section[key] for key in cls.knob_keys() if key in section})

    def result_params(self) -> dict[str, Any]:
        """The result settings a rule passes as `params:` (a job's outputs depend on these)."""
        return {key: _plain(getattr(self, key)) for key in self.result_keys()}

    def replace(self: S, **changes: Any) -> S:
        return dataclasses.replace(self, **changes)


def _plain(value: Any) -> Any:
    """Tuples as lists, so params compare equal to the config's YAML values across runs."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# The models that need no download, and their family (dafusion.stages.families): `tiny` and
# `tiny-sdxl` (random weights, built by a job at any resolution) and `tiny-digits` (trained on
# typeset digits, shipped in the package at 16 px).
EMBEDDED_FAMILIES = {
    "tiny": "stable-diffusion",
    "tiny-digits": "stable-diffusion",
    "tiny-sdxl": "sdxl",
}
EMBEDDED_MODELS = tuple(EMBEDDED_FAMILIES)
# The embedded models a job builds from random weights (`model/{name}-{resolution}px`).
BUILT_MODELS = ("tiny", "tiny-sdxl")


# `model.vae`'s values besides a VAE's folder or hub id: the checkpoint's own VAE as its
# family's pipelines run it, or the checkpoint's own always in float32.
VAE_CHECKPOINT, VAE_FLOAT32 = "checkpoint", "float32"


@dataclass(frozen=True)
class ModelSettings(Settings):
    """`model:` the Stable Diffusion checkpoint every generative stage loads.

    `dtype` is a result setting: half precision changes generated images beyond
    floating-point noise (errors compound over the denoising steps). On a CPU every dtype
    computes in float32, so there it changes nothing but still reruns. Inversion and erasure
    train in their own precision (`inversion.mixed_precision`, `erasure.precision`).

    `vae` (a result setting) is the VAE that encodes and decodes images: `checkpoint`, the
    checkpoint's own; `float32`, the checkpoint's own always in float32; or the local
    folder or hub id of another VAE (e.g. `madebyollin/sdxl-vae-fp16-fix`). Otherwise a VAE
    runs in `dtype`, except as diffusers' SDXL pipelines run one: in float32 under float16
    when its config sets `force_upcast` (SDXL base's, which overflows in float16)
    (`dafusion.stages.models.load_vae`). The default is left out of the params, so the jobs
    of a config without the key keep their params.
    """

    pretrained: str
    dtype: str = "float32"
    resolution: int = 512
    vae: str = VAE_CHECKPOINT
    device: str = knob("auto")

    @property
    def embedded(self) -> bool:
        """One of the models that come with the workflow (`EMBEDDED_MODELS`)."""
        return self.pretrained in EMBEDDED_MODELS

    def result_params(self) -> dict[str, Any]:
        params = super().result_params()
        if self.vae == VAE_CHECKPOINT:
            del params["vae"]  # the jobs' params as before the setting existed
        return params


@dataclass(frozen=True)
class DatasetSettings(Settings):
    """One `datasets:` entry. Which keys each kind reads is in `dafusion.data.readers.KINDS`."""

    kind: str
    root: str | None = None
    classes: int | list[str] | None = None
    split_protocol: str = "default"
    allow_fewer: bool = False
    skip_corrupt: bool = False
    unevaluated_classes: str = "error"
    label_level: str = "variant"
    hf_config: str = "crop"
    image_size: int = 32
    val_fraction: float = 0.2
    val_per_class: int | None = None
    track_files: bool = knob(True)
    generation: Mapping[str, Any] = layout(default_factory=dict)
    classifier: Mapping[str, Any] = layout(default_factory=dict)


@dataclass(frozen=True)
class InversionSettings(Settings):
    """`inversion:` textual inversion, Table 1 of the paper by default."""

    steps: int = 1000
    batch_size: int = 4
    repeats: int | None = 100
    learning_rate: float = 5e-4
    scale_lr: bool = False
    weight_decay: float = 1e-2
    initializer: str = "the"
    num_vectors: int = 1
    flip: bool = True
    templates: tuple[str, ...] | list[str] | str = "imagenet_small"
    mixed_precision: str = "fp16"
    classes_per_chunk: int = knob(0)
    gradient_checkpointing: bool = knob(False)
    checkpoint_every: int = knob(100)

    @property
    def weight_dtype(self) -> str:
        """The frozen UNet's and VAE's dtype on CUDA: accelerate's `weight_dtype`."""
        return {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[self.mixed_precision]

    @property
    def effective_lr(self) -> float:
        """diffusers' `--scale_lr`: lr x batch size (one process, no accumulation)."""
        return self.learning_rate * (self.batch_size if self.scale_lr else 1)


# The attention projections a LoRA adapts by default: diffusers' train_dreambooth_lora.py
# (l. 945, the SD UNet's `to_k`, `to_q`, `to_v`, `to_out.0`; its `add_k_proj`/`add_v_proj`
# exist only in other UNets) and Diff-Mix's LoRA on every attention processor.
LORA_PROJECTIONS = ("to_k", "to_q", "to_v", "to_out.0")


@dataclass(frozen=True)
class LoraSettings(Settings):
    """`lora:` the LoRA learner (a method's `learner: lora`): one LoRA on the UNet's
    attention projections, learned per split jointly with the class tokens, whose rows
    follow `inversion:` (docs/models.md, Learners).

    Defaults: rank 10 and the constant learning rate 1e-4 of Diff-Mix (scripts/finetune.sh
    `--rank=10`; train_lora.py's `--learning_rate` default, l. 240-242); alpha = rank, the
    AdamW weight decay 1e-2 and the gradient clipping at 1.0 of diffusers'
    train_dreambooth_lora.py (l. 942, 433, 435) and Diff-Mix alike; steps as inversion's.
    """

    rank: int = 10
    alpha: int | None = None
    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    steps: int = 1000
    projections: tuple[str, ...] | list[str] = LORA_PROJECTIONS

    @property
    def scale_alpha(self) -> int:
        """peft's `lora_alpha`: `alpha`, or the rank (scale 1) when unset."""
        return self.rank if self.alpha is None else self.alpha


# The scorers of a synthetic set's images (`dafusion.stages.scoring`, one job each) and what
# a filter of each can ask of its scores (`FilterSettings`).
SCORER_NAMES = ("classifier", "clip", "change")
FILTER_CRITERIA = {
    "classifier": ("min_confidence", "max_confidence", "require_top1"),
    "clip": ("min_clip_score",),
    "change": ("min_change", "max_change"),
}
# Each threshold: the score column it reads, whether it is a lower bound, its allowed range.
FILTER_THRESHOLDS = {
    "min_confidence": ("confidence", True, (0.0, 1.0)),
    "max_confidence": ("confidence", False, (0.0, 1.0)),
    "min_clip_score": ("clip_score", True, (-1.0, 1.0)),
    "min_change": ("change", True, (0.0, 1.0)),
    "max_change": ("change", False, (0.0, 1.0)),
}


@dataclass(frozen=True)
class FilterSettings(Settings):
    """A method's `filter:` (`dafusion.stages.filtering`): the scorer whose table it reads
    (`by`) and its criteria, each kept image passing every one given; `keep_top` keeps each
    class's highest-scoring fraction. None (no `filter:`) draws every image. Thresholds are
    chosen a priori, never tuned on validation accuracy (docs/filtering.md)."""

    by: str
    min_confidence: float | None = None
    max_confidence: float | None = None
    require_top1: bool = False
    min_clip_score: float | None = None
    min_change: float | None = None
    max_change: float | None = None
    keep_top: float | None = None

    def __post_init__(self) -> None:
        if self.by not in FILTER_CRITERIA:
            raise ValueError(f"filter by '{self.by}': the scorers are {', '.join(FILTER_CRITERIA)}")
        given = self.criteria()
        if not given:
            own = ", ".join([*FILTER_CRITERIA[self.by], "keep_top"])
            raise ValueError(f"a filter by {self.by} needs a criterion ({own}): it keeps all")
        for key in given:
            if key != "keep_top" and key not in FILTER_CRITERIA[self.by]:
                by = next(name for name, keys in FILTER_CRITERIA.items() if key in keys)
                raise ValueError(f"filter: {key} reads the {by} scores, not those of {self.by}")
        for key, (_, _, (low, high)) in FILTER_THRESHOLDS.items():
            value = getattr(self, key)
            if value is not None and not low <= value <= high:
                raise ValueError(f"filter: {key} must lie in [{low}, {high}], not {value}")
        if self.keep_top is not None and not 0 < self.keep_top <= 1:
            raise ValueError(f"filter: keep_top is a fraction in (0, 1], not {self.keep_top}")
        for bottom, top in (("min_confidence", "max_confidence"), ("min_change", "max_change")):
            if bottom in given and top in given and given[bottom] > given[top]:
                raise ValueError(f"filter: {bottom} {given[bottom]} is above {top} {given[top]}")

    def criteria(self) -> dict[str, Any]:
        """The criteria given (not left at their defaults), by key."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "by" and getattr(self, f.name) != f.default
        }

    def result_params(self) -> dict[str, Any]:
        """The filter as a train job's params: `by` and the criteria given, so that a
        criterion written at its default changes nothing."""
        return {"by": self.by, **self.criteria()}

    def describe(self) -> str:
        """The filter in words, for captions: "classifier: confidence >= 0.5, top 70% per
        class"."""
        words = []
        for key, value in self.criteria().items():
            if key in FILTER_THRESHOLDS:
                column, lower, _ = FILTER_THRESHOLDS[key]
                words.append(f"{column} {'>=' if lower else '<='} {value:g}")
            elif key == "require_top1":
                words.append("top-1 is the label")
            else:
                words.append(f"top {100 * value:g}% per class")
        return f"{self.by}: {', '.join(words)}"


@dataclass(frozen=True)
class MethodSettings(Settings):
    """One `methods:` entry: a baseline, or SDEdit with a prompt and t0 values.

    `filter` (a `FilterSettings` mapping, or None) selects which of the set's images the
    method's runs draw; it is not part of what the set's images are (`SyntheticSets`), so a
    filtered and an unfiltered method of the same generation share one set."""

    kind: str
    prompt: str | None = None
    strengths: tuple[float, ...] | list[float] | None = None
    mask: str = "none"
    mask_dilation: int = 16
    erased: bool = False
    learner: str = "textual_inversion"
    datasets: tuple[str, ...] | list[str] | None = layout(default=None)
    dataset_prompts: Mapping[str, str] = layout(default_factory=dict)
    figures: tuple[str | int, ...] | list[str | int] = layout(default=())
    generation: Mapping[str, Any] = layout(default_factory=dict)
    classifier: Mapping[str, Any] = layout(default_factory=dict)
    filter: Mapping[str, Any] | None = layout(default=None)

    @property
    def filter_settings(self) -> FilterSettings | None:
        """The method's filter, or None (every image of its set is drawn)."""
        return None if self.filter is None else FilterSettings.from_config(self.filter)

    def for_dataset(self, dataset: str) -> MethodSettings:
        """The method as one dataset's jobs run it: its prompt there (`dataset_prompts`, e.g.
        the original's Real Guidance prompt for Leafy Spurge), or the method's own."""
        prompt = self.dataset_prompts.get(dataset, self.prompt)
        return self.replace(prompt=prompt, dataset_prompts={})

    def runs_on(self, dataset: str) -> bool:
        """Whether the method's jobs exist for this dataset (`datasets:`, default all)."""
        return self.datasets is None or dataset in self.datasets

    @property
    def uses_tokens(self) -> bool:
        """Whether the prompt needs the learned class tokens."""
        return self.kind == "sdedit" and "{token}" in (self.prompt or "")

    @property
    def synthetic(self) -> bool:
        """Whether the method generates images (a baseline trains on real images only)."""
        return self.kind != "baseline"

    @property
    def uses_lora(self) -> bool:
        """Whether the method's class tokens come with a LoRA (`learner: lora`): only where
        its prompt uses the tokens; elsewhere the learner has no effect."""
        return self.uses_tokens and self.learner == "lora"

    def result_params(self) -> dict[str, Any]:
        params = super().result_params()
        if self.mask == "none":
            del params["mask_dilation"]  # read only by masked generation
        if not self.erased:
            del params["erased"]  # the erasure reaches erased methods' jobs as an input file
        if not self.uses_lora:
            del params["learner"]  # textual inversion's params (and sets) as before learners
        return params


ESD_KEYS = (
    "iterations", "lr", "train_method", "start_guidance", "negative_guidance", "ddim_steps",
    "sampler", "precision",
)  # fmt: skip
UCE_KEYS = ("erase_scale", "preserve_scale", "lamb", "guide", "edit_keys")


@dataclass(frozen=True)
class ErasureSettings(Settings):
    """`erasure:` model-centric leakage prevention (section 6.1): class names erased from
    the UNet by ESD (faithful, eq. 8) or UCE (closed form), kept as deltas over the base.

    `scope: class` gives one delta per class, used for that class's token and images (the
    paper's protocol); `joint` erases every class of a dataset into one delta.
    """

    enabled: bool = False
    method: str = "esd"
    scope: str = "class"
    prompt: str = "{name}"
    delta_dtype: str = "float32"
    seed: int = 0
    check_prompt: str = "a photo of a {name}"
    iterations: int = 1000
    lr: float = 1e-5
    train_method: str = "full"
    start_guidance: float = 3.0
    negative_guidance: float = 1.0
    ddim_steps: int = 50
    sampler: str = "trained"
    precision: str = "float32"
    erase_scale: float = 1.0
    preserve_scale: float | None = None
    lamb: float = 0.5
    guide: str = ""
    edit_keys: bool = True
    checkpoint_every: int = knob(100)
    batch_size: int = knob(8)

    @property
    def eraser(self) -> str:
        """The folder name of this erasure under `{dataset}/erasure/`."""
        return self.method if self.scope == "class" else f"{self.method}-{self.scope}"

    def result_params(self) -> dict[str, Any]:
        params = super().result_params()
        del params["enabled"]  # whether the stage runs, not what it writes
        other = UCE_KEYS if self.method == "esd" else ESD_KEYS
        for key in other:
            del params[key]  # read only by the other method
        return params


def denoising_steps(num_inference_steps: int, strength: float) -> int:
    """SDEdit's denoising steps at strength t0: the last floor(S * t0) of S (img2img's rule);
    0 means the image is returned unchanged, which the workflow refuses at start-up."""
    return min(int(num_inference_steps * strength), num_inference_steps)


@dataclass(frozen=True)
class GenerationSettings(Settings):
    """`generation:` SDEdit sampling (Table 1) and how the synthetic set is stored."""

    num_synthetic: int = 10
    guidance_scale: float = 7.5
    num_inference_steps: int = 50
    scheduler: str = "default"
    image_format: str = "png"
    shard_size: int = 1000
    resize_to_source: bool = True
    safety_checker: bool = False
    safety_retries: int = 3
    batch_size: int = knob(8)
    workers: int | None = knob(None)
    compile: bool = knob(False)
    parts: int = knob(1)
    # The VAE one image at a time (its peak memory one image's, not a batch's): the same
    # images up to float noise, as another batch_size gives. Not tiling, which changes them.
    vae_slicing: bool = knob(False)

    def result_params(self) -> dict[str, Any]:
        params = super().result_params()
        if not self.safety_checker:
            del params["safety_retries"]  # read only when the safety checker runs
        return params


# Stochastic diffusers schedulers whose `step` takes no generator: their noise cannot be drawn
# per image, so an image would depend on which others share its batch (models.scheduler_class
# refuses them, at start-up and in generate jobs).
UNSEEDABLE_SCHEDULERS = ("DPMSolverSDEScheduler",)


# The weights a pretrained backbone loads when classifier.weights is null (Hugging Face repo
# ids, read from the local cache): torchvision's IMAGENET1K_V2 ResNet-50 as the original code
# loads it, republished as safetensors, and the distilled DeiT-B of the paper's Appendix F.
BACKBONE_WEIGHTS = {
    "resnet50": "timm/resnet50.tv2_in1k",
    "deit": "facebook/deit-base-distilled-patch16-224",
}
# The frozen backbones with BatchNorm layers, whose features `bn_mode` decides: in training
# mode each batch is normalized with its own statistics and the running ones are
# re-estimated; in eval mode the weights' ImageNet running statistics are used, which expect
# ImageNet-normalized inputs (tests/unit/stages/test_classifier.py builds every backbone to check).
BATCHNORM_BACKBONES = ("resnet50",)


@dataclass(frozen=True)
class ClassifierSettings(Settings):
    """`classifier:` the downstream classifier of each (method, seed, shots) run."""

    backbone: str = "resnet50"
    weights: str | None = None
    pretrained: bool = True
    image_size: int = 256
    steps: int = 10000
    batch_size: int = 32
    lr: float = 1e-4
    eval_interval: int = 200
    synthetic_probability: float = 0.5
    normalization: str = "original"
    augmentation: str = "standard"
    rotation_degrees: float = 15.0
    vertical_flip: bool = False
    cutmix_mode: str = "sample"
    bn_mode: str = "train"
    feature_cache: bool = False
    cache_views: int = 8
    eval_samples: int | None = None
    absent_classes: str = "skip"
    precision: str = "float32"
    device: str = knob("auto")

    def for_method(self, method: MethodSettings) -> ClassifierSettings:
        """A baseline mixes in no synthetic images, so alpha cannot change its result."""
        return self if method.synthetic else self.replace(synthetic_probability=0.0)

    def result_params(self) -> dict[str, Any]:
        params = super().result_params()
        if self.augmentation not in ("standard", "cutmix"):
            del params["rotation_degrees"], params["vertical_flip"]  # read by flip + rotation
        if self.augmentation != "cutmix":
            del params["cutmix_mode"]
        return params


@dataclass(frozen=True)
class ScoringSettings(Settings):
    """`scoring:` what the scorers of synthetic images read besides a set
    (`dafusion.stages.scoring`, docs/filtering.md): the baseline-kind method whose run of
    the same dataset, seed and shots scores the images (`classifier_method`, the
    `classifier` scorer), and the CLIP model and class prompt of the `clip` scorer (a hub id
    read from the local Hugging Face cache, or a local folder; `{name}` is the class
    name)."""

    classifier_method: str = "baseline"
    clip_model: str = "openai/clip-vit-base-patch32"
    clip_prompt: str = "a photo of a {name}"
    batch_size: int = knob(64)
    device: str = knob("auto")

    def params(self, scorer: str) -> dict[str, Any]:
        """What one scorer's values depend on besides its input files: the CLIP model and
        prompt for `clip`; nothing for `classifier` (the run's head is its input) and
        `change`."""
        if scorer == "clip":
            return {"clip_model": self.clip_model, "clip_prompt": self.clip_prompt}
        return {}


# Section 6 / Figure 6 of the paper: its datasets binned by how familiar their concepts are
# to Stable Diffusion (keys: the dataset names config/paper.yaml uses).
NOVELTY_BINS = {
    "common": ["coco", "pascal", "caltech101"],
    "fine-grain": ["flowers102", "fgvc_aircraft", "stanford_cars"],
    "novel": ["leafy_spurge"],
}


# How figures, tables and captions name the aggregate's settings.
METRIC_NAMES = {"accuracy": "accuracy", "mean_class_accuracy": "mean per-class accuracy"}
SELECTION_NAMES = {"run": "step best per run", "seed_mean": "step best on the seed mean"}
# report_split as a caption written before the runs exist names it.
REPORT_SPLIT_NAMES = {"test": "test where a dataset has one, else val", "val": "val"}


def measure_names(metric: str, selection: str, split: str) -> tuple[str, str]:
    """What a reported value is, in words: the metric with the split it is read on, "mean
    per-class accuracy (test)", and the step selection, "step best on the seed mean". Figure
    labels show both; captions and the report join them with ", "."""
    return f"{METRIC_NAMES[metric]} ({split})", SELECTION_NAMES[selection]


@dataclass(frozen=True)
class AggregateSettings(Settings):
    """`aggregate:` settings read only when the runs are summarized and reported."""

    metric: str = "mean_class_accuracy"
    selection: str = "seed_mean"
    report_split: str = "test"
    baseline: str = "baseline"
    novelty: Mapping[str, list[str]] = field(default_factory=lambda: dict(NOVELTY_BINS))
    gallery_images_per_class: int = 1
    gallery_classes: int = 6
    gallery_variants: int = 3

    def measure(self) -> str:
        """What the aggregate reports, for captions written before the runs exist: "mean
        per-class accuracy (test where a dataset has one, else val), step best on the seed
        mean"."""
        split = REPORT_SPLIT_NAMES[self.report_split]
        return ", ".join(measure_names(self.metric, self.selection, split))


# The config section each settings class reads (datasets and methods: each entry).
SECTIONS: dict[str, type[Settings]] = {
    "model": ModelSettings,
    "datasets": DatasetSettings,
    "inversion": InversionSettings,
    "lora": LoraSettings,
    "methods": MethodSettings,
    "erasure": ErasureSettings,
    "generation": GenerationSettings,
    "classifier": ClassifierSettings,
    "scoring": ScoringSettings,
    "aggregate": AggregateSettings,
}
