"""The embedded default end to end, one process per job, and where its time goes.

Runs `snakemake --cores N` in a fresh copy of the workflow (setup excluded, as a user's
first command after installing), then a no-op `snakemake -n`, and prints the wall time and
the CPU time of the whole machine while it ran (from /proc/stat).

Then, per rule, where the jobs' time went, from their own files: wall time and peak memory
from Snakemake's benchmark files; from each job's log, the seconds before the job's
`setup_job` (interpreter, Snakemake's script preamble, the script's imports: the log's
"job started ... s ago" line) and the imports after it (the run sets
PYTHONPROFILEIMPORTTIME=1, so every job's Python writes `-X importtime` lines, which
`setup_job` sends to the log); the rest is the job's work. Last, the packages whose import
cost the most over all jobs.

Run it on an otherwise idle machine: the CPU figures are the whole machine's.

Usage:
    python benchmarks/workflow.py
    python benchmarks/workflow.py --cores 2 --keep /tmp/run   # keep the run's results
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd

from dafusion.reporting.diagnostics import benchmark_table, rule_name

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
# `-X importtime`: "import time: self [us] | cumulative | <indent>package"; two spaces of
# indent per level of nesting, so an unindented line is an import the job's code started.
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)$", re.M)
STARTED = re.compile(r"job started ([\d.]+) s ago")


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


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and machine CPU seconds of a command that must succeed."""
    cpu, start = machine_cpu_seconds(), time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, machine_cpu_seconds() - cpu
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed in {cwd}:\n{result.stderr[-3000:]}")
    return wall, cpu


def job_imports(log: str) -> Counter:
    """Seconds of each import a job's code started after `setup_job` (unindented lines)."""
    seconds: Counter = Counter()
    for cumulative, indent, package in IMPORT_LINE.findall(log):
        if not indent:
            seconds[package] += int(cumulative) / 1e6
    return seconds


def breakdown(results: Path) -> tuple[pd.DataFrame, Counter]:
    """Per rule: jobs, wall, start-up, imports and work seconds (sums), peak memory; and the
    import seconds of each package over all jobs."""
    root = results / "benchmarks"
    files = sorted(root.rglob("*.tsv"))
    table = benchmark_table(files, root).set_index("rule")
    startup: Counter = Counter()
    imports: Counter = Counter()
    packages: Counter = Counter()
    for path in files:
        log = results / "logs" / path.relative_to(root).with_suffix(".log")
        if not log.is_file():
            continue
        text = log.read_text(errors="replace")
        rule = rule_name(path, root)
        found = STARTED.search(text)
        startup[rule] += float(found.group(1)) if found else 0.0
        job = job_imports(text)
        imports[rule] += sum(job.values())
        packages.update(job)
    out = pd.DataFrame(
        {
            "jobs": table["jobs"],
            "wall_s": table["wall_s_total"],
            "startup_s": pd.Series(startup),
            "imports_s": pd.Series(imports),
            "max_rss_mb": table["max_rss_mb_max"],
        }
    ).fillna({"startup_s": 0.0, "imports_s": 0.0})
    out["work_s"] = out["wall_s"] - out["startup_s"] - out["imports_s"]
    out = out[["jobs", "wall_s", "startup_s", "imports_s", "work_s", "max_rss_mb"]]
    return out.sort_values("wall_s", ascending=False), packages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default="all")
    parser.add_argument("--keep", type=Path, help="run here and keep it (a new folder)")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    print(f"embedded default, snakemake --cores {args.cores}, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = copy_workflow(args.keep or Path(tmp) / "run")
        wall, cpu = timed([SNAKEMAKE, "--cores", args.cores], workdir, env)
        noop, _ = timed([SNAKEMAKE, "-n", "--cores", args.cores], workdir, env)
        print(f"{wall:.1f} s wall, {cpu:.1f} s machine CPU; no-op dry run {noop:.1f} s")
        table, packages = breakdown(workdir / "results")
    total = table.sum(numeric_only=True)
    print(
        f"\nper rule (sums over jobs, s): start-up = before the job's setup_job (interpreter, "
        f"script preamble, script imports); imports = after it\n{table.round(1).to_string()}"
        f"\nall {int(total['jobs'])} jobs: {total['wall_s']:.1f} s wall, start-up "
        f"{total['startup_s']:.1f}, imports {total['imports_s']:.1f}, work {total['work_s']:.1f}"
    )
    heaviest = ", ".join(f"{name} {seconds:.1f}" for name, seconds in packages.most_common(8))
    print(f"heaviest imports after setup_job, over all jobs (s): {heaviest}")


if __name__ == "__main__":
    main()
