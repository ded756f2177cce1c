"""Training state beside a job's outputs, so a killed training job resumes where it stopped.

Used by textual inversion and ESD erasure: the trained tensors, Adam(W)'s moments and step,
the random streams and the loss history, guarded by a fingerprint of the job's inputs and
settings so that a rerun never resumes a different job's state.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .io import atomic_path

log = logging.getLogger(__name__)


class Checkpoint:
    """One resumable training state: `params` by name, their optimizer, generators, losses."""

    def __init__(self, path: str | Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint

    def save(
        self,
        step: int,
        params: Mapping[str, torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        generators: Sequence[torch.Generator],
        losses: np.ndarray,
    ) -> None:
        tensors = {"losses": torch.as_tensor(np.asarray(losses[:step], dtype=np.float32))}
        for name, param in params.items():
            state = optimizer.state[param]
            tensors[f"param/{name}"] = param.detach().cpu()
            tensors[f"exp_avg/{name}"] = state["exp_avg"].cpu()
            tensors[f"exp_avg_sq/{name}"] = state["exp_avg_sq"].cpu()
            step_tensor = torch.as_tensor(state["step"], dtype=torch.float32)
            tensors[f"adam_step/{name}"] = step_tensor.reshape(1).cpu()
        for i, g in enumerate(generators):
            tensors[f"rng/{i}"] = g.get_state()
        meta = {"fingerprint": self.fingerprint, "step": str(step)}
        with atomic_path(self.path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)

    def load(
        self,
        params: Mapping[str, torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        generators: Sequence[torch.Generator],
        losses: np.ndarray,
    ) -> int:
        """Restore state if a matching checkpoint exists; returns the step to start from."""
        if not self.path.exists():
            return 0
        with safe_open(str(self.path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("fingerprint") != self.fingerprint:
                log.warning("ignoring checkpoint %s: it belongs to other inputs", self.path)
                return 0
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
        step = int(meta["step"])
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(tensors[f"param/{name}"].to(param.device))
                optimizer.state[param] = {
                    "step": tensors[f"adam_step/{name}"].reshape(()),
                    "exp_avg": tensors[f"exp_avg/{name}"].to(param.device),
                    "exp_avg_sq": tensors[f"exp_avg_sq/{name}"].to(param.device),
                }
        for i, g in enumerate(generators):
            g.set_state(tensors[f"rng/{i}"])
        losses[:step] = tensors["losses"].numpy().reshape(losses[:step].shape)
        log.info("resumed from %s at step %d", self.path, step)
        return step
