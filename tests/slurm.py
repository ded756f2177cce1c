"""A real single-node Slurm on this machine, for tests: Debian's `slurm-wlm` and `munge`,
`slurmctld` and `slurmd` on localhost, no accounting daemon.

It changes the machine, so it runs only when asked: DAFUSION_TEST_SLURM=1 in the environment
(.ci/run sets it), as root. `install()` installs the packages with apt-get when they are
missing; `SingleNodeSlurm` writes /etc/slurm/slurm.conf (where `srun` inside a job looks for
it), starts munged (unless one already answers), slurmctld and slurmd, and `stop()` ends
exactly the daemons it started and removes the config it wrote.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
COMMANDS = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "sinfo")
CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by the dafusion tests (tests/slurm.py)"
MUNGE_RUN = Path("/run/munge")
START_TIMEOUT_S = 60
ENABLE = "DAFUSION_TEST_SLURM"


def not_enabled() -> str | None:
    """None when this machine may be changed for a Slurm (DAFUSION_TEST_SLURM=1, as root);
    else why not, and how to enable it."""
    if os.environ.get(ENABLE) != "1":
        return (
            f"it installs slurm-wlm and munge with apt-get and writes {CONF}: set {ENABLE}=1 "
            "to run it (as root; .ci/run does)"
        )
    if os.geteuid() != 0:
        return f"{ENABLE}=1, but starting a Slurm needs root (it writes {CONF})"
    return None


def missing_commands() -> list[str]:
    return [c for c in COMMANDS if shutil.which(c) is None and not Path("/usr/sbin", c).exists()]


def install() -> str | None:
    """Install slurm-wlm and munge where missing; None when ready, else why not."""
    reason = not_enabled()
    if reason is not None:
        return reason
    if not missing_commands():
        return None
    if shutil.which("apt-get") is None:
        return f"Slurm is not installed and there is no apt-get to install {' '.join(PACKAGES)}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip()[-500:]
            return f"`{' '.join(command)}` failed: {tail}"
    missing = missing_commands()
    return f"after installing {' '.join(PACKAGES)}, still missing {missing}" if missing else None


def slurm_version() -> str:
    result = subprocess.run(["sinfo", "--version"], capture_output=True, text=True)
    return result.stdout.strip()


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _mem_mb() -> int:
    """90% of the machine's memory: the node's RealMemory."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.9)
    raise RuntimeError("no MemTotal in /proc/meminfo")


class SingleNodeSlurm:
    """slurmctld and slurmd on localhost: one node named after `hostname -s`, all its CPUs,
    90% of its memory, one partition `debug`. Status comes from `squeue`, so finished jobs
    stay listed for an hour (MinJobAge)."""

    partition = "debug"

    def __init__(self, state: Path):
        self.state = state
        self.pids: dict[str, int] = {}
        self.wrote_conf = False

    def conf_text(self) -> str:
        host = socket.gethostname().split(".")[0]
        s = self.state
        return "\n".join(
            [
                MARKER,
                "ClusterName=dafusion-test",
                f"SlurmctldHost={host}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "MpiDefault=none",
                f"StateSaveLocation={s}/state",
                f"SlurmdSpoolDir={s}/spool",
                f"SlurmctldPidFile={s}/slurmctld.pid",
                f"SlurmdPidFile={s}/slurmd.pid",
                f"SlurmctldLogFile={s}/slurmctld.log",
                f"SlurmdLogFile={s}/slurmd.log",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "AccountingStorageType=accounting_storage/none",
                "JobAcctGatherType=jobacct_gather/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                "MinJobAge=3600",
                "ReturnToService=2",
                f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} "
                f"RealMemory={_mem_mb()} State=UNKNOWN",
                f"PartitionName={self.partition} Nodes={host} Default=YES MaxTime=INFINITE "
                "State=UP",
                "",
            ]
        )

    def start(self) -> None:
        reason = not_enabled()
        if reason is not None:
            raise RuntimeError(f"not starting a Slurm: {reason}")
        if CONF.exists() and MARKER not in CONF.read_text():
            raise RuntimeError(f"{CONF} exists and is not ours: this machine has a Slurm")
        for folder in ("state", "spool"):
            (self.state / folder).mkdir(parents=True, exist_ok=True)
        CONF.parent.mkdir(parents=True, exist_ok=True)
        CONF.write_text(self.conf_text())
        self.wrote_conf = True
        if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
            MUNGE_RUN.mkdir(parents=True, exist_ok=True)
            shutil.chown(MUNGE_RUN, "munge", "munge")
            pidfile = MUNGE_RUN / "munged.pid"
            pidfile.unlink(missing_ok=True)
            subprocess.run(["runuser", "-u", "munge", "--", _sbin("munged")], check=True)
            self.pids["munged"] = self._read_pid(pidfile)
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([_sbin(daemon)], check=True)
            self.pids[daemon] = self._read_pid(self.state / f"{daemon}.pid")
        self._wait_idle()

    def _read_pid(self, path: Path) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().strip():
                return int(path.read_text().strip())
            time.sleep(0.2)
        raise RuntimeError(f"no pid file {path}: see the logs in {self.state}")

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        state = ""
        while time.monotonic() < deadline:
            result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
            state = result.stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the node is {state!r}, not idle: see the logs in {self.state}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.state.glob("*.log"))
        )

    def stop(self) -> None:
        """End the daemons this started (by pid, slurmd first) and remove the config."""
        subprocess.run(["scancel", "--user", "root"], capture_output=True)
        for daemon in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(daemon, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.2)
        if self.wrote_conf:
            CONF.unlink(missing_ok=True)
            self.wrote_conf = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of ours (the daemons fork away, so normally not) counts as ended.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()
