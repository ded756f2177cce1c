"""What a validated config's run needs from this machine: the dataset roots, the diffusion
model and the classifier's pretrained weights, as far as the requested targets read them,
and a results folder it can write.

Looked at once the targets are known (workflow/rules/common.smk, checked_machine), after
`dafusion.workflow.config.validate_config` has checked what the config alone decides: every
problem in one error, before any job, since a job that fails on a missing file does so after
Snakemake has deleted its previous outputs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..data.readers import KINDS, missing_package
from ..settings import (
    BACKBONE_WEIGHTS,
    EMBEDDED_FAMILIES,
    EMBEDDED_MODELS,
    UNSEEDABLE_SCHEDULERS,
    VAE_CHECKPOINT,
    VAE_FLOAT32,
)
from ..shipped import MINIATURE
from .config import ConfigError, job_settings


@dataclass(frozen=True)
class Needs:
    """What on this machine the requested targets read: the dataset roots, the diffusion
    model, the classifier's pretrained weights, the CLIP model of filters by clip. Start-up
    looks for these and nothing more, so that `synthetic` runs where no backbone weights
    are cached."""

    data: bool = True
    model: bool = True
    backbones: bool = True
    clip: bool = True

    @classmethod
    def of_targets(cls, targets: Iterable[str], rules: Iterable[str], results: str) -> Needs:
        """What the targets named on the command line read (none: the default target, all),
        or, in a job Snakemake started for given rules (`--target-jobs`), what those rules
        read. A result file not recognised here needs everything."""
        rules, targets = set(rules), set(targets)
        if rules:
            return cls(
                data=bool(rules & {"check_dataset", "index_dataset"}),
                model=bool(rules & MODEL_RULES),
                # the classifier scorer rebuilds the baseline's backbone from its weights
                backbones=bool(rules & {"train", "score_classifier"}),
                clip="score_clip" in rules,
            )
        needs = [cls._of_target(target, results) for target in targets or {"all"}]
        keys = ("data", "model", "backbones", "clip")
        return cls(*(any(getattr(n, k) for n in needs) for k in keys))

    @classmethod
    def _of_target(cls, target: str, results: str) -> Needs:
        if target in ("synthetic", "tokens", "erasure"):
            return cls(backbones=False, clip=False)
        parts = Path(target).parts
        root = Path(results).parts
        if tuple(parts[: len(root)]) != root or len(parts) <= len(root):
            return cls()  # all, report, or a path this does not know: everything
        rest = parts[len(root) :]
        if rest[0] == "model":
            return cls(data=False, backbones=False, model=False, clip=False)
        if len(rest) > 1 and rest[1] == "splits":
            return cls(model=False, backbones=False, clip=False)
        if rest[-1].startswith("scores-"):
            return cls()  # a set's scores: the classifier scorer reads a trained run
        if len(rest) > 1 and rest[1] in ("synthetic", "tokens", "lora", "erasure"):
            return cls(backbones=False, clip=False)
        return cls()


# ESD's train methods that name Stable Diffusion 1.x/2.x blocks (dafusion.stages.erasure).
LAYER_METHODS = ("xlayer", "selflayer")
# The rules whose jobs load the diffusion model.
MODEL_RULES = {"erase", "invert", "invert_erased", "lora", "generate"}


def check_machine(config: Mapping, base_dir: str | Path, needs: Needs) -> None:
    """What a validated config's run reads from this machine is there (`needs` says which):
    every problem in one error, so that a user fixes them all before the next attempt."""
    problems = []
    if needs.data:
        for name, spec in config["datasets"].items():
            problems.append(_dataset_files_problem(name, spec, base_dir))
    if needs.backbones:
        problems += _classifier_weights_problems(config, base_dir)
    if needs.clip:
        problems.append(_clip_model_problem(config, base_dir))
    folder = None
    if needs.model:
        safety = any(s.safety_checker for _, _, s in job_settings(config, "generation", "sdedit"))
        try:
            folder = _check_model(config["model"]["pretrained"], base_dir, safety)
        except ConfigError as exc:
            problems.append(str(exc))
        vae = config["model"].get("vae", VAE_CHECKPOINT)
        problems.append(_vae_problem(vae, base_dir, folder, config["model"]["pretrained"]))
    problems = [p for p in problems if p]
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        listed = "".join(f"\n  - {problem}" for problem in problems)
        raise ConfigError(f"{len(problems)} things this run reads are missing:{listed}")
    if needs.model:
        model_scheduler = _scheduler_config(folder, config["model"]["pretrained"])
        _check_schedulers(config, model_scheduler)
        _check_erasure_steps(config, model_scheduler)
        _check_erasure_layers(config, folder)


def _vae_problem(
    setting: str, base_dir: str | Path, model: Path | None, pretrained: str
) -> str | None:
    """`model.vae` set to another VAE's folder or hub id: its files are on this machine
    (`dafusion.stages.families.vae_source`, file look-ups only), and its latents have the
    channels the UNet of the model in `model` takes (a tiny model's, for None: 4)."""
    if setting in (VAE_CHECKPOINT, VAE_FLOAT32):
        return None
    from ..stages.families import vae_source

    try:
        source, sub = vae_source(setting, base_dir)
    except OSError as exc:
        return str(exc)
    latent = json.loads((source / (sub or "") / "config.json").read_text()).get(
        "latent_channels",
        4,  # AutoencoderKL's default
    )
    unet = model / "unet/config.json" if model is not None else None
    takes = json.loads(unet.read_text()).get("in_channels", 4) if unet and unet.is_file() else 4
    if latent != takes:
        return (
            f"config key 'model.vae': the VAE '{setting}' makes {latent}-channel latents and "
            f"the UNet of '{pretrained}' takes {takes}; use a VAE of the model's family"
        )
    return None


def _dataset_files_problem(name: str, spec: Mapping, base_dir: str | Path) -> str | None:
    """Why a dataset's root cannot be read on this machine, or None."""
    kind = KINDS[spec["kind"]]
    if not kind.needs_root:
        return None
    if "root" not in spec:
        return (
            f"config key 'datasets.{name}.root': kind '{spec['kind']}' needs the directory "
            "that holds the dataset"
        )
    root = Path(base_dir) / Path(spec["root"]).expanduser()
    if not root.is_dir():
        return (
            f"config key 'datasets.{name}.root': directory '{root}' does not exist; "
            "point it at the dataset on disk"
        )
    if extra := missing_package(spec["kind"], root):
        return (
            f"config key 'datasets.{name}.kind': reading '{root}' as {spec['kind']} needs "
            f"the {kind.package} package; install it with `.venv/bin/pip install -e "
            f"'.[{extra}]'` (or `pip install {kind.package}`)"
        )
    return None


def _classifier_weights_problems(config: Mapping, base_dir: str | Path) -> list[str]:
    """Why backbone weights a train job loads are not on this machine (a file, or a repo in
    the local Hugging Face cache): found here, not by train jobs after their old outputs are
    gone."""
    problems, seen = [], set()
    for _, method, settings in job_settings(config, "classifier"):
        if settings.backbone not in BACKBONE_WEIGHTS or not settings.pretrained:
            continue
        if (settings.backbone, settings.weights) in seen:
            continue
        seen.add((settings.backbone, settings.weights))
        weights = settings.weights or BACKBONE_WEIGHTS[settings.backbone]
        path = Path(base_dir) / Path(weights).expanduser()
        if path.exists():  # a file (resnet50) or a model directory (deit)
            continue
        if weights.endswith(".safetensors"):
            problems.append(
                f"config key 'classifier.weights': file '{path}' does not exist (method "
                f"{method}); point it at a torchvision-layout resnet50 .safetensors file"
            )
            continue
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(weights, "model.safetensors"), str):
            problems.append(
                f"config key 'classifier.weights': the {settings.backbone} weights '{weights}' "
                f"(method {method}) are not in the local Hugging Face cache; on a machine with "
                f"internet run `hf download {weights}` (then copy the cache here), point "
                "classifier.weights at a local file, or set classifier.pretrained: false"
            )
    return problems


# The files the clip scorer loads (`dafusion.stages.scoring.clip.load_clip`): any one of each
# tuple will do; weights as safetensors only.
CLIP_FILES = (
    ("config.json",),
    ("model.safetensors", "model.safetensors.index.json"),
    ("vocab.json", "tokenizer.json"),
    ("preprocessor_config.json",),
)


def _clip_model_problem(config: Mapping, base_dir: str | Path) -> str | None:
    """Why the CLIP model of the filters by clip is not on this machine (a local folder, or
    a hub id in the local Hugging Face cache, with safetensors weights), or None; nothing
    is looked for when no method filters by clip."""
    users = [
        name
        for name, spec in config["methods"].items()
        if (spec.get("filter") or {}).get("by") == "clip"
    ]
    if not users:
        return None
    model = config["scoring"]["clip_model"]
    key = (
        f"config key 'scoring.clip_model': the CLIP model '{model}' (method {users[0]} "
        "filters by clip)"
    )
    folder = Path(base_dir) / Path(model).expanduser()
    if folder.is_dir():
        for options in CLIP_FILES:
            if not any((folder / name).is_file() for name in options):
                return (
                    f"{key} lacks {options[0]} in '{folder}'; point it at a folder written "
                    "by transformers' save_pretrained, with safetensors weights"
                )
        return None
    if model.startswith(("/", ".", "~")) or model.count("/") != 1:
        return f"{key}: directory '{folder}' does not exist; give a local folder or a hub id"
    from huggingface_hub import try_to_load_from_cache

    for options in CLIP_FILES:
        try:
            found = [try_to_load_from_cache(model, name) for name in options]
        except ValueError:  # not a valid repo id
            found = []
        if not any(isinstance(path, str) for path in found):
            return (
                f"{key} is not in the local Hugging Face cache ({options[0]} is missing) and "
                f"nothing is downloaded here; on a machine with internet run `hf download "
                f"{model}` (then copy the cache here), or point scoring.clip_model at a local "
                "folder"
            )
    return None


# The files each component of a Stable Diffusion checkpoint is loaded from (diffusers'
# save_pretrained layout), weights as safetensors only: any one of each tuple will do.
TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
)
MODEL_FILES = {
    "tokenizer": [("vocab.json", "tokenizer.json"), ("merges.txt", "tokenizer.json")],
    "text_encoder": [("config.json",), TRANSFORMERS_WEIGHTS],
    "vae": [("config.json",), DIFFUSERS_WEIGHTS],
    "unet": [("config.json",), DIFFUSERS_WEIGHTS],
    "scheduler": [("scheduler_config.json",)],
}
SAFETY_FILES = {
    "safety_checker": [("config.json",), TRANSFORMERS_WEIGHTS],
    "feature_extractor": [("preprocessor_config.json",)],
}


# SDXL's second tokenizer and text encoder (CLIPTextModelWithProjection).
SDXL_FILES = {
    "tokenizer_2": MODEL_FILES["tokenizer"],
    "text_encoder_2": MODEL_FILES["text_encoder"],
}


def _check_model_files(folder: Path, pretrained: str, safety_checker: bool, family: str) -> None:
    """Every file the stages load exists, weights as safetensors: a half-copied directory or
    cache, or a checkpoint with only pickle weights, stops here and not in the first job."""
    wanted = {
        **MODEL_FILES,
        **(SDXL_FILES if family == "sdxl" else {}),
        **(SAFETY_FILES if safety_checker else {}),
    }
    for component, needs in wanted.items():
        for options in needs:
            if any((folder / component / name).is_file() for name in options):
                continue
            pickled = sorted(p.name for p in (folder / component).glob("*.bin"))
            if pickled and options[0].endswith(".safetensors"):
                fix = (
                    f"it holds only pickle weights ({', '.join(pickled)}), which are never "
                    "loaded here; convert the model to safetensors (diffusers: "
                    "pipe.save_pretrained(path, safe_serialization=True))"
                )
            else:
                fix = "copy the complete model (as save_pretrained or `hf download` writes it)"
            why = " (generation.safety_checker is on)" if component in SAFETY_FILES else ""
            raise ConfigError(
                f"config key 'model.pretrained': '{pretrained}' lacks "
                f"{component}/{options[0]}{why}; {fix}"
            )


def _family(pretrained: str, folder: Path | None) -> str:
    """The family of the model start-up found in `folder` (None: a tiny model a job builds),
    checked already (`_check_family`)."""
    from ..stages.families import model_family

    return EMBEDDED_FAMILIES[pretrained] if folder is None else model_family(folder).name


def _check_family(folder: Path, pretrained: str) -> str:
    """The family of a checkpoint the stages drive (`dafusion.stages.families`), refused
    before any job otherwise."""
    from ..stages.families import model_family

    try:
        return model_family(folder).name
    except ValueError as exc:
        raise ConfigError(f"config key 'model.pretrained': {exc}") from None


def _check_model(pretrained: str, base_dir: str | Path, safety_checker: bool) -> Path | None:
    """'tiny', a local diffusers directory, or a hub id already in the local Hugging Face
    cache, with the files of every component the stages load: checked before any job, since
    the jobs that load it would fail only after Snakemake has deleted their previous
    outputs. Returns the model's folder (None for the tiny model, which a job builds)."""
    if pretrained in EMBEDDED_MODELS:
        if safety_checker:
            raise ConfigError(
                f"config key 'generation.safety_checker': the {pretrained} model has no "
                "safety checker; set it to false, or use a checkpoint that ships one"
            )
        if pretrained == "tiny-digits":
            return MINIATURE
        return None
    path = Path(base_dir) / Path(pretrained).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ConfigError(
                f"config key 'model.pretrained': directory '{path}' is not a diffusers model "
                "(no model_index.json); point it at a directory written by save_pretrained"
            )
        family = _check_family(path, pretrained)
        _check_model_files(path, pretrained, safety_checker, family)
        return path
    looks_like_path = pretrained.startswith(("/", ".", "~")) or pretrained.count("/") != 1
    if not looks_like_path:
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(pretrained, "model_index.json")
        except ValueError:  # not a valid repo id
            cached = None
        if isinstance(cached, str):
            # The cache's snapshot folder has the save_pretrained layout (files link to blobs).
            family = _check_family(Path(cached).parent, pretrained)
            _check_model_files(Path(cached).parent, pretrained, safety_checker, family)
            return Path(cached).parent
        raise ConfigError(
            f"config key 'model.pretrained': '{pretrained}' is not in the local Hugging Face "
            "cache (HF_HOME, default ~/.cache/huggingface), and nothing is downloaded here. "
            f"On a machine with internet run `hf download {pretrained}` and copy the cache "
            "over, or point model.pretrained at a local diffusers directory"
        )
    raise ConfigError(
        f"config key 'model.pretrained': directory '{path}' does not exist; give 'tiny', "
        "'tiny-sdxl', 'tiny-digits', a "
        "local diffusers directory, or a hub id such as CompVis/stable-diffusion-v1-4"
    )


# The tiny models' schedulers (dafusion.stages.tiny builds them in a job): Stable Diffusion
# v1's and SDXL base's.
TINY_SCHEDULERS = {
    "tiny": {"_class_name": "PNDMScheduler", "num_train_timesteps": 1000},
    "tiny-sdxl": {"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000},
}


def _scheduler_config(folder: Path | None, pretrained: str) -> dict:
    """The model's scheduler config (a tiny model's for None)."""
    if folder is None:
        return TINY_SCHEDULERS[pretrained]
    return json.loads((folder / "scheduler/scheduler_config.json").read_text())


def _check_schedulers(config: Mapping, model_scheduler: Mapping) -> None:
    """Every generate job's scheduler, overrides included, is resolved now, not when the
    first generate job starts; 'default' is the model's own, which must be seedable too."""
    for name in {s.scheduler for _, _, s in job_settings(config, "generation", kind="sdedit")}:
        if name == "fast":
            continue
        if name == "default":
            name, setting = model_scheduler["_class_name"], "default"
            if name not in UNSEEDABLE_SCHEDULERS:  # the class exists: the model loads it
                continue
        else:
            setting = None
        from ..stages.models import scheduler_class

        try:
            scheduler_class(name, setting)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _check_erasure_steps(config: Mapping, model_scheduler: Mapping) -> None:
    """ESD's DDIM steps are at most the model's training steps (LDM's timesteps are every
    (N // S)-th of them)."""
    erasure = config["erasure"]
    steps = model_scheduler.get("num_train_timesteps", 1000)  # diffusers' default
    if erasure["enabled"] and erasure["method"] == "esd" and erasure["ddim_steps"] > steps:
        raise ConfigError(
            f"config key 'erasure.ddim_steps': {erasure['ddim_steps']} is above the model's "
            f"{steps} training steps; lower it"
        )


def _check_erasure_layers(config: Mapping, folder: Path | None) -> None:
    """ESD's xlayer and selflayer name blocks of Stable Diffusion 1.x/2.x's UNet (CompVis
    input_blocks 4 and 7, output_blocks 6 and 8); SDXL's UNet lays its blocks out otherwise,
    and the erase job would refuse them (`dafusion.stages.erasure.trained_names`): an SDXL
    model stops here instead. Other layouts (the tiny models') are known once a job builds
    the UNet."""
    erasure = config["erasure"]
    method = erasure["train_method"]
    if not (erasure["enabled"] and erasure["method"] == "esd" and method in LAYER_METHODS):
        return
    pretrained = config["model"]["pretrained"]
    if _family(pretrained, folder) == "sdxl":
        raise ConfigError(
            f"config key 'erasure.train_method': {method} names blocks of Stable Diffusion "
            f"1.x/2.x's UNet, and '{pretrained}' is an SDXL model, whose UNet has other "
            "blocks at those places; use xattn (the ESD authors' SDXL esd-x), xattn-strict "
            "(their esd-x-strict), selfattn, noxattn, notime or full"
        )


def results_write_error(results: str) -> str | None:
    """Why jobs could not write the results folder, or None: Snakemake deletes a job's
    old outputs and logs and writes the new ones in folders under it, so each must be
    writable (before the folder exists, the one it will be made in), or the first job
    fails with a traceback. A dry run writes nothing and is not checked."""
    root = Path(results)
    folders = [root]
    while not folders[0].exists():
        folders = [folders[0].parent]
    if folders[0] == root:
        folders += [Path(top) / name for top, names, _ in os.walk(root) for name in names]
    blocked = [folder for folder in folders if not os.access(folder, os.W_OK | os.X_OK)]
    if not blocked:
        return None
    which = f"'{blocked[0]}' is"
    if len(blocked) > 1:
        which = f"'{blocked[0]}' and {len(blocked) - 1} other folder(s) in it are"
    return (
        f"config key 'results': jobs cannot write to the results folder '{root}': {which} "
        f"not writable by this user. Make it writable (chmod -R u+w {root}), or set results "
        "to a folder you can write"
    )
