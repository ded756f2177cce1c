"""Erasure deltas: the UNet parameters an erasure changed, applied over the base UNet in place.

A delta file holds only the changed tensors, each with its full edited value (not a
difference), so base + delta reproduces the edited UNet exactly. `DeltaSwitch` applies one
delta at a time without reloading the model: swapping costs one copy of the changed tensors,
and the base values it overwrote are kept (on the CPU) to restore bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..data.manifest import class_token, file_stem
from ..jobs.io import atomic_path

JOINT = "joint"


def delta_path(folder: str | Path, class_name: str | None) -> Path:
    """Where a class's delta lives in an eraser folder (`None`: the joint delta): named
    after its token, bounded (`file_stem`) so that a long class name still gives a file."""
    stem = JOINT if class_name is None else file_stem(class_token(class_name).strip("<>"))
    return Path(folder) / f"{stem}.safetensors"


def class_deltas(check_path: str | Path) -> dict[str, tuple[Path, str]]:
    """Each class's delta (file, fingerprint), from an eraser's check table."""
    import pandas as pd

    table = pd.read_parquet(check_path)
    erased = table[table["erased"]]
    folder = Path(check_path).parent
    return {
        row["class_name"]: (folder / row["file"], row["fingerprint"])
        for row in erased.to_dict("records")
    }


def save_delta(
    path: str | Path, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype, meta: Mapping
) -> None:
    """Write a delta atomically; `meta` (JSON-encoded) says what was erased and how."""
    data = {name: t.detach().to("cpu", dtype).contiguous() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata={"dafusion": json.dumps(dict(meta), sort_keys=True)})


def delta_meta(path: str | Path) -> dict:
    """A delta's metadata without reading its tensors."""
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("dafusion", "{}"))


def load_delta(path: str | Path) -> dict[str, torch.Tensor]:
    """A delta's tensors (on the CPU), read through safetensors only."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"erasure delta '{path}' is missing; rerun the erase job that writes it "
            f"(snakemake {path.parent}/check.parquet --forcerun erase)"
        )
    with safe_open(str(path), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open API


class DeltaSwitch:
    """Applies at most one delta at a time to a module's parameters, in place."""

    def __init__(self, module: torch.nn.Module):
        self.params = dict(module.named_parameters())
        self.base: dict[str, torch.Tensor] = {}  # base values of the tensors a delta changed
        self.applied: set[str] = set()
        self.current: str | None = None

    @torch.no_grad()
    def apply(self, key: str, tensors: Mapping[str, torch.Tensor]) -> None:
        """Make the module base + `tensors`; `key` names the delta (a repeat is free)."""
        if key == self.current:
            return
        unknown = sorted(set(tensors) - set(self.params))
        if unknown:
            raise ValueError(f"delta '{key}' changes parameters the UNet lacks: {unknown[:3]}")
        # A delta of another model (an SD v1 delta on SDXL's UNet shares some names).
        misfit = [n for n, t in tensors.items() if t.shape != self.params[n].shape]
        if misfit:
            name = misfit[0]
            raise ValueError(
                f"delta '{key}' does not fit this UNet: '{name}' is "
                f"{list(tensors[name].shape)} in the delta, {list(self.params[name].shape)} "
                "here (a delta of another model?)"
            )
        for name in self.applied - set(tensors):
            self.params[name].copy_(self.base[name])
        for name, value in tensors.items():
            param = self.params[name]
            if name not in self.base:
                self.base[name] = param.detach().to("cpu", copy=True)
            param.copy_(value)
        self.applied = set(tensors)
        self.current = key

    def use_file(self, path: str | Path) -> None:
        """Apply the delta stored at `path`, reading it only when it is not applied yet."""
        if str(path) != self.current:
            self.apply(str(path), load_delta(path))

    @torch.no_grad()
    def restore(self) -> None:
        """Back to the base module, bit for bit."""
        for name in self.applied:
            self.params[name].copy_(self.base[name])
        self.applied = set()
        self.current = None
