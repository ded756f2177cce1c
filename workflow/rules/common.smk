import functools
import re

from snakemake.exceptions import WorkflowError
from snakemake.io import IOFile

from dafusion import listing, paths
from dafusion.plan import (
    TABLES,
    Plan,
    PlanError,
    caption_key,
    read_captions,
    rule_code,
    workflow_code,
)
from dafusion.record import resolved_config
from dafusion.shipped import REFERENCE_CLASSIFIER


wildcard_constraints:
    dataset="[A-Za-z0-9_-]+",
    method="[A-Za-z0-9_-]+",
    seed=r"\d+",
    shots=r"\d+|all",
    part=r"\d+",
    set=r"[0-9a-f]+",
    parts=r"\d+",


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
    """The fingerprint of the code a rule's jobs run (dafusion.plan.rule_code)."""
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


# index_dataset reruns when its dataset's files change through the listing it carries in
# its code param (dafusion.listing); nothing is written while the workflow is parsed.
INDEX_CODE = code("index_dataset")
LIST_FILES = functools.cache(listing.listing_digest)  # each root at most once per run


def recorded_params(path):
    """The params Snakemake recorded for an output file (each as its repr), if any;
    none where its metadata cannot be read (an untracked listing then reruns)."""
    try:
        return workflow.persistence.params(IOFile(path))
    except (AttributeError, AssertionError, TypeError, ValueError, OSError):
        return None


def index_code(w):
    spec = DATASETS[w.dataset]
    entry = listing.files_entry(
        spec.root,
        spec.track_files,
        recorded=lambda: recorded_params(PLAN.path(paths.POOL, dataset=w.dataset)),
        legacy=listing.read_legacy(PLAN.path(paths.LEGACY_LISTING, dataset=w.dataset)),
        lister=LIST_FILES,
    )
    return {**INDEX_CODE, **entry}


def legacy_listing(w):
    return listing.legacy_input(PLAN.path(paths.LEGACY_LISTING, dataset=w.dataset))


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
