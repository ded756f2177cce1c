"""Where a job computes: device and dtype choice, a GPU of its own among several, and
recovery from GPU out-of-memory.

torch is imported inside the functions: the Snakefile asks `will_use_cuda` at start-up.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import socket
import subprocess
import time
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


# Claiming a GPU: on a workstation with several, `--resources gpu=N` runs N GPU jobs at once
# and each job takes a device no other job holds. Snakemake assigns none itself.
GPUS_ENV = "DAFUSION_GPUS"
LOCK_DIR = Path(".snakemake") / "dafusion-gpu-locks"
POLL_S = 1.0
REPORT_S = 30.0
# Open lock files of this process's claims: the kernel drops a claim when its process exits,
# however it exits, so a lock file a killed job left behind claims nothing.
_held: list[int] = []


def claim_device(
    gpu: int,
    device: str = "auto",
    lock_dir: str | Path | None = None,
    *,
    poll_s: float = POLL_S,
    report_s: float = REPORT_S,
) -> str | None:
    """Claim a GPU no other job of this working directory holds, and make it the job's only
    visible device (CUDA_VISIBLE_DEVICES). Call before anything starts CUDA.

    `gpu` is the job's `gpu` resource (0: a CPU job, nothing to do); `device` its device
    setting. Kept as they are, with nothing claimed: a device pinned in the config
    (`cuda:N`), a single device CUDA_VISIBLE_DEVICES already names (Slurm's assignment, or
    the user's), and any Slurm job without one. The candidates are the devices a preset
    CUDA_VISIBLE_DEVICES lists (several of them: say, a Slurm allocation a local run
    shares), else DAFUSION_GPUS (comma-separated, e.g. "0,2"; a device listed twice takes
    two jobs at once), else every GPU `nvidia-smi -L` lists. The first whose lock file
    (under `lock_dir`, by default `.snakemake/dafusion-gpu-locks` in the working directory)
    can be locked is claimed for the life of the process; when all are taken, the job waits.
    Returns the claimed device (as CUDA_VISIBLE_DEVICES names it), or None.
    """
    if gpu <= 0:
        return None
    if re.fullmatch(r"cuda:\d+", device):
        log.info("device %s is pinned by the config: no GPU claimed", device)
        return None
    preset = os.environ.get("CUDA_VISIBLE_DEVICES")
    listed = _split(preset)
    if preset is not None and len(listed) <= 1:
        log.info("CUDA_VISIBLE_DEVICES=%s was set for this job: kept", preset)
        return None
    if preset is None and os.environ.get("SLURM_JOB_ID"):
        log.info(
            "Slurm job %s without CUDA_VISIBLE_DEVICES: no GPU claimed", os.environ["SLURM_JOB_ID"]
        )
        return None
    allowed = os.environ.get(GPUS_ENV, "")
    if listed:
        candidates, source = listed, f"CUDA_VISIBLE_DEVICES={preset}"
    else:
        if _split(allowed):
            candidates, source = _split(allowed), f"{GPUS_ENV}={allowed}"
        else:
            candidates, source = _nvidia_smi_gpus(), "nvidia-smi -L"
        # Indices as nvidia-smi numbers them (CUDA's default order may differ from it).
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    if not candidates:
        log.warning("no GPU to claim (%s lists none): CUDA picks the device", source)
        return None
    lock_dir = Path.cwd() / LOCK_DIR if lock_dir is None else Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    slots = _slots(candidates, host)
    start = time.monotonic()
    reported = None
    while True:
        for candidate, name in slots:
            try:
                fd = _try_lock(lock_dir / name, host)
            except OSError as exc:  # a filesystem without locks, a file of another user
                log.warning("cannot lock %s (%s): no GPU claimed", lock_dir / name, exc)
                return None
            if fd is not None:
                _held.append(fd)
                os.environ["CUDA_VISIBLE_DEVICES"] = candidate
                waited = time.monotonic() - start
                log.info(
                    "claimed GPU %s of %s (lock %s%s)",
                    candidate,
                    source,
                    lock_dir / name,
                    f", after waiting {waited:.0f} s" if reported is not None else "",
                )
                return candidate
        now = time.monotonic()
        if reported is None or now - reported >= report_s:
            log.info(
                "all %d GPUs of %s are claimed by other jobs (locks in %s); waiting for one "
                "(%.0f s so far)",
                len(slots),
                source,
                lock_dir,
                now - start,
            )
            reported = now
        time.sleep(poll_s)


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _nvidia_smi_gpus() -> list[str]:
    """GPU indices `nvidia-smi -L` lists (its MIG lines left out); none if it fails."""
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi -L failed: %s", exc)
        return []
    return re.findall(r"^GPU (\d+):", listing, flags=re.MULTILINE)


def _slots(candidates: list[str], host: str) -> list[tuple[str, str]]:
    """(device, lock file name) per candidate; a device listed k times gets k slots."""
    slots: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for candidate in candidates:
        k = seen[candidate] = seen.get(candidate, -1) + 1
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{host}-gpu{candidate}")
        slots.append((candidate, f"{safe}.lock" if k == 0 else f"{safe}.{k}.lock"))
    return slots


def _try_lock(path: Path, host: str) -> int | None:
    """An open descriptor holding an exclusive lock on `path`, or None if another holds it.

    The file records the holder (PID, host, time) for people; the lock alone is the claim.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {host} since {time.ctime()}\n".encode(), 0)
    return fd


def release_devices() -> None:
    """Drop this process's claims (a job's end does it; for tests and long-lived callers)."""
    while _held:
        os.close(_held.pop())
