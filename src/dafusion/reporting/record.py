"""What the report records about how its results were made: the resolved config (also saved
as `results/config.yaml`), whether the images came from a random-weight model, and the
versions of the libraries that ran.

The saved config is a result like any other, so it names no place on the user's machine:
absolute paths inside the working directory become relative to it, and those outside keep
only their last component behind `OUTSIDE` (a moved or copied checkout writes the same file).
Execution knobs are left out: they change how fast or where jobs ran, not what they wrote.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..jobs.io import atomic_path
from ..settings import SECTIONS

# model.pretrained values that build a model with fixed-seed random weights
# (`dafusion.stages.tiny`): its images show the pipeline works, not what DA-Fusion does.
RANDOM_WEIGHT_MODELS = frozenset({"tiny", "tiny-sdxl"})
# How a saved config shows an absolute path outside the working directory.
OUTSIDE = "<absolute path>"
# The libraries whose versions the report lists.
LIBRARIES = (
    "torch", "torchvision", "diffusers", "transformers", "numpy", "pandas",
    "scikit-learn", "pillow", "matplotlib", "snakemake",
)  # fmt: skip


def random_weights(pretrained: str) -> bool:
    """Whether `model.pretrained` names a model whose weights were never trained."""
    return pretrained in RANDOM_WEIGHT_MODELS


def banner(pretrained: str) -> str | None:
    """What the report must say first about the model that made its images, if anything:
    a random-weight model's numbers mean nothing, the miniature's hold for digits only."""
    if random_weights(pretrained):
        return (
            f"The images of this report were made by a random-weight model (model.pretrained: "
            f"{pretrained}): the workflow ran end to end, but its numbers say nothing about "
            "DA-Fusion. Use a trained Stable Diffusion for results."
        )
    if pretrained == "tiny-digits":
        return (
            "The images of this report were made by tiny-digits, a 1 M-parameter miniature "
            "trained here on typeset digits (docs/miniature.md). Its numbers show what each "
            "stage does on 16 px digits, a simple and familiar concept; they do not say how "
            "DA-Fusion fares on the paper's datasets with Stable Diffusion."
        )
    return None


def portable_path(value: str, base: Path) -> str:
    """An absolute path relative to `base` where it lies inside, `OUTSIDE/name` otherwise;
    a relative path (or any other string) as it is."""
    if not os.path.isabs(value):
        return value
    path = Path(os.path.normpath(value))
    if path.is_relative_to(base):
        return path.relative_to(base).as_posix() or "."
    return f"{OUTSIDE}/{path.name}"


def _portable(value: Any, base: Path) -> Any:
    if isinstance(value, str):
        return portable_path(value, base)
    if isinstance(value, Mapping):
        return {key: _portable(item, base) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable(item, base) for item in value]
    return value


def _without_knobs(section: str, value: Mapping[str, Any]) -> dict[str, Any]:
    knobs = set(SECTIONS[section].knob_keys())
    return {key: item for key, item in value.items() if key not in knobs}


def resolved_config(config: Mapping[str, Any], base: str | Path) -> dict[str, Any]:
    """A validated config (defaults filled in, values coerced) as the results record it:
    without execution knobs, with paths made portable against the working directory `base`."""
    out = {}
    for key, value in config.items():
        if key in ("datasets", "methods"):
            value = {name: _without_knobs(key, entry) for name, entry in value.items()}
        elif key in SECTIONS:
            value = _without_knobs(key, value)
        out[key] = _portable(value, Path(os.path.abspath(base)))
    return out


def config_text(config: Mapping[str, Any]) -> str:
    """The YAML of a resolved config, keys in the config's order."""
    return yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True, width=100)


def write_config(path: str | Path, config: Mapping[str, Any]) -> None:
    """Save a resolved config, atomically."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(config_text(config), encoding="utf-8")
