"""Config validation: schema check with defaults, then checks a schema cannot express.

Runs when the workflow starts, so a bad config stops before any job with a message that
names the offending key. The result is plain data (Snakemake's `config`); the typed
settings of `dafusion.settings` are built from its sections. What the config alone decides
is checked here; what its run reads on this machine, in `dafusion.workflow.machine`.
"""

from __future__ import annotations

import copy
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ..data.readers import KINDS, mask_kinds, original_split_kinds
from ..settings import (
    BATCHNORM_BACKBONES,
    SECTIONS,
    ClassifierSettings,
    FilterSettings,
    GenerationSettings,
    MethodSettings,
    denoising_steps,
)
from ..shipped import MINIATURE_RESOLUTION
from .schema_types import NotOfType, coerce_config, dotted_key, schema_message

# Every config key, its default and description: inside the package, so that an installed
# wheel validates configs (dafusion.workflow.estimate) as a checkout does; the Snakefile, the
# reference page (dafusion.workflow.schema_docs) and the tests read it here too.
SCHEMA = Path(__file__).with_name("config.schema.yaml")

# Named inversion recipes; keys a config sets explicitly win over the preset's.
INVERSION_PRESETS = {
    # Table 1 of the paper (also the schema defaults).
    "table1": {"num_vectors": 1, "initializer": "the", "batch_size": 4, "steps": 1000},
    # The author's stated recipe for the published results, with the --scale_lr of the
    # author's launch command (scripts/fine_tuning/fine_tune_*.sh of the original code).
    "published": {
        "num_vectors": 4,
        "initializer": "class_name",
        "batch_size": 8,
        "steps": 2000,
        "scale_lr": True,
    },
}
# Named classifier protocols (classifier.protocol, also in a dataset's or method's classifier
# overrides); keys set explicitly next to one win over it.
CLASSIFIER_PROTOCOLS = {
    # The original code's (also the schema defaults): model.train() while the head trains
    # (train_classifier.py l. 171), inputs at mean = std = 0.5 (few_shot_dataset.py l. 34-39).
    "original": {"bn_mode": "train", "normalization": "original"},
    # A frozen backbone kept frozen: eval-mode BatchNorm fed the inputs its statistics expect.
    "clean": {"bn_mode": "eval", "normalization": "backbone"},
}
# Sections holding one entry per name (a dataset, a method) rather than one settings object.
PER_ENTRY = ("datasets", "methods")
# Keys that moved: old place -> new place (an old config gets told where, not just "unknown").
MOVED = {("classifier", "report_split"): ("aggregate", "report_split")}
# Top-level keys that are gone: key -> why, and what to do (a config that sets one is told).
REMOVED = {
    "warm_start": (
        "the warm-start fork server was removed in 0.2.0: every job is its own process, as "
        "Snakemake runs it (CHANGELOG.md); delete the key"
    ),
}


class ConfigError(ValueError):
    """A config value is invalid; the message names the key and what to do."""


@dataclass(frozen=True)
class JobCheck:
    """A setting only a job can check: words of the error the job raises, and why no
    start-up check can find it (the data, or a file only a job reads, decides)."""

    key: str
    error: str
    why: str


# Every error a job can raise naming a setting that passed the start-up checks below: the
# data, or a file only a job reads, decides it. Any other setting a job could fail on is
# checked at start-up (tests/unit/workflow/test_config.py scans the library's errors for both); the
# configuration reference lists these.
JOB_CHECKS = (
    JobCheck(
        "datasets.<name>.classes",
        "unknown classes in 'classes'",
        "the names must be classes of the dataset, which check_dataset reads first",
    ),
    JobCheck(
        "datasets.<name>.classes",
        "asks for more classes than",
        "how many classes have training images is known once check_dataset reads the dataset",
    ),
    JobCheck(
        "datasets.<name>.skip_corrupt",
        "unreadable in all",
        "which images cannot be read is found by decoding each, in check_dataset",
    ),
    JobCheck(
        "datasets.<name>.skip_corrupt",
        "skip_corrupt left them all out",
        "which images cannot be read is found by decoding each, in check_dataset",
    ),
    JobCheck(
        "datasets.<name>.unevaluated_classes",
        "has no evaluation images",
        "which classes have evaluation images is known once check_dataset reads the dataset",
    ),
    JobCheck(
        "datasets.<name>.val_fraction",
        "too few to hold out an evaluation image",
        "each class's number of images is known once check_dataset reads the dataset",
    ),
    JobCheck(
        "examples_per_class",
        "fewer than examples_per_class",
        "each class's number of training images is known once index_dataset reads the dataset "
        "(few_shot_split stops; allow_fewer keeps what a class has)",
    ),
    JobCheck(
        "model.pretrained",
        "cannot load the model",
        "start-up finds every component's files, as safetensors; whether they load (complete, "
        "a layout this diffusers reads) shows when a job loads the model",
    ),
    JobCheck(
        "model.vae",
        "cannot load the VAE",
        "start-up finds the VAE's config.json and safetensors weights and compares its latent "
        "channels with the UNet's; whether the weights load shows when a job loads them",
    ),
    JobCheck(
        "inversion.initializer",
        "gives no tokens",
        "a blank word is refused at start-up; whether another gives tokens depends on the "
        "model's tokenizer, which jobs load",
    ),
    JobCheck(
        "erasure.train_method",
        "selects no parameter of this UNet",
        "xlayer and selflayer pick attention blocks by the UNet's layout, known once the erase "
        "job builds the UNet",
    ),
    JobCheck(
        "classifier.weights",
        "not torchvision-layout resnet50 weights",
        "start-up finds the file; its tensor names are compared with torchvision's ResNet-50 "
        "when a train job loads it",
    ),
)


def load_schema(path: str | Path) -> dict:
    """Read the YAML-encoded JSON schema; the dataset kinds come from the reader registry."""
    with open(path) as f:
        schema = yaml.safe_load(f)
    entry = schema["properties"]["datasets"]["additionalProperties"]
    entry["properties"]["kind"]["enum"] = list(KINDS)
    return schema


def _fill_defaults(instance: Any, schema: Mapping) -> None:
    """Fill `default` values of object properties, recursively, in place."""
    if not isinstance(instance, dict):
        return
    for name, sub in schema.get("properties", {}).items():
        if name not in instance and "default" in sub:
            instance[name] = copy.deepcopy(sub["default"])
        if name in instance:
            _fill_defaults(instance[name], sub)
    extra = schema.get("additionalProperties")
    if isinstance(extra, Mapping):
        for name, value in instance.items():
            if name not in schema.get("properties", {}):
                _fill_defaults(value, extra)


def _ordered(value: Any, schema: Mapping) -> Any:
    """A config with every section's keys in the schema's order (named entries, such as the
    methods, in the user's order): where a key came from (a config file, an overlay, or
    --config) leaves no trace in what the results record, so adding an execution knob on
    the command line changes no param."""
    if not isinstance(value, Mapping):
        return value
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    ordered = {key: _ordered(value[key], sub) for key, sub in properties.items() if key in value}
    for key, item in value.items():
        if key not in ordered:
            ordered[key] = _ordered(item, extra) if isinstance(extra, Mapping) else item
    return ordered


def readable(config: Mapping[str, Any]) -> dict[str, Any]:
    """A validated config without the defaults of dataset keys only other kinds read
    (`_check_dataset` refuses them for this kind): what the results record
    (`dafusion.reporting.record.resolved_config`) so that it reads back as a config."""
    others = {key for kind in KINDS.values() for key in kind.keys}
    datasets = {
        name: {
            key: value
            for key, value in spec.items()
            if key not in others or key in KINDS[spec["kind"]].keys
        }
        for name, spec in config["datasets"].items()
    }
    return {**config, "datasets": datasets}


def _check_dataset(name: str, spec: Mapping, explicit: set[str]) -> None:
    """Checks of a `datasets:` entry that depend on its kind (its files:
    `dafusion.workflow.machine`)."""
    kind = KINDS[spec["kind"]]
    for other_name, other in KINDS.items():
        for key in set(other.keys) & explicit:
            if key not in kind.keys:
                raise ConfigError(
                    f"config key 'datasets.{name}.{key}': only kind '{other_name}' reads it, "
                    f"not '{spec['kind']}'; remove it"
                )
    if spec["split_protocol"] == "original-code" and not kind.original_split:
        supported = ", ".join(original_split_kinds())
        raise ConfigError(
            f"config key 'datasets.{name}.split_protocol': 'original-code' applies to "
            f"{supported}, not '{spec['kind']}'; use 'default'"
        )


def _check_fields(key: str, text: str, allowed: set[str], exactly_one: bool = False) -> None:
    """A prompt or template: only the allowed plain {fields} (no attributes, indices or
    conversions, which `str.format` would evaluate), and with `exactly_one` one of them."""
    try:
        fields = [
            (field, conversion, spec)
            for _, field, spec, conversion in string.Formatter().parse(text)
            if field is not None
        ]
    except ValueError as exc:
        raise ConfigError(f"config key '{key}': {text!r} has unbalanced braces ({exc})") from None
    shown = " or ".join(f"{{{f}}}" for f in sorted(allowed))
    bad = [f for f, conversion, spec in fields if f not in allowed or conversion or spec]
    if bad:
        raise ConfigError(
            f"config key '{key}': {text!r} may hold only {shown} in braces, not {{{bad[0]}}}; "
            "write literal braces as {{ and }}"
        )
    if exactly_one and len(fields) != 1:
        raise ConfigError(
            f"config key '{key}': {text!r} must hold exactly one {shown} (where the class goes), "
            f"not {len(fields)}"
        )


def _check_erasure(config: Mapping) -> None:
    """An erased method needs the erasure stage; erasure prompts hold only {name}."""
    erasure = config["erasure"]
    for name, spec in config["methods"].items():
        if spec.get("erased") and spec["kind"] != "sdedit":
            raise ConfigError(
                f"config key 'methods.{name}.erased': a {spec['kind']} generates no images; "
                "only sdedit methods can use an erased model"
            )
        if spec.get("erased") and not erasure["enabled"]:
            raise ConfigError(
                f"config key 'methods.{name}.erased': set erasure.enabled to true to run the "
                "erasure stage, or remove erased from this method"
            )
    for key in ("prompt", "check_prompt"):
        _check_fields(f"erasure.{key}", erasure[key], {"name"}, exactly_one=True)


def _check_learners(config: Mapping) -> None:
    """`learner: lora` learns class tokens with a LoRA: a method must use the tokens
    somewhere (its prompt, or a dataset's prompt, holds {token}) and must not be erased
    (one LoRA per split is learned on the base UNet, while an erased method's images come
    from a UNet with one class erased per delta, and the LoRA's projections are those the
    erasure changes)."""
    for name, spec in config["methods"].items():
        if spec.get("learner", "textual_inversion") != "lora":
            continue
        key = f"config key 'methods.{name}.learner'"
        if spec["kind"] != "sdedit":
            raise ConfigError(f"{key}: a {spec['kind']} learns nothing; remove learner")
        prompts = [spec["prompt"], *spec.get("dataset_prompts", {}).values()]
        if not any("{token}" in prompt for prompt in prompts):
            raise ConfigError(
                f"{key}: lora learns the class tokens with a LoRA, and the method's prompt "
                f"{spec['prompt']!r} uses no {{token}}; put {{token}} in the prompt or remove "
                "learner"
            )
        if spec.get("erased"):
            raise ConfigError(
                f"{key}: lora cannot be combined with erased: true (method '{name}'): the LoRA "
                "is learned on the base UNet and adapts the attention projections an erasure "
                "changes, so erasing under it is not the paper's model-centric prevention; use "
                "learner: textual_inversion for the erased method, or erased: false"
            )


def _check_filters(config: Mapping) -> None:
    """A method's `filter:` (`dafusion.settings.FilterSettings`): an sdedit method's, with
    criteria of its scorer; a filter by classifier reads the run of
    `scoring.classifier_method`, a baseline-kind method that runs on every dataset the
    filtered method does; the clip scorer's prompt names the class once. Found here, not
    by a train or scoring job after the set is made."""
    scoring = config["scoring"]
    uses = set()
    for name, spec in config["methods"].items():
        if spec.get("filter") is None:
            continue
        key = f"config key 'methods.{name}.filter'"
        if spec["kind"] != "sdedit":
            raise ConfigError(f"{key}: a {spec['kind']} draws no synthetic images; remove filter")
        try:
            settings = FilterSettings.from_config(spec["filter"])
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        uses.add(settings.by)
        if settings.by != "classifier":
            continue
        judge = scoring["classifier_method"]
        where = f"(method {name} filters by classifier)"
        other = config["methods"].get(judge)
        if other is None or other["kind"] != "baseline":
            baselines = [m for m, s in config["methods"].items() if s["kind"] == "baseline"]
            raise ConfigError(
                f"config key 'scoring.classifier_method': '{judge}' is not a baseline-kind "
                f"method of this config {where}; name one whose run scores the images "
                f"({', '.join(baselines) or 'add a baseline method'})"
            )
        judged = MethodSettings.from_config(other)
        method = MethodSettings.from_config(spec)
        missing = [d for d in config["datasets"] if method.runs_on(d) and not judged.runs_on(d)]
        if missing:
            raise ConfigError(
                f"config key 'scoring.classifier_method': '{judge}' does not run on dataset "
                f"{missing[0]} {where}; name a baseline that runs there, or list the datasets "
                "in its datasets:"
            )
    if "clip" in uses:
        _check_fields("scoring.clip_prompt", scoring["clip_prompt"], {"name"}, exactly_one=True)


def job_settings(
    config: Mapping, section: str, kind: str | None = None
) -> Iterator[tuple[str, str, GenerationSettings | ClassifierSettings]]:
    """(dataset, method, settings) of every (dataset, method) pair whose jobs exist: the
    section resolved with the dataset's and the method's overrides, as the jobs get it."""
    cls = {"generation": GenerationSettings, "classifier": ClassifierSettings}[section]
    for dataset, entry in config["datasets"].items():
        for method, spec in config["methods"].items():
            if not MethodSettings.from_config(spec).runs_on(dataset):
                continue
            if kind is None or spec["kind"] == kind:
                overrides = (entry.get(section, {}), spec.get(section, {}))
                yield dataset, method, cls.resolve(config[section], *overrides)


def _expand_protocols(config: dict) -> None:
    """Each `classifier.protocol` (the section's, and a dataset's or method's override) as the
    keys it stands for, where the same mapping leaves them out; then removed."""
    entries = [spec for name in PER_ENTRY for spec in config[name].values()]
    for section in [config.get("classifier"), *(spec.get("classifier") for spec in entries)]:
        protocol = section.pop("protocol", None) if isinstance(section, dict) else None
        for key, value in CLASSIFIER_PROTOCOLS.get(protocol, {}).items():
            section.setdefault(key, value)


def _check_classifier_protocol(config: Mapping) -> None:
    """A frozen BatchNorm backbone runs one protocol or the other, never a mix: eval-mode
    BatchNorm with ImageNet running statistics fed inputs normalized with mean = std = 0.5
    (about 0.45x the scale they expect) is neither the original code's nor a standard setup,
    and cached features are not the features of a BatchNorm in training mode."""
    for dataset, method, settings in job_settings(config, "classifier"):
        if settings.backbone not in BATCHNORM_BACKBONES:
            continue
        overrides = (("methods", method), ("datasets", dataset))
        key = {  # where this job's value of each key was set
            name: next(
                (
                    f"{entries}.{entry}.classifier.{name}"
                    for entries, entry in overrides
                    if name in config[entries][entry].get("classifier", {})
                ),
                f"classifier.{name}",
            )
            for name in ("bn_mode", "normalization", "feature_cache")
        }
        job = f"dataset {dataset}, method {method}"
        if (
            settings.pretrained
            and settings.bn_mode == "eval"
            and settings.normalization == "original"
        ):
            raise ConfigError(
                f"config key '{key['bn_mode']}': eval keeps {settings.backbone}'s BatchNorm on "
                f"its ImageNet running statistics, but {key['normalization']}: original feeds "
                f"it inputs normalized with mean = std = 0.5 ({job}), a mix of the original "
                "code's protocol and the clean one; set classifier.protocol: original "
                "(bn_mode train, as the original code) or clean (normalization backbone), and "
                "leave bn_mode and normalization unset"
            )
        if settings.bn_mode == "train" and settings.feature_cache:
            raise ConfigError(
                f"config key '{key['feature_cache']}': with {key['bn_mode']}: train "
                f"{settings.backbone}'s BatchNorm normalizes each batch with its own statistics "
                f"({job}), so no feature can be cached; set classifier.protocol: clean "
                "(bn_mode eval) or feature_cache: false"
            )


def _check_strengths(config: Mapping) -> None:
    """Every t0 runs at least one denoising step with the steps its jobs get (img2img runs
    floor(steps * t0)); found here, not by a generate job after its old outputs are gone."""
    for dataset, method, settings in job_settings(config, "generation", kind="sdedit"):
        steps = settings.num_inference_steps
        for strength in config["methods"][method]["strengths"]:
            if denoising_steps(steps, strength) < 1:
                raise ConfigError(
                    f"config key 'methods.{method}.strengths': t0 = {strength} with "
                    f"generation.num_inference_steps {steps} (dataset {dataset}) runs no "
                    f"denoising step (floor({steps} x {strength}) = 0); raise the strength to at "
                    f"least {1 / steps:.3g} or the steps"
                )


def _check_masks(config: Mapping) -> None:
    """A masked method runs only on datasets whose kind gives object masks: found here, not
    by its first generate job."""
    for dataset, entry in config["datasets"].items():
        for method, spec in config["methods"].items():
            method_settings = MethodSettings.from_config(spec)
            if method_settings.mask == "none" or not method_settings.runs_on(dataset):
                continue
            if not KINDS[entry["kind"]].masks:
                raise ConfigError(
                    f"config key 'methods.{method}.mask': '{method_settings.mask}' needs object "
                    f"masks, which dataset {dataset} (kind {entry['kind']}) does not have (only "
                    f"{', '.join(mask_kinds())} do); set mask: none, or list the datasets it "
                    "runs on in the method's datasets:"
                )


def _check_overrides(config: Mapping) -> None:
    """Per-dataset and per-method overrides hold result settings of their section only (a
    knob is one value for every job), a baseline has no generation to override, and a
    method runs on datasets that exist."""
    entries = [("datasets", name, spec) for name, spec in config["datasets"].items()]
    entries += [("methods", name, spec) for name, spec in config["methods"].items()]
    for entries_key, name, spec in entries:
        for section in ("generation", "classifier"):
            knobs = set(spec.get(section, {})) & set(SECTIONS[section].knob_keys())
            if knobs:
                raise ConfigError(
                    f"config key '{entries_key}.{name}.{section}.{sorted(knobs)[0]}': an "
                    f"execution knob cannot differ per entry; set it in {section}: instead"
                )
    for name, spec in config["methods"].items():
        if spec["kind"] == "baseline" and spec.get("generation"):
            raise ConfigError(
                f"config key 'methods.{name}.generation': a baseline generates no images; remove it"
            )
        unknown = [d for d in spec.get("datasets") or [] if d not in config["datasets"]]
        if unknown:
            raise ConfigError(
                f"config key 'methods.{name}.datasets': no dataset named '{unknown[0]}' (the "
                f"datasets: {', '.join(config['datasets'])}); fix the name"
            )


def _check_miniature(model: Mapping) -> None:
    """The shipped miniature was trained at 16 px: another resolution gives noise."""
    if model["pretrained"] == "tiny-digits" and model["resolution"] != MINIATURE_RESOLUTION:
        raise ConfigError(
            f"config key 'model.resolution': tiny-digits was trained at {MINIATURE_RESOLUTION} px "
            f"and makes no images at {model['resolution']}; set model.resolution: "
            f"{MINIATURE_RESOLUTION}, "
            "or use pretrained: tiny (random weights, built at any resolution)"
        )


def _check_figure_11(config: Mapping) -> None:
    """Figure 11's cells come from the methods' settings alone: a layout that gives no grid
    stops here, not the aggregate job after every classifier has trained."""
    from .plan import Plan

    plan = Plan.from_config(config)
    if "figure-11" not in plan.report.aggregate_figures():
        return
    import pandas as pd

    from ..reporting.aggregate import grid_references

    try:
        grid_references(pd.DataFrame(plan.report.method_layout()), plan.aggregate.baseline)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def validate_config(config: Mapping, schema_path: str | Path) -> dict:
    """Return a validated copy of `config` with defaults filled in.

    Raises ConfigError naming the first offending key (as a dotted path). Nothing on disk is
    looked at, so a grid can be planned on a machine without its data or model
    (`dafusion.workflow.estimate`); what the run reads from this machine is found by
    `dafusion.workflow.machine.check_machine`, once the requested targets are known.
    """
    schema = load_schema(schema_path)
    try:
        config = coerce_config(copy.deepcopy(dict(config)), schema, schema)
    except NotOfType as exc:
        raise ConfigError(str(exc)) from None
    for key, why in REMOVED.items():
        if key in config:
            raise ConfigError(f"config key '{key}': {why}")
    for (section, key), new in MOVED.items():
        if isinstance(config.get(section), Mapping) and key in config[section]:
            raise ConfigError(
                f"config key '{section}.{key}' is now '{'.'.join(new)}' (it is read only when "
                "the runs are summarized, so changing it reruns only aggregate); move it there"
            )
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(
        validator.iter_errors(config), key=lambda e: (len(e.path), list(map(str, e.path)))
    )
    if errors:
        err = errors[0]
        raise ConfigError(f"config key '{dotted_key(err.absolute_path)}': {schema_message(err)}")
    inversion = config.setdefault("inversion", {})
    preset = inversion.pop("preset", None)
    if preset is not None:
        for key, value in INVERSION_PRESETS[preset].items():
            inversion.setdefault(key, value)
    _expand_protocols(config)
    explicit = {name: set(spec) for name, spec in config["datasets"].items()}
    _fill_defaults(config, schema)
    for name, spec in config["datasets"].items():
        _check_dataset(name, spec, explicit[name])
    for name, spec in config["methods"].items():
        if spec["kind"] == "sdedit":
            _check_fields(f"methods.{name}.prompt", spec["prompt"], {"name", "token"})
        for dataset, prompt in spec["dataset_prompts"].items():
            key = f"methods.{name}.dataset_prompts.{dataset}"
            if spec["kind"] == "baseline":
                raise ConfigError(f"config key '{key}': a baseline has no prompt; remove it")
            method = MethodSettings.from_config(spec)
            if dataset not in config["datasets"] or not method.runs_on(dataset):
                raise ConfigError(
                    f"config key '{key}': the method does not run on a dataset named "
                    f"'{dataset}'; fix the name or the method's datasets:"
                )
            _check_fields(key, prompt, {"name", "token"})
    _check_erasure(config)
    _check_learners(config)
    _check_filters(config)
    _check_overrides(config)
    _check_strengths(config)
    _check_classifier_protocol(config)
    if isinstance(config["inversion"]["templates"], list):
        for i, template in enumerate(config["inversion"]["templates"]):
            _check_fields(f"inversion.templates.{i}", template, {""}, exactly_one=True)
    _check_masks(config)
    _check_miniature(config["model"])
    for section, cls in SECTIONS.items():
        entries = config[section].values() if section in PER_ENTRY else [config[section]]
        for entry in entries:
            cls.from_config(entry)  # the schema and the settings classes agree on every key
    _check_figure_11(config)
    return _ordered(config, schema)
