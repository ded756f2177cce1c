"""The embedded default end to end, jobs started cold against jobs started warm.

Each side runs `snakemake --cores N` in a fresh copy of the workflow (setup excluded, as a
user's second command would), then a no-op `snakemake -n`. It prints the wall time, the CPU
time of the whole machine while it ran (from /proc/stat: it counts the warm-start server and
its forks, which are not Snakemake's children), the ratios, and whether both sides wrote the
same results: the bytes of every parquet file and shard, and the tensors of every safetensors
file under results/ (an erasure delta's metadata records its own run time).

- cold: `--config warm_start=False`: every job is a new Python process importing what it
  needs (torch, diffusers, transformers), as plain Snakemake runs a script.
- warm (the default): jobs without a GPU run in forks of one server that imported the
  library once (README, Warm start).

Run it on an otherwise idle machine: the CPU figures are the whole machine's.

Usage:
    python benchmarks/workflow.py                 # both sides, the embedded default
    python benchmarks/workflow.py --sides warm    # one side
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
COMPARED = ("*.parquet", "*.tar", "*.safetensors")


def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    busy = sum(fields[:3]) + sum(fields[4:8])
    return busy / os.sysconf("SC_CLK_TCK")


def copy_workflow(dest: Path) -> Path:
    """The workflow's files as a fresh clone has them, without results."""
    dest.mkdir(parents=True)
    shutil.copy(REPO / "Snakefile", dest / "Snakefile")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("workflow", "profiles", "src", "envs", "config"):
        shutil.copytree(REPO / folder, dest / folder, ignore=ignore)
    return dest


def timed(command: list[str], cwd: Path) -> tuple[float, float]:
    """Wall and machine CPU seconds of a command that must succeed."""
    cpu, start = machine_cpu_seconds(), time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, machine_cpu_seconds() - cpu
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed in {cwd}:\n{result.stderr[-3000:]}")
    return wall, cpu


def contents(workdir: Path) -> dict[str, bytes]:
    """Each result file's bytes (a safetensors file's tensors, by name)."""
    results = workdir / "results"
    found = {}
    for pattern in COMPARED:
        for path in sorted(results.rglob(pattern)):
            if path.suffix == ".safetensors":
                tensors = load_file(path)
                found[str(path.relative_to(results))] = b"".join(
                    name.encode() + tensors[name].tobytes() for name in sorted(tensors)
                )
            else:
                found[str(path.relative_to(results))] = path.read_bytes()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default="all")
    parser.add_argument("--sides", nargs="+", choices=["cold", "warm"], default=["cold", "warm"])
    args = parser.parse_args()
    knobs = {"cold": ["--config", "warm_start=False"], "warm": []}
    print(f"embedded default, snakemake --cores {args.cores}, {os.cpu_count()} CPUs", flush=True)
    figures, written = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sides:
            workdir = copy_workflow(Path(tmp) / side)
            run = timed([SNAKEMAKE, "--cores", args.cores, *knobs[side]], workdir)
            noop = timed([SNAKEMAKE, "-n", "--cores", args.cores, *knobs[side]], workdir)
            figures[side] = (*run, noop[0])
            written[side] = contents(workdir)
            print(
                f"{side:>5}: {run[0]:7.1f} s wall, {run[1]:7.1f} s machine CPU; "
                f"no-op dry run {noop[0]:.1f} s",
                flush=True,
            )
    if len(figures) == 2:
        (cold_wall, cold_cpu, _), (warm_wall, warm_cpu, _) = figures["cold"], figures["warm"]
        print(
            f"ratio: {cold_wall / warm_wall:5.2f}x wall, "
            f"{cold_cpu / warm_cpu:5.2f}x CPU (cold / warm)"
        )
        cold, warm = written["cold"], written["warm"]
        differ = sorted(
            name for name in cold.keys() | warm.keys() if cold.get(name) != warm.get(name)
        )
        print(
            f"outputs: {len(warm)} parquet, shard and safetensors files, "
            + (f"{len(differ)} DIFFERENT: {differ}" if differ else "the same")
        )


if __name__ == "__main__":
    main()
