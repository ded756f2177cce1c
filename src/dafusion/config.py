"""Config validation: schema check with defaults, then checks a schema cannot express.

Runs when the workflow starts, so a bad config stops before any job with a message that
names the offending key.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# Every dataset kind but the embedded digits reads a dataset from disk.
KINDS_WITH_ROOT = {
    "imagefolder",
    "pascal",
    "coco",
    "caltech101",
    "flowers102",
    "fgvc_aircraft",
    "stanford_cars",
    "leafy_spurge",
    "imagenet",
}
# Kinds the original DA-Fusion code split in halves per seed (`split_protocol: original-code`).
ORIGINAL_SPLIT_KINDS = {"caltech101", "flowers102", "leafy_spurge"}
# Dataset keys that only one kind reads: setting them elsewhere is a mistake, not a no-op.
KIND_ONLY_KEYS = {
    "image_size": "digits",
    "label_level": "fgvc_aircraft",
    "hf_config": "leafy_spurge",
}
# Named inversion recipes; keys a config sets explicitly win over the preset's.
INVERSION_PRESETS = {
    # Table 1 of the paper (also the schema defaults).
    "table1": {"num_vectors": 1, "initializer": "the", "batch_size": 4, "steps": 1000},
    # The author's stated recipe for the published results.
    "published": {"num_vectors": 4, "initializer": "class_name", "batch_size": 8, "steps": 2000},
}


class ConfigError(ValueError):
    """A config value is invalid; the message names the key and what to do."""


def load_schema(path: str | Path) -> dict:
    """Read the YAML-encoded JSON schema of the workflow config."""
    with open(path) as f:
        return yaml.safe_load(f)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


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


def _check_dataset(name: str, spec: Mapping, explicit: set[str], base_dir: str | Path) -> None:
    """Checks of a `datasets:` entry that depend on its kind."""
    kind = spec["kind"]
    for key, only in KIND_ONLY_KEYS.items():
        if key in explicit and kind != only:
            raise ConfigError(
                f"config key 'datasets.{name}.{key}': only kind '{only}' reads it, not "
                f"'{kind}'; remove it"
            )
    if spec["split_protocol"] == "original-code" and kind not in ORIGINAL_SPLIT_KINDS:
        raise ConfigError(
            f"config key 'datasets.{name}.split_protocol': 'original-code' applies to "
            f"{', '.join(sorted(ORIGINAL_SPLIT_KINDS))}, not '{kind}'; use 'default'"
        )
    if kind in KINDS_WITH_ROOT:
        if "root" not in spec:
            raise ConfigError(
                f"config key 'datasets.{name}.root': kind '{kind}' needs the directory that "
                "holds the dataset"
            )
        root = Path(base_dir) / Path(spec["root"]).expanduser()
        if not root.is_dir():
            raise ConfigError(
                f"config key 'datasets.{name}.root': directory '{root}' does not exist; "
                "point it at the dataset on disk"
            )


def validate_config(config: Mapping, schema_path: str | Path, base_dir: str | Path = ".") -> dict:
    """Return a validated copy of `config` with defaults filled in.

    Raises ConfigError naming the first offending key (as a dotted path).
    """
    schema = load_schema(schema_path)
    config = copy.deepcopy(dict(config))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(
        validator.iter_errors(config), key=lambda e: (len(e.path), list(map(str, e.path)))
    )
    if errors:
        err = errors[0]
        raise ConfigError(f"config key '{_key(err.absolute_path)}': {err.message}")
    inversion = config.setdefault("inversion", {})
    if "preset" in inversion:
        for key, value in INVERSION_PRESETS[inversion["preset"]].items():
            inversion.setdefault(key, value)
    explicit = {name: set(spec) for name, spec in config["datasets"].items()}
    _fill_defaults(config, schema)
    for name, spec in config["datasets"].items():
        _check_dataset(name, spec, explicit[name], base_dir)
    for name, spec in config["methods"].items():
        if spec["kind"] == "sdedit":
            prompt = spec["prompt"]
            try:
                prompt.format(name="x", token="x")
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(
                    f"config key 'methods.{name}.prompt': only {{name}} and {{token}} may "
                    f"appear in braces ({exc!r})"
                ) from exc
    return config


def uses_tokens(method: Mapping) -> bool:
    """Whether a method's prompt needs the learned class tokens."""
    return method["kind"] == "sdedit" and "{token}" in method["prompt"]
