"""The embedded default, reduced, through `--profile profiles/slurm` on a real single-node
Slurm (tests/slurm.py), gives the results of a local run.

It runs only when asked (DAFUSION_TEST_SLURM=1, as root; .ci/run sets it): it installs
Debian's slurm-wlm and munge when missing and writes /etc/slurm. Otherwise, or where Slurm
cannot be installed, the test skips and says why in the test summary.
"""

from __future__ import annotations

import os
import re
import subprocess

import pandas as pd
import pytest
import slurm
from helpers import REDUCED, SNAKEMAKE, copy_workflow, snakemake, workflow_plan, write_config

pytestmark = pytest.mark.cluster

# Two methods, one seed, one shot count, no erasure: every rule but erase, in few jobs.
SLURM_REDUCED = {
    **REDUCED,
    "examples_per_class": [1],
    "methods": {k: v for k, v in REDUCED["methods"].items() if k in ("baseline", "da-fusion")},
    "erasure": {"enabled": False},
}
# The node is this machine (2 CPUs in CI): cap threads as the local run's --cores 2 does.
# No accounting: job status from squeue (finished jobs stay listed, MinJobAge); the first
# status check after 2 s instead of 40 s to keep the test short.
SLURM_ARGS = (
    "--max-threads", "2",
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "2",
    "--slurm-keep-successful-logs",
)  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = slurm.not_enabled()
    if reason is not None:
        pytest.skip(f"the Slurm test did not run: {reason}")
    reason = slurm.install()
    if reason is not None:
        pytest.skip(f"no Slurm to test profiles/slurm on: {reason}")
    node = slurm.SingleNodeSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        node.start()
    except Exception:
        node.stop()
        raise
    yield node
    node.stop()


def results(workdir) -> tuple[pd.DataFrame, dict[str, bytes]]:
    root = workdir / "results/digits"
    runs = pd.concat(
        [pd.read_parquet(p).assign(file=p.name) for p in sorted(root.glob("runs/*/*.parquet"))]
    )
    synthetic = {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted((root / "synthetic").rglob("*"))
        if p.is_file()
    }
    return runs.reset_index(drop=True), synthetic


def submitted_jobs(stderr: str) -> dict[str, dict[str, str]]:
    """Slurm's record of every job the run submitted (squeue keeps them: MinJobAge), by
    rule and wildcards (the job's comment)."""
    jobs = {}
    for job_id in re.findall(r"has been submitted with SLURM jobid (\d+)", stderr):
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True
        ).stdout
        fields = dict(re.findall(r"(\S+?)=(\S*)", out))
        jobs[fields["Comment"]] = fields
    return jobs


def test_the_slurm_profile_runs_the_workflow_with_a_local_runs_results(tmp_path, cluster):
    local = copy_workflow(tmp_path / "local")
    on_slurm = copy_workflow(tmp_path / "slurm")
    for workdir in (local, on_slurm):
        write_config(workdir, "config.yaml", SLURM_REDUCED)

    # Both at once (the results do not depend on timing): the local run stops at the runs.
    slurm_run = subprocess.Popen(
        [*SNAKEMAKE, "--profile", "profiles/slurm", *SLURM_ARGS],
        cwd=on_slurm, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    try:
        runs = [f"results/digits/runs/{m}/seed0-shots1.parquet" for m in SLURM_REDUCED["methods"]]
        result = snakemake(local, "--cores", "2", *runs)
        assert result.returncode == 0, result.stderr[-5000:]
        stdout, stderr = slurm_run.communicate(timeout=900)
    finally:
        slurm_run.kill()
    assert slurm_run.returncode == 0, stderr[-5000:] + cluster.logs()
    assert (on_slurm / "results/report.html").exists()

    # Every job but the local ones ran on Slurm, with its rule's declarations: the `all`
    # target and the copy of the reference classifier the recognition job reads
    # (place_shipped, a localrule).
    jobs = submitted_jobs(stderr)
    steps = int(re.search(r"(\d+) of \1 steps \(100%\) done", stderr).group(1))
    assert len(jobs) == steps - 2
    assert not any(name.startswith("rule_place_shipped") for name in jobs)
    assert all(job["JobState"] == "COMPLETED" for job in jobs.values())
    # da-fusion's set, in one part (wildcards dataset, set, seed, shots, part, parts)
    daf = workflow_plan(SLURM_REDUCED).sets.name("digits", "da-fusion")
    generate = jobs[f"rule_generate_wildcards_digits_{daf}_0_1_0_1"]
    # The tiny model's jobs: 2 GB and one thread (common.smk, model_mem_mb and model_threads).
    assert (generate["MinMemoryNode"], generate["CPUs/Task"]) == ("2000M", "1")
    # runtime: 10 minutes of start-up plus the images x M x steps estimate, rounded up.
    assert generate["TimeLimit"] == "00:11:00"
    index = jobs["rule_index_dataset_wildcards_digits"]
    assert (index["MinMemoryNode"], index["TimeLimit"]) == ("4000M", "02:00:00")
    # On a CPU device no job asks for a GPU.
    assert not [c for c, job in jobs.items() if "gpu" in job["TRES"] + job.get("TresPerJob", "")]

    local_runs, local_synthetic = results(local)
    slurm_runs, slurm_synthetic = results(on_slurm)
    pd.testing.assert_frame_equal(slurm_runs, local_runs)
    assert len(local_runs) and any(name.endswith(".tar") for name in local_synthetic)
    assert set(slurm_synthetic) == set(local_synthetic)
    assert slurm_synthetic == local_synthetic
