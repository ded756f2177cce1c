"""GPU jobs running at once each claim a device of their own (no GPU needed: DAFUSION_GPUS
names the devices, and only CUDA_VISIBLE_DEVICES is set)."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import REPO

from dafusion.jobs import devices
from dafusion.jobs.devices import claim_device

SRC = str(REPO / "src")

# A job that claims a device, prints it, and holds it until its stdin closes.
CLAIMER = textwrap.dedent(
    """
    import sys
    from dafusion.jobs.devices import claim_device
    print(claim_device(1, "auto", sys.argv[1], poll_s=0.05), flush=True)
    sys.stdin.read()
    """
)


def job_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    return {**env, "PYTHONPATH": SRC, **extra}


def start_claimer(lock_dir: Path, gpus: str = "0,1", **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CLAIMER, str(lock_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=job_env(DAFUSION_GPUS=gpus, **env),
    )


def claimed(proc: subprocess.Popen, timeout: float) -> str | None:
    """The device a claimer printed within `timeout` seconds, or None if it is still waiting."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else None


def stop(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=10)


@pytest.fixture
def fresh_env(monkeypatch):
    """This process as a job on a workstation: no device preset, no Slurm; claims dropped."""
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "DAFUSION_GPUS", "CUDA_DEVICE_ORDER"):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    devices.release_devices()


def test_jobs_at_once_claim_different_devices_and_a_third_waits(tmp_path):
    first, second = start_claimer(tmp_path), start_claimer(tmp_path)
    third = None
    try:
        got = [claimed(first, 30), claimed(second, 30)]
        assert sorted(got) == ["0", "1"]
        third = start_claimer(tmp_path)
        assert claimed(third, 3) is None  # both devices taken: it waits
        stop(first)
        assert claimed(third, 10) == got[0]  # the device the finished job released
    finally:
        for proc in filter(None, (first, second, third)):
            proc.kill()
            proc.wait()


def test_a_lock_file_left_by_a_killed_job_is_claimed_again_at_once(tmp_path, fresh_env):
    killed = start_claimer(tmp_path, "0")
    assert claimed(killed, 30) == "0"
    killed.kill()  # SIGKILL: no cleanup runs
    killed.wait()
    (lock,) = tmp_path.glob("*.lock")
    assert f"pid {killed.pid} " in lock.read_text()  # still on disk, but no claim

    fresh_env.setenv("DAFUSION_GPUS", "0")
    start = time.monotonic()
    assert claim_device(1, "auto", tmp_path, poll_s=5) == "0"
    assert time.monotonic() - start < 2
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert f"pid {os.getpid()} " in lock.read_text()


@pytest.mark.parametrize(
    ("env", "device"),
    [
        ({"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "3"}, "auto"),  # Slurm's assignment
        ({"CUDA_VISIBLE_DEVICES": "2"}, "cuda"),  # the user's
        ({"CUDA_VISIBLE_DEVICES": ""}, "auto"),  # every GPU hidden
        ({"SLURM_JOB_ID": "7"}, "auto"),  # Slurm without one: not ours to pick
        ({}, "cuda:1"),  # pinned in the config
    ],
)
def test_an_assignment_made_elsewhere_is_kept(tmp_path, fresh_env, env, device):
    fresh_env.setenv("DAFUSION_GPUS", "0,1")
    for name, value in env.items():
        fresh_env.setenv(name, value)
    assert claim_device(1, device, tmp_path) is None
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == env.get("CUDA_VISIBLE_DEVICES")
    assert list(tmp_path.iterdir()) == []


def test_a_cpu_job_claims_nothing(tmp_path, fresh_env):
    fresh_env.setenv("DAFUSION_GPUS", "0,1")
    assert claim_device(0, "auto", tmp_path) is None
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_several_preset_devices_are_shared_out(tmp_path, fresh_env):
    """A local run inside a Slurm allocation of several GPUs: each job takes one of them
    (not the DAFUSION_GPUS devices, which would lie outside the allocation)."""
    preset = {"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "4,5"}
    other = start_claimer(tmp_path, "0,1", **preset)
    try:
        assert claimed(other, 30) == "4"
        for name, value in preset.items():
            fresh_env.setenv(name, value)
        assert claim_device(1, "cuda", tmp_path) == "5"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
        assert "CUDA_DEVICE_ORDER" not in os.environ  # the preset's numbering, unchanged
    finally:
        other.kill()
        other.wait()


def test_a_device_listed_twice_takes_two_jobs(tmp_path):
    first, second = start_claimer(tmp_path, "0,0"), start_claimer(tmp_path, "0,0")
    try:
        assert [claimed(first, 30), claimed(second, 30)] == ["0", "0"]
        assert len(list(tmp_path.glob("*.lock"))) == 2
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()


def test_without_dafusion_gpus_the_devices_come_from_nvidia_smi(tmp_path, fresh_env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'GPU 0: NVIDIA A100 (UUID: GPU-aaaa)'\n"
        "echo '  MIG 1g.10gb     Device  0: (UUID: MIG-bbbb)'\n"
        "echo 'GPU 1: NVIDIA A100 (UUID: GPU-cccc)'\n"
    )
    fake.chmod(0o755)
    fresh_env.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert devices._nvidia_smi_gpus() == ["0", "1"]
    locks = tmp_path / "locks"
    assert claim_device(1, "auto", locks) == "0"
    fresh_env.delenv("CUDA_VISIBLE_DEVICES")  # as another job would start
    assert claim_device(1, "auto", locks) == "1"
    assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_without_any_gpu_nothing_is_claimed(tmp_path, fresh_env):
    fresh_env.setenv("PATH", str(tmp_path))  # no nvidia-smi
    assert claim_device(1, "auto", tmp_path / "locks") is None
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


SNAKEFILE = """
rule all:
    input:
        "a.txt",
        "b.txt",


rule fake_gpu_job:
    output:
        "{name}.txt",
    log:
        "logs/{name}.log",
    resources:
        gpu=1,
    script:
        "job.py"
"""

JOB = """
import os
import time

from dafusion.jobs.devices import claim_device
from dafusion.jobs.io import setup_job

setup_job(snakemake.log[0])
claim_device(snakemake.resources.gpu, "auto")
start = time.time()
time.sleep(3)
with open(snakemake.output[0], "w") as out:
    out.write(f"{os.environ['CUDA_VISIBLE_DEVICES']} {start} {time.time()}\\n")
"""


@pytest.mark.workflow
def test_two_gpu_jobs_at_once_under_resources_gpu_2_claim_different_devices(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "job.py").write_text(JOB)
    bin_dir = str(Path(sys.executable).parent)
    env = job_env(DAFUSION_GPUS="0,1", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--resources", "gpu=2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [(tmp_path / f"{name}.txt").read_text().split() for name in "ab"]
    assert {device for device, _, _ in runs} == {"0", "1"}
    (a_start, a_end), (b_start, b_end) = [(float(s), float(e)) for _, s, e in runs]
    assert a_start < b_end and b_start < a_end  # they ran at the same time
    locks = tmp_path / ".snakemake" / "dafusion-gpu-locks"
    assert len(list(locks.glob("*.lock"))) == 2
    for name in "ab":
        assert "claimed GPU" in (tmp_path / "logs" / f"{name}.log").read_text()


def test_a_lock_that_cannot_be_taken_claims_nothing_instead_of_failing(tmp_path, fresh_env):
    """A filesystem without locks, a lock file of another user: the job runs, unclaimed."""
    fresh_env.setenv("DAFUSION_GPUS", "0")
    (tmp_path / f"{socket.gethostname()}-gpu0.lock").mkdir()  # cannot be opened for writing
    assert claim_device(1, "auto", tmp_path) is None
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
