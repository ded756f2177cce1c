import functools
import inspect
import re

from snakemake.exceptions import WorkflowError
from snakemake.io import IOFile
from snakemake.logging import logger

from dafusion.provenance import rule_code, workflow_code
from dafusion.reporting.record import resolved_config
from dafusion.shipped import SHIPPED, shipped_digest
from dafusion.workflow import listing, paths
from dafusion.workflow.config import ConfigError, readable
from dafusion.workflow.estimate import run_summary
from dafusion.workflow.contents import TABLES, caption_key, read_captions
from dafusion.workflow.machine import Needs, check_machine, results_write_error
from dafusion.workflow.plan import Plan
from dafusion.workflow.sets import PlanError


wildcard_constraints:
    dataset="[A-Za-z0-9_-]+",
    method="[A-Za-z0-9_-]+",
    seed=r"\d+",
    shots=r"\d+|all",
    part=r"\d+",
    set=r"[0-9a-f]+",
    check=r"[0-9a-f]+",
    parts=r"\d+",
    asset="|".join(map(re.escape, SHIPPED)),


# The workflow's plan for this config (dafusion.workflow.plan): every section's typed settings, the
# targets, each job's inputs, params and resources, and the report. Rules pass
# `result_params()` slices as params: (a change reruns exactly the jobs whose outputs depend
# on it); execution knobs stay out of params: and reach the jobs through the config, so
# changing one reruns nothing. Output paths are dafusion.workflow.paths patterns.
PLAN = Plan.from_config(config)
MODEL, DATASETS, METHODS = PLAN.model, PLAN.datasets, PLAN.methods
INVERSION, ERASURE, CLASSIFIER = PLAN.inversion, PLAN.erasure, PLAN.classifier
SCORING = PLAN.scoring
RESOURCES, REPORT = PLAN.resources, PLAN.report
res = PLAN.res


wildcard_constraints:
    eraser=re.escape(ERASURE.eraser),


def code(rule):
    """The fingerprint of the code a rule's jobs run (dafusion.provenance.rule_code)."""
    return rule_code(rule, workflow.basedir)


def check_gpu_limit():
    """Stop before any job when every GPU job would start at once (Resources.gpu_limit_error).
    Run in onstart, when the executor is known."""
    error = RESOURCES.gpu_limit_error(workflow.local_exec, workflow.global_resources)
    if error:
        raise WorkflowError(error)


def check_results_writable():
    """Stop before any job when jobs could not write the results folder
    (dafusion.workflow.machine). Run in onstart: a dry run writes nothing."""
    error = results_write_error(PLAN.results)
    if error:
        raise WorkflowError(error)


@functools.cache
def checked_machine():
    """Look on this machine for what the requested targets read (dafusion.workflow.machine.Needs):
    dataset roots, the model, backbone weights; every one missing in one error, before any
    job. Called from an input function of the target rules and of every rule that reads
    one of them, so it runs once the DAG is being built, when the targets are known (they
    are not while the Snakefile is parsed). Returns no input."""
    dag = workflow.dag_settings
    needs = Needs.of_targets(
        dag.targets, {spec.rulename for spec in dag.target_jobs}, PLAN.results
    )
    try:
        check_machine(config, ".", needs)
    except ConfigError as exc:
        raise WorkflowError(f"invalid configuration: {exc}") from None
    if not dag.target_jobs:  # the run as a whole, not one job of it on a cluster node
        logger.info(f"dafusion: {run_summary(PLAN)}")
    return []


def checked(w):
    return checked_machine()


# A rule's input, params, threads and resources functions: the plan's methods, each given
# the job's wildcards its parameters name (dataset, method, set, seed, shots, parts).


def of(method):
    """`method` as a function of a job's wildcards."""
    names = list(inspect.signature(method).parameters)
    return lambda wildcards: method(**{name: wildcards[name] for name in names})


def wall_time(method):
    """A runtime resource: `method` given the wildcards, the input files (a manifest that
    sizes the job) and the attempt its parameters name. Snakemake passes `input` and
    `attempt` to a resources function whose arguments are named so."""
    call = of(method)
    return lambda wildcards, input, attempt: call(
        {**wildcards, **input, "attempt": attempt}
    )


# check_dataset and index_dataset rerun when their dataset's files change through the listing
# they carry in their code param (dafusion.workflow.listing); nothing is written while the workflow is
# parsed.
LIST_FILES = functools.cache(listing.listing_digest)  # each root at most once per run


def recorded_params(path):
    """The params Snakemake recorded for an output file (each as its repr), if any;
    none where its metadata cannot be read (an untracked listing then reruns)."""
    try:
        return workflow.persistence.params(IOFile(path))
    except (AttributeError, AssertionError, TypeError, ValueError, OSError):
        return None


def listing_code(rule, output):
    """A params function: the rule's code fingerprint and the listing of the dataset's
    files, as recorded for `output(w)` where the files are not listed (track_files)."""
    fingerprint = code(rule)

    def params(w):
        spec = DATASETS[w.dataset]
        entry = listing.files_entry(
            spec.root,
            spec.track_files,
            recorded=lambda: recorded_params(output(w)),
            lister=LIST_FILES,
        )
        return {**fingerprint, **entry}

    return params


index_code = listing_code(
    "index_dataset", lambda w: PLAN.path(paths.POOL, dataset=w.dataset)
)
check_code = listing_code("check_dataset", of(PLAN.dataset_check))


# Targets, the aggregate and the report.


def evaluated_runs(w):
    try:
        return PLAN.evaluated_runs()
    except PlanError as exc:
        raise WorkflowError(str(exc)) from None


CAPTIONS = read_captions(Path(workflow.basedir, "workflow/report"))
# What the aggregate reports, in words: the aggregate rule's params.measure, which its
# figures' captions show.
MEASURE = PLAN.aggregate.measure()


def caption(name):
    return f"../report/{caption_key(name, CAPTIONS)}.rst"


# What the report records: the resolved config (saved as results/config.yaml, which reads
# back with --configfile; paths relative to the working directory, no execution knobs) and
# one digest of every rule's code.
RESOLVED_CONFIG = resolved_config(readable(config), Path.cwd())
WORKFLOW_CODE = workflow_code(workflow.basedir)

# The aggregate's tables, each also in Snakemake's own report.
TABLE_CAPTIONS = {
    "summary": "accuracy",
    "scores": "scores",
    "novelty": "novelty",
    "paired": "paired",
    "per_class": "per-class",
    "validation": "validation",
}


def table(name):
    return report(
        PLAN.path(paths.TABLE, name=name),
        caption=f"../report/{TABLE_CAPTIONS.get(name, 'tables')}.rst",
        category="Tables",
        labels={"table": name},
    )
