"""Warm start: CPU jobs run in a fork of a process that has imported the libraries already.

Every Snakemake job is a new Python process, and importing torch, diffusers and transformers
takes about 10 s of CPU: more than the work of most jobs of a workflow sized for a CPU (the
embedded default's). With `warm_start: true` (an execution knob, on by default) a job hands
itself over to a server that imported the whole library once. The server forks, and the fork
runs the job's script with the job's working directory, environment, arguments and standard
streams; the job's own process waits and exits with the fork's status. Signals it receives
are passed on to the fork, and if it dies, the fork stops too.

There is one server per user, Python, library version and environment (a Linux abstract
socket: it leaves no file behind, and only the same user may connect), started by the first
job that finds none and gone after `IDLE_SECONDS` without a job. A job runs cold (in its own
process, as without warm start) when it declares a GPU (CUDA cannot start in a process forked
from one that touched it, and a GPU job's start-up is small next to its work), inside a batch
scheduler's job (a server started there would outlive that job), off Linux, or with
`warm_start: false`.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import hashlib
import importlib
import json
import logging
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from dafusion import provenance

IDLE_SECONDS = 60
# How long a job waits for a server it started to listen (Python's start-up, not the imports).
CONNECT_SECONDS = 60
# Set in the fork, so that the script's own hand_over call returns there.
CHILD = "DAFUSION_WARM_CHILD"
# Set per job (Snakemake's thread counts, pytest's current test) or per shell: not part of
# the server's identity (the fork takes the job's own values).
_PER_JOB = {
    "_",
    CHILD,
    "PYTEST_CURRENT_TEST",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
}
# A batch scheduler's job: a server it started would die with it, or outlive it unaccounted.
_SCHEDULER_JOB = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")
_LIBRARY = provenance.ROOT
_MESSAGE = 1 << 20
# A server that closed as the job connected (it had just been idle for IDLE_SECONDS).
_GONE = object()

logger = logging.getLogger(__name__)


def hand_over(snakemake) -> None:
    """Run this job's script in a fork of the warm server and exit with its status.

    Called first in every workflow script. Returns, and the script goes on in this process,
    in the fork itself, where warm start does not apply, or where no server could be started
    (a line on stderr says why).
    """
    if os.environ.get(CHILD) or not applies(snakemake):
        return
    script = os.path.abspath(sys.argv[0])
    status = _run_warm(script)
    if status is _GONE:  # the server left (idle) as the job came: once more, with a new one
        status = _run_warm(script)
    if status is _GONE:
        print("warm start: the server ended before taking the job; running cold", file=sys.stderr)
    elif status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def applies(snakemake) -> bool:
    """Whether this job may run warm (module docstring)."""
    return (
        bool(snakemake.config["warm_start"])
        and not getattr(snakemake.resources, "gpu", 0)
        and sys.platform == "linux"
        and not any(name in os.environ for name in _SCHEDULER_JOB)
    )


def identity(environ: dict[str, str] | None = None) -> str:
    """What a server is shared by: the user, the Python, the library's content and the
    environment (modules read some variables when imported, e.g. HF_HOME)."""
    environ = os.environ if environ is None else environ
    key = {
        "uid": os.getuid(),
        "python": sys.executable,
        "library": str(_LIBRARY),
        "content": provenance.library_hash(),
        "environment": sorted((k, v) for k, v in environ.items() if k not in _PER_JOB),
    }
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]


def address(key: str) -> str:
    return f"\0dafusion-warm-{key}"


def _connect(key: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(address(key))
    except OSError:
        sock.close()
        return None
    return sock


def _start_server(key: str) -> subprocess.Popen:
    """A server in a session of its own (Snakemake's signals to the job do not reach it),
    logging to .snakemake/log/ under the directory of the job that started it."""
    log = Path(".snakemake/log") / f"dafusion-warm-{key[:12]}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dafusion.warmstart", key],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )


def _run_warm(script: str) -> int | object | None:
    """The job's exit status; _GONE where the server left before taking the job; None where
    no server could start (the job then runs cold)."""
    key = identity()
    sock = _connect(key)
    if sock is None:
        server = _start_server(key)
        deadline = time.monotonic() + CONNECT_SECONDS
        while sock is None and time.monotonic() < deadline:
            exited = server.poll() is not None
            sock = _connect(key)  # another job's server may have won the race
            if sock is None and exited:
                break
            time.sleep(0.05)
        if sock is None:
            print(
                f"warm start: no server started (exit status {server.poll()}; its log is "
                f".snakemake/log/dafusion-warm-{key[:12]}.log); running cold",
                file=sys.stderr,
            )
            return None
    request = {"script": script, "argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ)}
    with sock:
        try:
            socket.send_fds(sock, [json.dumps(request).encode()], [0, 1, 2])
            started = sock.recv(_MESSAGE)
        except OSError:
            started = b""
        if not started:  # the server ended before it forked: nothing of the job ran
            return _GONE
        pid = json.loads(started)["pid"]

        def pass_on(number, frame):
            with contextlib.suppress(ProcessLookupError):  # the fork has just ended
                os.kill(pid, number)

        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(number, pass_on)
        finished = sock.recv(_MESSAGE)  # resumed after a signal passed on
    if not finished:
        print(f"warm start: the job's process {pid} ended without a status", file=sys.stderr)
        return 1
    return int(json.loads(finished)["status"])


def preload() -> list[str]:
    """Import every library module and every module those import, also inside functions
    (heavy libraries are imported where first needed, so that a cold job pays only for its
    own). Returns the imports that failed (optional dependencies)."""
    failed = []
    for path in sorted(_LIBRARY.rglob("*.py")):
        parts = path.relative_to(_LIBRARY.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        imports = [(module, [])]
        for node in ast.walk(ast.parse(path.read_bytes())):
            if isinstance(node, ast.Import):
                imports += [(alias.name, []) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                imports.append((node.module, [alias.name for alias in node.names]))
        for name, attributes in imports:
            try:
                loaded = importlib.import_module(name)
                for attribute in attributes:  # lazy modules (diffusers) load on access
                    getattr(loaded, attribute, None)
            except Exception as error:  # noqa: BLE001 - an optional dependency
                failed.append(f"{name}: {error}")
    return failed


def serve(key: str) -> None:
    """Listen for jobs until none came for IDLE_SECONDS; fork one process per job."""
    if identity() != key:  # another library copy on the path, or another environment
        logger.error("this server (library %s) does not match the job: jobs run cold", _LIBRARY)
        sys.exit(1)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.bind(address(key))
    except OSError:
        return  # another server of this identity is up: its jobs connect there
    sock.listen(64)  # jobs may connect (and queue) while the libraries load
    start = time.monotonic()
    failed = preload()
    threads = len(os.listdir("/proc/self/task"))
    logger.info(
        "server %s (pid %d) loaded %d modules in %.1f s; %d threads; failed imports: %s",
        key,
        os.getpid(),
        len(sys.modules),
        time.monotonic() - start,
        threads,
        failed or "none",
    )
    sock.settimeout(1.0)
    last = time.monotonic()
    while time.monotonic() - last < IDLE_SECONDS:
        _reap()
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        last = time.monotonic()
        with conn:
            _take(conn, sock)
    logger.info("no job for %d s: leaving", IDLE_SECONDS)


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _take(conn: socket.socket, listener: socket.socket) -> None:
    """Fork a process for the job on `conn` (only from this user's processes)."""
    conn.settimeout(None)
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    peer_pid, uid, _ = struct.unpack("3i", creds)
    if uid != os.getuid():
        logger.warning("refused a connection of user %d", uid)
        return
    message, fds, _, _ = socket.recv_fds(conn, _MESSAGE, 3)
    request = json.loads(message)
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            listener.close()
            status = _run_job(conn, request, fds)
        finally:
            os._exit(status)
    for fd in fds:
        os.close(fd)
    logger.info("job of process %d: %s in process %d", peer_pid, request["script"], pid)


def _run_job(conn: socket.socket, request: dict, fds: list[int]) -> int:
    """In the fork: become the job's process, run its script, report its status."""
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[CHILD] = "1"
    sys.argv = request["argv"]
    sys.path[0] = os.path.dirname(request["script"])
    conn.send(json.dumps({"pid": os.getpid()}).encode())
    # The job's own process sends nothing more: the connection ends when it dies.
    threading.Thread(target=_stop_with, args=(conn,), daemon=True).start()
    status = 0
    try:
        import runpy

        runpy.run_path(request["script"], run_name="__main__")
    except SystemExit as stop:  # as the interpreter exits: sys.exit(None | int | message)
        if stop.code is None or isinstance(stop.code, int):
            status = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            status = 1
    except BaseException:  # noqa: BLE001 - reported as Python reports an uncaught one
        traceback.print_exc()
        status = 1
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"warm start: ran in process {os.getpid()} forked from server {os.getppid()}: "
        f"{usage.ru_utime:.1f} s user, {usage.ru_stime:.1f} s system CPU",
        file=sys.stderr,
    )
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    conn.send(json.dumps({"status": status}).encode())
    return status


def _stop_with(conn: socket.socket) -> None:
    """Stop this fork when the job's own process is gone (killed, say)."""
    try:
        conn.recv(1)
    finally:
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve(sys.argv[1])
