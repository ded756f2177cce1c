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

With `--readme README.md` it writes the run's results (the summary table, with the share
of each method's images the reference classifier recognizes, and the report's verdict) and
its run time, with the machine and its load, between the README's markers (with
`--overlay`, both into the README's `overlay` block instead, leaving the default's): the README's
figures come from a run of this version, never typed by hand (a release regenerates them,
docs/development.md).

Usage:
    python benchmarks/workflow.py
    python benchmarks/workflow.py --cores 2 --keep /tmp/run   # keep the run's results
    python benchmarks/workflow.py --cores 2 --readme README.md
    python benchmarks/workflow.py --cores 2 --overlay config/filtering.yaml  # with a filter
    python benchmarks/workflow.py --cores 2 --overlay config/filtering.yaml --readme README.md
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
import yaml

from dafusion.reporting.aggregate import LABELS
from dafusion.reporting.diagnostics import benchmark_table, rule_name
from dafusion.reporting.filter_summary import filter_differences
from dafusion.reporting.verdict import unfinished, verdict

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


def recognition_rates(tables: Path) -> dict[str, float]:
    """Per synthetic method, the share of its images the reference digit classifier
    recognizes as their class, over every recognition table of the run."""
    frames = [pd.read_csv(path) for path in sorted(tables.glob("recognition-*.csv"))]
    if not frames:
        return {}
    rows = pd.concat(frames)
    rows = rows[rows["method"] != "real (few-shot)"]
    hits = (rows["images"] * rows["recognized"]).groupby(rows["method"], sort=False).sum()
    return (hits / rows.groupby("method", sort=False)["images"].sum()).to_dict()


def results_block(results: Path) -> str:
    """The README's results: per examples per class, each method's mean ± one standard error
    over seeds (recognition rates in brackets), then the report's verdict, one line per
    (dataset, shots)."""
    tables = results / "tables"
    config = yaml.safe_load((results / "config.yaml").read_text())
    methods, baseline = list(config["methods"]), config["aggregate"]["baseline"]
    summary = pd.read_csv(tables / "summary.csv")
    rates = recognition_rates(tables)
    titles = [f"{m} ({rates[m]:.2f})" if m in rates else m for m in methods]
    seeds = int(summary["num_seeds"].max())
    what = ", ".join(f"{label} {'/'.join(sorted(set(summary[label])))}" for label in LABELS)
    lines = [
        f"Values: {what}; mean over {seeds} seeds ± one standard error.",
        "",
        "| examples per class | " + " | ".join(titles) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    for shots, cell in summary.groupby("shots", sort=True):
        rows = cell.set_index("method")
        values = [
            f"{rows.at[m, 'accuracy_mean']:.2f} ± "
            f"{(rows.at[m, 'ci68_high'] - rows.at[m, 'ci68_low']) / 2:.2f}"
            if m in rows.index
            else "\u2014"
            for m in methods
        ]
        lines.append(f"| {shots} | " + " | ".join(values) + " |")
    runs = pd.read_csv(tables / "runs.csv")
    late = unfinished(runs, pd.read_csv(tables / "validation.csv"))
    paired = pd.read_csv(tables / "paired.csv")
    filtered = filter_differences(runs, filter_twins(config))
    found = verdict(summary, paired, late, methods, baseline, filtered=filtered)
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {line}" for line in found)


def filter_twins(config: dict) -> dict[str, dict[str, str]]:
    """Per dataset, each filtered method's unfiltered twin (as the report pairs them), from
    the run's resolved config (validated when the run started, every default filled in);
    none when no method has a filter (docs/filtering.md)."""
    if not any(spec.get("filter") for spec in config["methods"].values()):
        return {}
    from dafusion.workflow.plan import Plan

    report = Plan.from_config(config).report.filter_report()
    return {
        dataset: {method: spec["twin"] for method, spec in methods.items() if spec["twin"]}
        for dataset, methods in report.items()
    }


def machine() -> str:
    """The CPU model and the load average before the run: what a time means."""
    model = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPU cores ({model}), load average {os.getloadavg()[0]:.2f} before"


def runtime_line(jobs: int, wall: float, where: str) -> str:
    minutes, seconds = divmod(round(wall), 60)
    return f"{jobs} jobs, each its own process: {minutes} min {seconds} s on {where} the run"


def write_between(path: Path, name: str, text: str) -> None:
    """Replace what lies between `<!-- name -->` and `<!-- /name -->` in `path`."""
    source = path.read_text()
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if source.count(start) != 1 or source.count(end) != 1:
        sys.exit(f"{path}: needs exactly one '{start}' ... '{end}' pair to write {name} into")
    head, rest = source.split(start)
    _, tail = rest.split(end)
    path.write_text(f"{head}{start}{text}{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default="all")
    parser.add_argument("--keep", type=Path, help="run here and keep it (a new folder)")
    parser.add_argument("--readme", type=Path, help="write the results and run time into it")
    parser.add_argument(
        "--overlay",
        action="append",
        default=[],
        metavar="FILE",
        help="a config file merged over config/config.yaml (repeatable), e.g. "
        "config/filtering.yaml: the default with a filtered DA-Fusion",
    )
    args = parser.parse_args()
    configs = ["--configfile", "config/config.yaml", *args.overlay] if args.overlay else []
    where = machine()
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    overlays = f" with {', '.join(args.overlay)}" if args.overlay else ""
    print(
        f"embedded default{overlays}, snakemake --cores {args.cores}, {os.cpu_count()} CPUs",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = copy_workflow(args.keep or Path(tmp) / "run")
        wall, cpu = timed([SNAKEMAKE, "--cores", args.cores, *configs], workdir, env)
        noop, _ = timed([SNAKEMAKE, "-n", "--cores", args.cores, *configs], workdir, env)
        print(f"{wall:.1f} s wall, {cpu:.1f} s machine CPU; no-op dry run {noop:.1f} s")
        table, packages = breakdown(workdir / "results")
        if args.readme:
            jobs = int(table["jobs"].sum())
            block = results_block(workdir / "results")
            if args.overlay:  # the overlay's own block: the default's stay the default's
                ran = f"{' '.join(args.overlay)}: {runtime_line(jobs, wall, where)}."
                write_between(args.readme, "overlay", f"\n{ran}\n\n{block}\n")
            else:
                write_between(args.readme, "runtime", runtime_line(jobs, wall, where))
                write_between(args.readme, "results", f"\n{block}\n")
            print(f"wrote the results and run time into {args.readme}:\n{block}")
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
