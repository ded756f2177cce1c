"""Warm start: a job handed over to the server runs as its own process would, and stops with it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dafusion import warmstart

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="warm start is Linux-only")

# A workflow script as Snakemake runs it: `snakemake` first, then hand_over, then the work.
JOB = """\
import types
snakemake = types.SimpleNamespace(
    config={{"warm_start": {warm}}}, resources=types.SimpleNamespace({resources})
)
from dafusion.warmstart import hand_over
hand_over(snakemake)
import json, os, sys, time
print(json.dumps({{
    "pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(), "argv": sys.argv[1:],
    "threads": os.environ.get("OMP_NUM_THREADS"), "child": os.environ.get("DAFUSION_WARM_CHILD"),
    "torch_loaded": "torch" in sys.modules, "path0": sys.path[0],
}}), flush=True)
print("a line on stderr", file=sys.stderr)
{body}
"""


def write_job(directory: Path, body: str = "", warm: bool = True, resources: str = "") -> Path:
    script = directory / "job.py"
    script.write_text(JOB.format(warm=warm, resources=resources, body=body))
    return script


def job_env(threads: int = 1) -> dict[str, str]:
    """This process's environment with a per-job variable (the server is shared)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


def run(script: Path, *args: str, cwd: Path, threads: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=job_env(threads),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_job_runs_in_a_fork_with_its_own_directory_arguments_environment_and_status(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    script = write_job(scripts, body="sys.exit(int(sys.argv[1]))")
    runs = []
    for threads, name in enumerate(("a", "b"), start=1):
        (tmp_path / name).mkdir()
        result = run(script, "3", name, cwd=tmp_path / name, threads=threads)
        assert result.returncode == 3, result.stderr
        assert "a line on stderr" in result.stderr
        runs.append(json.loads(result.stdout))
    for threads, (name, job) in enumerate(zip(("a", "b"), runs, strict=True), start=1):
        assert job["child"] == "1"  # ran in the fork
        assert job["torch_loaded"]  # ... of a process that had imported the libraries
        assert job["cwd"] == str(tmp_path / name)
        assert job["argv"] == ["3", name]
        assert job["threads"] == str(threads)
        assert job["path0"] == str(scripts)  # as Python sets it for a script
    assert runs[0]["ppid"] == runs[1]["ppid"]  # one server for both jobs
    assert runs[0]["pid"] != runs[1]["pid"]


def test_an_uncaught_exception_fails_the_job_with_its_traceback(tmp_path):
    script = write_job(tmp_path, body="raise ValueError('bad input in job.py')")
    result = run(script, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "ValueError: bad input in job.py" in result.stderr
    assert json.loads(result.stdout.splitlines()[0])["child"] == "1"


@pytest.mark.parametrize(
    ("warm", "resources"), [(False, ""), (True, "gpu=1")], ids=["knob off", "GPU job"]
)
def test_runs_cold_with_the_knob_off_or_a_gpu(tmp_path, warm, resources):
    script = write_job(tmp_path, warm=warm, resources=resources)
    result = run(script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["child"] is None
    assert job["ppid"] == os.getpid()  # this test's own child: not handed over
    assert not job["torch_loaded"]


def wait_gone(pid: int, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_fork_stops_when_the_job_process_is_stopped(tmp_path, stop):
    """Snakemake stops a job by signalling its process: a passed-on SIGTERM ends the fork,
    and a killed job process (no signal can be passed on) ends it too."""
    script = write_job(tmp_path, body="time.sleep(300)")
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=job_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        job = json.loads(process.stdout.readline())
        assert job["child"] == "1"
        process.send_signal(stop)
        assert process.wait(timeout=60) != 0
        assert wait_gone(job["pid"]), f"the fork {job['pid']} outlived its job"
    finally:
        process.kill()
        process.stdout.close()


def test_a_server_that_leaves_as_the_job_comes_is_replaced(tmp_path):
    """A server closes its socket when idle: a job that connected just then starts another."""
    env = {**job_env(), "WARM_TEST": os.urandom(6).hex()}  # an identity of its own
    leaving = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    leaving.bind(warmstart.address(warmstart.identity(env)))
    leaving.listen(1)

    def leave():  # take one connection, then close it and stop listening
        conn, _ = leaving.accept()
        conn.close()
        leaving.close()

    taker = threading.Thread(target=leave)
    taker.start()
    script = write_job(tmp_path)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    taker.join(timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["child"] == "1"  # ran warm, in a new server's fork
    assert "running cold" not in result.stderr


def test_identity_ignores_per_job_variables_only():
    base = {"PATH": "/usr/bin", "HF_HOME": "/data/hf"}
    same = {**base, "OMP_NUM_THREADS": "4", "PYTEST_CURRENT_TEST": "x", "_": "/usr/bin/env"}
    assert warmstart.identity(base) == warmstart.identity(same)
    assert warmstart.identity(base) != warmstart.identity({**base, "HF_HOME": "/other"})


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
def test_the_server_refuses_another_user(tmp_path):
    script = write_job(tmp_path)
    assert run(script, cwd=tmp_path).returncode == 0  # a server of this identity is up
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
        f"s.connect({warmstart.address(warmstart.identity(job_env()))!r})\n"
        "try:\n"
        "    socket.send_fds(s, [b'{}'], [0, 1, 2])\n"
        "    print(repr(s.recv(1024)))\n"
        "except ConnectionResetError:\n"
        "    print('reset')\n"
    )
    result = subprocess.run(
        ["/usr/bin/python3", "-c", probe],  # a Python the other user may run
        user=65534,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # closed without taking the job (before or after the request came)
    assert result.stdout.strip() in ("b''", "reset"), result.stderr


def test_a_server_of_the_same_identity_already_up_makes_a_second_leave():
    env = {**os.environ, "WARM_TEST": os.urandom(6).hex()}  # an identity of its own
    key = warmstart.identity(env)
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        holder.bind(warmstart.address(key))
        holder.listen(1)
        start = time.monotonic()
        server = [sys.executable, "-m", "dafusion.warmstart", key]
        subprocess.run(server, check=True, timeout=60, env=env)
        assert time.monotonic() - start < 30  # left at once, without loading the libraries
    finally:
        holder.close()


def test_a_server_of_another_library_copy_refuses_to_serve():
    """The key is the job's identity: a server that would import another copy (another
    path or content) leaves, and the job runs cold."""
    key = warmstart.identity({**os.environ, "WARM_TEST": "another environment"})
    result = subprocess.run(
        [sys.executable, "-m", "dafusion.warmstart", key], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "does not match the job: jobs run cold" in result.stderr
