import os

import pytest
import torch
from safetensors.torch import save_file

from dafusion.jobs.io import atomic_path


def test_outputs_get_the_usual_permissions(tmp_path):
    """safetensors writes 0600; results must be readable as the umask allows (shared clusters)."""
    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "t.safetensors") as tmp:
            save_file({"x": torch.zeros(1)}, str(tmp))
    finally:
        os.umask(mask)
    assert (tmp_path / "t.safetensors").stat().st_mode & 0o777 == 0o644


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.parquet") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_a_job_caps_torch_threads_without_importing_torch(tmp_path):
    """setup_job limits torch to the job's threads, yet a job that never uses torch (the
    splits, the report) does not pay for importing it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from dafusion.jobs.io import setup_job\n"
        f"setup_job({str(tmp_path / 'job.log')!r}, threads=1)\n"
        "print('torch' in sys.modules)\n"
        "import torch\n"
        "print(torch.get_num_threads())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "1"]
    assert "dafusion from" in (tmp_path / "job.log").read_text()


def test_a_jobs_native_stderr_and_start_up_time_reach_its_log(tmp_path):
    """What native code writes to file descriptor 2 (CUDA, a crash) lands in the job's log,
    and the log says how long the job took to start (benchmarks/workflow.py reads it)."""
    import re
    import subprocess
    import sys

    code = (
        "import os, time\n"
        "time.sleep(0.3)\n"
        "from dafusion.jobs.io import setup_job\n"
        f"setup_job({str(tmp_path / 'job.log')!r})\n"
        "os.write(2, b'native message\\n')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    log = (tmp_path / "job.log").read_text()
    assert "native message" in log
    started = float(re.search(r"job started ([\d.]+) s ago", log).group(1))
    assert 0.3 <= started < 60


FAILING_JOB = (
    "import sys\n"
    "from dafusion.jobs.io import setup_job\n"
    "setup_job(sys.argv[1])\n"
    "raise RuntimeError('no space left for the checkpoint')\n"
)


def test_why_a_job_failed_is_at_the_end_of_its_log(tmp_path):
    """An uncaught exception's traceback ends the job's log (Snakemake names the log), and
    stays off the terminal, where parallel jobs would interleave."""
    import subprocess
    import sys

    log = tmp_path / "job.log"
    ran = subprocess.run(
        [sys.executable, "-c", FAILING_JOB, str(log)], capture_output=True, text=True
    )
    assert ran.returncode != 0
    assert log.read_text().endswith("RuntimeError: no space left for the checkpoint\n")
    assert "no space left" not in ran.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_a_job_whose_log_cannot_be_written_says_why_it_failed_on_its_stderr():
    """A full disk (/dev/full: every write fails with ENOSPC) leaves the log empty: why the
    job failed goes to the job's own stderr instead, which Snakemake prints, naming the log."""
    import subprocess
    import sys

    ran = subprocess.run(
        [sys.executable, "-c", FAILING_JOB, "/dev/full"], capture_output=True, text=True
    )
    assert ran.returncode != 0
    assert "cannot write the job's log /dev/full ([Errno 28]" in ran.stderr
    assert ran.stderr.rstrip().endswith("RuntimeError: no space left for the checkpoint")
