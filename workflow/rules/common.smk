import functools
import re

from snakemake.exceptions import WorkflowError
from snakemake.io import IOFile
from snakemake.logging import logger

from dafusion import listing, paths
from dafusion.config import ConfigError, Needs, check_machine
from dafusion.estimate import run_summary
from dafusion.plan import (
    TABLES,
    Plan,
    PlanError,
    caption_key,
    read_captions,
)
from dafusion.provenance import rule_code, workflow_code
from dafusion.record import resolved_config
from dafusion.shipped import SHIPPED, shipped_digest


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


# The workflow's plan for this config (dafusion.plan): every section's typed settings, the
# targets, each job's inputs, params and resources, and the report. Rules pass
# `result_params()` slices as params: (a change reruns exactly the jobs whose outputs depend
# on it); execution knobs stay out of params: and reach the jobs through the config, so
# changing one reruns nothing. Output paths are dafusion.paths patterns.
PLAN = Plan.from_config(config)
MODEL, DATASETS, METHODS = PLAN.model, PLAN.datasets, PLAN.methods
INVERSION, ERASURE, CLASSIFIER = PLAN.inversion, PLAN.erasure, PLAN.classifier
res = PLAN.res


wildcard_constraints:
    eraser=re.escape(ERASURE.eraser),


def code(rule):
    """The fingerprint of the code a rule's jobs run (dafusion.provenance.rule_code)."""
    return rule_code(rule, workflow.basedir)


def check_gpu_limit():
    """Stop before any job when every GPU job would start at once (Plan.gpu_limit_error).
    Run in onstart, when the executor is known."""
    error = PLAN.gpu_limit_error(workflow.local_exec, workflow.global_resources)
    if error:
        raise WorkflowError(error)


def check_results_writable():
    """Stop before any job when jobs could not write the results folder
    (Plan.results_write_error). Run in onstart: a dry run writes nothing."""
    error = PLAN.results_write_error()
    if error:
        raise WorkflowError(error)


@functools.cache
def checked_machine():
    """Look on this machine for what the requested targets read (dafusion.config.Needs):
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


def gpus(device):
    return PLAN.gpus(device)


# Functions of a job's wildcards, for the rules' inputs, params and resources.


def classifier_for(w):
    return PLAN.classifier_for(w.dataset, w.method)


def model_input(w):
    return PLAN.model_input()


def model_threads(w):
    return PLAN.model_threads()


def split_path(w):
    return PLAN.split_path(w.dataset, w.seed, w.shots)


def training_pool(w):
    return PLAN.training_pool(w.dataset, w.seed)


def eval_split(w):
    return PLAN.eval_split(w.dataset, w.seed)


def index_params(w):
    return PLAN.index_params(w.dataset)


def index_mem_mb(w):
    return PLAN.index_mem_mb(w.dataset)


def set_erasure(w):
    return PLAN.set_erasure(w.dataset, w.set)


def set_params(w):
    return PLAN.set_params(w.dataset, w.set)


def generate_tokens(w):
    return PLAN.generate_tokens(w.dataset, w.set, w.seed, w.shots)


def generate_parts(w):
    return PLAN.generate_parts(w.dataset, w.set, w.seed, w.shots)


def train_synthetic(w):
    return PLAN.train_synthetic(w.dataset, w.method, w.seed, w.shots)


def run_synthetic_params(w):
    return PLAN.run_synthetic_params(w.dataset, w.method)


def generate_runtime(wildcards, input, attempt):
    w, parts = wildcards, int(wildcards.parts)
    return PLAN.generate_minutes(w.dataset, w.set, input.split, attempt, parts=parts)


def gather_runtime(wildcards, attempt):
    return PLAN.gather_minutes(attempt)


def invert_runtime(wildcards, input, attempt):
    return PLAN.invert_minutes(input.split, attempt)


def erase_runtime(wildcards, input, attempt):
    return PLAN.erase_minutes(input.pool, attempt)


def train_runtime(wildcards, input, attempt):
    w = wildcards
    return PLAN.train_minutes(w.dataset, w.method, input.val, input.test, attempt)


# check_dataset and index_dataset rerun when their dataset's files change through the listing
# they carry in their code param (dafusion.listing); nothing is written while the workflow is
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
check_code = listing_code("check_dataset", lambda w: dataset_check(w))


def dataset_check(w):
    return PLAN.dataset_check(w.dataset)


# Targets, the aggregate and the report.


def evaluated_runs(w):
    try:
        return PLAN.evaluated_runs()
    except PlanError as exc:
        raise WorkflowError(str(exc)) from None


def gallery_inputs(w):
    return PLAN.gallery_inputs(w.dataset)


def recognition_inputs(w):
    return PLAN.recognition_inputs(w.dataset)


def report_inputs(w):
    return PLAN.report_inputs()


CAPTIONS = read_captions(Path(workflow.basedir, "workflow/report"))
# What the aggregate reports, in words: the aggregate rule's params.measure, which its
# figures' captions show.
MEASURE = PLAN.aggregate.measure()


def caption(name):
    return f"../report/{caption_key(name, CAPTIONS)}.rst"


# What the report records: the resolved config (saved as results/config.yaml; paths relative
# to the working directory, no execution knobs) and one digest of every rule's code.
RESOLVED_CONFIG = resolved_config(config, Path.cwd())
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
