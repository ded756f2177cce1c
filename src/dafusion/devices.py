"""Where a job computes: device and dtype choice, and recovery from GPU out-of-memory.

torch is imported inside the functions: the Snakefile asks `will_use_cuda` at start-up.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
T = TypeVar("T")


def will_use_cuda(device: str) -> bool:
    """Whether a job with this device setting will compute on a GPU, decided without torch.

    'auto' means CUDA where the NVIDIA driver is present (and CUDA_VISIBLE_DEVICES does not
    hide every GPU), which is what `resolve_device` finds inside the job on the same machine.
    """
    if device == "auto":
        if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
            return False
        return Path("/proc/driver/nvidia/version").exists() or bool(shutil.which("nvidia-smi"))
    return device.startswith("cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Half precision only on CUDA; CPUs compute in float32."""
    import torch

    return getattr(torch, name) if device.type == "cuda" else torch.float32


def halve_on_oom(run: Callable[[int], T], size: int, what: str) -> tuple[T, int]:
    """Call `run(size)`; on CUDA out-of-memory halve `size` and call again, down to 1.

    Returns the result and the size that worked, for the caller to keep using. `run` must
    give the same result for every size (the stages' per-sample random streams ensure it).
    """
    import torch

    while True:
        try:
            return run(size), size
        except torch.cuda.OutOfMemoryError:
            if size <= 1:
                raise
            size = max(1, size // 2)
            torch.cuda.empty_cache()
            log.warning("out of GPU memory: %s %d from now on", what, size)
