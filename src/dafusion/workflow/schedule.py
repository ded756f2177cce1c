"""Wall-clock time of a config's grid on N GPUs (`python -m dafusion.workflow.estimate`'s
third table): a list schedule of the grid's GPU jobs (`gpu_jobs`, each of its stage's work
formula's seconds, after the jobs it waits for) on N GPUs, never below the GPU-hours over N
nor the critical path, the longest chain of jobs that wait for each other."""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import runtime
from .grid import check_numbers, dataset_classes
from .plan import Plan


@dataclass(frozen=True)
class Job:
    """One GPU job: its rule and wildcards in words, its seconds of work (`runtime`'s
    formulas, as `stages` sums them) and the jobs it waits for (indices of earlier jobs)."""

    name: str
    seconds: float
    after: tuple[int, ...] = ()


# The GPU counts the wall-clock table shows unless --gpus says.
DEFAULT_GPUS = (1, 8, 64)


def gpu_jobs(plan: Plan, costs: Mapping[str, runtime.Cost] = runtime.COSTS) -> list[Job]:
    """The grid's GPU jobs, each after those it waits for: erase, then invert_erased (plain
    tokens: invert; tokens with a LoRA: lora), then the generate jobs of a set whose prompt
    uses the tokens or whose UNet is erased, then the train jobs that read the set; where
    a filter reads a set's classifier or clip scores, their scoring jobs after the set
    (and the run of `scoring.classifier_method` whose head the classifier scorer reads),
    and the filtered runs after them. Their
    seconds add up to the stages' hours; the CPU jobs between them (indexing, splits,
    gathering a set) and the evaluations (`stages`) are not counted."""
    check_numbers(plan)
    costs = runtime.for_family(costs, plan.family)
    inversion, erasure = plan.inversion, plan.erasure
    jobs: list[Job] = []

    def add(name: str, seconds: float, after: Sequence[int | None] = ()) -> int:
        jobs.append(Job(name, seconds, tuple(j for j in after if j is not None)))
        return len(jobs) - 1

    for dataset in plan.datasets:
        classes = dataset_classes(plan, dataset)
        erase = None
        if dataset in plan.erased_datasets():
            erase = add(f"erase {dataset}", runtime.erase_seconds(erasure, classes, costs))
        kinds = sorted({plan.token_job(dataset, m) for m in plan.token_methods(dataset)})
        for seed in plan.seeds:
            for shots in plan.shots:
                cell = f"seed{seed}-shots{shots}"
                tokens = {
                    kind: add(
                        f"{kind} {dataset} {cell}",
                        runtime.invert_seconds(
                            inversion.replace(steps=plan.token_steps(kind)), classes, costs
                        ),
                        [erase if kind == "invert_erased" else None],
                    )  # fmt: skip
                    for kind in kinds
                }
                parts: dict[str, list[int]] = {}
                for name, methods in plan.sets.by_name(dataset).items():
                    spec = plan.methods[methods[0]]
                    generation = plan.sets.generation(dataset, name)
                    assert spec.strengths is not None  # a set's methods are SDEdit's
                    steps = runtime.mean_steps(generation.num_inference_steps, spec.strengths)
                    sources = classes * int(shots)
                    seconds = runtime.generate_seconds(generation, sources, steps, costs)
                    shards = -(-sources * generation.num_synthetic // generation.shard_size)
                    count = max(1, min(generation.parts, shards))  # as Plan.generate_parts
                    after = [
                        tokens[plan.token_job(dataset, methods[0])]
                        if plan.uses_tokens(dataset, methods[0])
                        else None,
                        erase if spec.erased else None,
                    ]
                    parts[name] = [
                        add(
                            f"generate {dataset}/{methods[0]} {cell}"
                            + (f" part {p + 1} of {count}" if count > 1 else ""),
                            seconds / count,
                            after,
                        )  # fmt: skip
                        for p in range(count)
                    ]
                # The runs without a filter, then the scores of each set (the classifier
                # scorer's after the run whose head it reads), then the runs that read them.
                runs = [m for m, spec in plan.methods.items() if spec.runs_on(dataset)]
                filtered = set(plan.filtered_methods(dataset))
                trained: dict[str, int] = {}
                scored: dict[tuple[str, str], int] = {}
                order = [m for m in runs if m not in filtered] + [m for m in runs if m in filtered]
                for method in order:
                    if method in filtered and method == order[len(runs) - len(filtered)]:
                        head = trained.get(plan.scoring.classifier_method)
                        for scorer in plan.scorers(dataset):
                            if scorer not in runtime.DEVICE_SCORERS:
                                continue  # change: a CPU job
                            for name, methods in plan.sets.by_name(dataset).items():
                                size = plan.sets.generation(dataset, name).num_synthetic
                                images = classes * int(shots) * size
                                scored[name, scorer] = add(
                                    f"score_{scorer} {dataset}/{methods[0]} {cell}",
                                    runtime.score_seconds(scorer, images, costs),
                                    [*parts[name], head if scorer == "classifier" else None],
                                )
                    spec = plan.methods[method]
                    reads: list[int | None] = []
                    if spec.synthetic:
                        name = plan.sets.name(dataset, method)
                        reads = [*parts[name]]
                        if method in filtered:
                            by = plan.filter_of(method)
                            assert by is not None  # a filtered method's
                            reads.append(scored.get((name, by.by)))
                    classifier = plan.classifier_for(dataset, method)
                    seconds = runtime.train_seconds(classifier, 0, costs)
                    trained[method] = add(f"train {dataset}/{method} {cell}", seconds, reads)
    return jobs


def tails(jobs: Sequence[Job]) -> list[float]:
    """Each job's longest chain to the end of the DAG, in seconds, its own included: the
    list schedule's priority; the largest is the critical path."""
    longest = [job.seconds for job in jobs]
    for i in range(len(jobs) - 1, -1, -1):
        for j in jobs[i].after:
            if j >= i:
                raise ValueError(f"job {i} ({jobs[i].name}) waits for a later job, {j}")
            longest[j] = max(longest[j], jobs[j].seconds + longest[i])
    return longest


def critical_path(jobs: Sequence[Job]) -> list[Job]:
    """The longest chain of jobs that wait for each other (the first of equal ones)."""
    longest = tails(jobs)
    if not jobs:
        return []
    children: list[list[int]] = [[] for _ in jobs]
    for i, job in enumerate(jobs):
        for j in job.after:
            children[j].append(i)
    i = max(range(len(jobs)), key=lambda k: (longest[k], -k))
    path = [jobs[i]]
    while children[i]:
        i = max(children[i], key=lambda k: (longest[k], -k))
        path.append(jobs[i])
    return path


def wall_clock(jobs: Sequence[Job], gpus: int) -> float:
    """The seconds `jobs` take on `gpus` GPUs, one job per GPU at a time, as a greedy list
    schedule: whenever a GPU is free it takes the ready job with the longest chain after it
    (`tails`; the first listed of equal ones). At least max(the jobs' seconds / gpus, the
    critical path), at most the two added (Graham's bound); on 1 GPU the jobs' seconds, on
    as many GPUs as jobs the critical path. A list schedule may in rare cases take longer on
    more GPUs (Graham's anomalies): config/paper.yaml's takes no longer on any of 1 to 128."""
    if gpus < 1:
        raise ValueError(f"GPUs must be at least 1, not {gpus}")
    priority = tails(jobs)
    waiting = [len(job.after) for job in jobs]
    children: list[list[int]] = [[] for _ in jobs]
    for i, job in enumerate(jobs):
        for j in job.after:
            children[j].append(i)
    ready = [(-priority[i], i) for i in range(len(jobs)) if not waiting[i]]
    heapq.heapify(ready)
    running: list[tuple[float, int]] = []  # (when it ends, job)
    now = 0.0
    while ready or running:
        while ready and len(running) < gpus:
            _, i = heapq.heappop(ready)
            heapq.heappush(running, (now + jobs[i].seconds, i))
        now = running[0][0]
        while running and running[0][0] <= now:
            _, i = heapq.heappop(running)
            for child in children[i]:
                waiting[child] -= 1
                if not waiting[child]:
                    heapq.heappush(ready, (-priority[child], child))
    return now


def wall_clock_table(
    plan: Plan,
    costs: Mapping[str, runtime.Cost] = runtime.COSTS,
    gpus: Sequence[int] = DEFAULT_GPUS,
) -> str:
    """The wall-clock hours of the grid's GPU jobs on each of `gpus` GPUs (`wall_clock`),
    its two lower bounds, and the critical path's jobs."""
    jobs = gpu_jobs(plan, costs)
    total = sum(job.seconds for job in jobs) / 3600
    path = critical_path(jobs)
    longest = sum(job.seconds for job in path) / 3600
    lines = [
        "| GPUs | wall-clock hours | GPU-hours / GPUs | critical path hours |",
        "|---|---|---|---|",
    ]
    for n in gpus:
        hours = wall_clock(jobs, n) / 3600
        lines.append(f"| {n:,} | {hours:,.1f} | {total / n:,.1f} | {longest:,.1f} |")
    chain = " → ".join(f"`{job.name}` {job.seconds / 3600:,.2f} h" for job in path)
    lines += [
        "",
        f"Critical path (GPU jobs only, evaluations not counted): {chain or 'no GPU job'}.",
    ]
    return "\n".join(lines) + "\n"
