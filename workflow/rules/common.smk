import errno
import math
import os
import re
from types import SimpleNamespace

import jinja2
from snakemake.exceptions import WorkflowError

from dafusion.devices import will_use_cuda
from dafusion.listing import listing_digest
from dafusion.provenance import digest, step_code
from dafusion.readers import index_keys
from dafusion.settings import (
    AggregateSettings,
    ClassifierSettings,
    DatasetSettings,
    ErasureSettings,
    GenerationSettings,
    InversionSettings,
    MethodSettings,
    ModelSettings,
)


wildcard_constraints:
    dataset="[A-Za-z0-9_-]+",
    method="[A-Za-z0-9_-]+",
    seed=r"\d+",
    shots=r"\d+|all",


RESULTS = config["results"]
# The typed settings of every section. Rules pass `result_params()` slices as params: (a
# change reruns exactly the jobs whose outputs depend on it); execution knobs stay out of
# params: and reach the jobs through the config, so changing one reruns nothing.
MODEL = ModelSettings.from_config(config["model"])
DATASETS = {
    name: DatasetSettings.from_config(s) for name, s in config["datasets"].items()
}
INVERSION = InversionSettings.from_config(config["inversion"])
METHODS = {name: MethodSettings.from_config(s) for name, s in config["methods"].items()}
ERASURE = ErasureSettings.from_config(config["erasure"])


wildcard_constraints:
    eraser=re.escape(ERASURE.eraser),


CLASSIFIER = ClassifierSettings.from_config(config["classifier"])


def generation_for(wildcards):
    """A generate job's settings: the section, the dataset's and the method's overrides."""
    return GenerationSettings.resolve(
        config["generation"],
        DATASETS[wildcards.dataset].generation,
        METHODS[wildcards.method].generation,
    )


# generation.parts > 1: the rows each part of a set writes, beside the set's folder (the
# library's dafusion.synthetic.parts_dir). They stay after the index is written.
PART = "{dataset}/synthetic/{method}/.parts/seed{seed}-shots{shots}/part-{part}-of-{parts}.json"


wildcard_constraints:
    part=r"\d+",
    parts=r"\d+",


def synthetic_index(wildcards):
    w = wildcards
    return res(
        f"{w.dataset}/synthetic/{w.method}/seed{w.seed}-shots{w.shots}/index.parquet"
    )


def generate_parts(wildcards):
    """The part files a set's generate job gathers: none with generation.parts: 1 (the
    job writes the shards itself). An execution knob, so changing it reruns nothing: for a
    set whose index exists these are the parts that made it (the files its job left, the
    inputs Snakemake recorded for it), whatever `parts` is now; a set made by one job has
    none. A set without an index is made with the configured number of parts."""
    w = wildcards
    parts = config["generation"]["parts"]
    pattern = res(
        PART.format(
            dataset=w.dataset, method=w.method, seed=w.seed, shots=w.shots,
            part="{}", parts="{}",
        )
    )  # fmt: skip
    if Path(synthetic_index(w)).exists():
        folder = pattern.rsplit("/", 1)[0]
        return [
            f"{folder}/{p.name}" for p in sorted(Path(folder).glob("part-*-of-*.json"))
        ]
    return [pattern.format(p, parts) for p in range(parts)] if parts > 1 else []


def generate_gpus(wildcards):
    """A generate job that gathers parts computes nothing on a GPU."""
    return 0 if generate_parts(wildcards) else gpus(MODEL.device)


def classifier_for(wildcards):
    """A train job's settings: the section, the dataset's and the method's overrides (and a
    baseline's alpha of 0)."""
    method = METHODS[wildcards.method]
    settings = ClassifierSettings.resolve(
        config["classifier"], DATASETS[wildcards.dataset].classifier, method.classifier
    )
    return settings.for_method(method)


AGGREGATE = AggregateSettings.from_config(config["aggregate"])


def res(path):
    """A path under the results root."""
    return f"{RESULTS}/{path}"


def code(rule):
    """Content hashes of the code a rule's jobs run: its script, its pipeline function and
    the library modules those import (dafusion.provenance). An edit reruns exactly the jobs
    that run the edited code; touch or a fresh clone reruns nothing."""
    script = f"workflow/scripts/{rule}.py"
    return {
        **step_code(rule),
        script: digest((Path(workflow.basedir) / script).read_bytes()),
    }


def check_gpu_limit():
    """GPU jobs queue for the `gpu` resource (the profile's gpu=1) and each claims a GPU of
    its own (dafusion.devices.claim_device), waiting while every GPU is taken. Any
    --resources on the command line replaces the profile's list, and without a gpu limit
    every GPU job would start at once, holding cores and memory while it waits for a GPU:
    stop first. Run in onstart, when the executor is known (a cluster gives each job its
    own GPU).
    """
    if not workflow.local_exec or "gpu" in workflow.global_resources:
        return
    keys = [
        f"{section}.device ({settings.device})"
        for section, settings in (("model", MODEL), ("classifier", CLASSIFIER))
        if will_use_cuda(settings.device)
    ]
    if keys:
        raise WorkflowError(
            f"GPU jobs ({', '.join(keys)}) would all start at once: --resources replaced "
            "the profile's gpu=1. Add gpu=1 to --resources (one GPU job at a time), or "
            "gpu=N on a machine with N GPUs (each GPU job claims one of its own)"
        )


def gpus(device):
    """1 for a job that will compute on CUDA (GPU jobs then queue for --resources gpu=N,
    and each claims a GPU of its own when it starts)."""
    return int(will_use_cuda(device))


# Wall times for a cluster (README, Running on a cluster): every rule's `runtime`, in minutes
# (Slurm's unit), is an estimate that scales with the job's work. Per-unit costs measured on
# one H200 with Stable Diffusion v1.4's full-size architecture (README, Benchmarks), times
# RUNTIME_MARGIN for slower GPUs, plus RUNTIME_START_MIN for start-up and model loading; the
# tiny model on a CPU costs about as much per unit. Never below RUNTIME_START_MIN. A retry
# (profiles/slurm: retries) asks for `attempt` times the estimate, so a job killed at its
# time limit gets more the next time.
RUNTIME_MARGIN = 4
RUNTIME_START_MIN = 10
# 3.57 images/s at 50 denoising steps (bfloat16, batch 32)
GENERATE_S_PER_IMAGE_STEP = 0.0056
# 20 steps x 4 classes x batch 4 in 3.7 s (float16)
INVERT_S_PER_SAMPLE_STEP = 0.0116
# faithful ESD: 1,257 s per class for 1000 iterations at 50 DDIM steps
ESD_S_PER_ITERATION = 1.26
# ResNet-50, 256 px, 20 classes: 400 steps in 5.2 s
TRAIN_S_PER_STEP = 0.013
# not measured: a ResNet-50 forward of one 256 px image, with margin
EVAL_S_PER_IMAGE = 0.002


def rows(path):
    """The number of rows of a parquet file (a FileNotFoundError naming it while the file is
    yet to be made, which Snakemake takes as 'resources to be determined')."""
    import pyarrow.parquet as pq

    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "not made yet", str(path))
    return pq.read_metadata(path).num_rows


def class_count(path):
    """The number of classes (labels) in a manifest (as `rows`)."""
    import pyarrow.parquet as pq

    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "not made yet", str(path))
    return len(pq.read_table(path, columns=["label"]).column("label").unique())


def minutes(seconds, attempt):
    estimate = RUNTIME_START_MIN + RUNTIME_MARGIN * seconds / 60
    return math.ceil(estimate) * attempt


def generate_seconds(wildcards, split):
    """Images x M x denoising steps."""
    generation = generation_for(wildcards)
    work = rows(split) * generation.num_synthetic * generation.num_inference_steps
    return work * GENERATE_S_PER_IMAGE_STEP


def generate_runtime(wildcards, input, attempt):
    """A set's images; none when the job only gathers the parts (generation.parts)."""
    if input.parts:
        return minutes(0, attempt)
    return minutes(generate_seconds(wildcards, input.split), attempt)


def generate_part_runtime(wildcards, input, attempt):
    """Its share of the set's images."""
    seconds = generate_seconds(wildcards, input.split) / int(wildcards.parts)
    return minutes(seconds, attempt)


def invert_runtime(wildcards, input, attempt):
    """Steps x classes x batch size (one joint inversion trains every class each step)."""
    work = INVERSION.steps * class_count(input.split) * INVERSION.batch_size
    return minutes(work * INVERT_S_PER_SAMPLE_STEP, attempt)


def erase_runtime(wildcards, input, attempt):
    """ESD: iterations x classes (one delta per class; one for `scope: joint`), scaled by the
    DDIM steps it samples with; UCE is closed form (seconds)."""
    if ERASURE.method != "esd":
        return minutes(0, attempt)
    deltas = class_count(input.pool) if ERASURE.scope == "class" else 1
    per_iteration = ESD_S_PER_ITERATION * ERASURE.ddim_steps / 50
    return minutes(ERASURE.iterations * deltas * per_iteration, attempt)


def train_runtime(wildcards, input, attempt):
    """Steps, plus an evaluation of the validation (and test) images every eval_interval."""
    classifier = classifier_for(wildcards)
    evaluations = classifier.steps // classifier.eval_interval + 1
    images = rows(input.val) + rows(input.test)
    work = classifier.steps * TRAIN_S_PER_STEP + evaluations * images * EVAL_S_PER_IMAGE
    return minutes(work, attempt)


def model_threads(wildcards):
    """Threads of a job that runs the diffusion model: the tiny model's operations are too
    small to share across threads, and most of its jobs' time is single-threaded start-up
    (imports, loading), so one thread each lets two of them run at once on two cores."""
    return 1 if MODEL.pretrained == "tiny" else 2


def model_mem_mb(full_size):
    """Memory of a job that loads the diffusion model: the tiny model's jobs peak at 1.2 GB
    (the embedded default's benchmark files), a full-size model's at `full_size`."""
    return 2000 if MODEL.pretrained == "tiny" else full_size


def erase_model_params():
    """The model settings an erasure depends on (it trains in float32 whatever the dtype)."""
    return {k: v for k, v in MODEL.result_params().items() if k != "dtype"}


def split_path(wildcards):
    return res(
        f"{wildcards.dataset}/splits/seed{wildcards.seed}-shots{wildcards.shots}.parquet"
    )


def model_input(wildcards=None):
    """The built tiny model directory, or nothing for a hub id / local directory."""
    return res("model/tiny") if MODEL.pretrained == "tiny" else []


def grid(pattern, methods):
    """Expand a result pattern over datasets, methods (those that run on the dataset),
    seeds and shots."""
    return [
        res(pattern.format(dataset=d, method=m, seed=s, shots=k))
        for d in DATASETS
        for m in methods
        if METHODS[m].runs_on(d)
        for s in config["seeds"]
        for k in config["examples_per_class"]
    ]


def synthetic_methods():
    return [name for name, method in METHODS.items() if method.synthetic]


def tokens_path(dataset, method, seed, shots):
    """A method's class tokens: learned against the erased UNet for an erased method."""
    folder = (
        f"{dataset}/tokens/{ERASURE.eraser}"
        if METHODS[method].erased
        else f"{dataset}/tokens"
    )
    return res(f"{folder}/seed{seed}-shots{shots}.safetensors")


def all_tokens():
    """Every tokens file a method's prompt needs (erased and plain ones differ)."""
    return sorted(
        {
            tokens_path(d, m, s, k)
            for d in DATASETS
            for m, method in METHODS.items()
            if method.runs_on(d) and method.for_dataset(d).uses_tokens
            for s in config["seeds"]
            for k in config["examples_per_class"]
        }
    )


def all_synthetic():
    return grid(
        "{dataset}/synthetic/{method}/seed{seed}-shots{shots}/index.parquet",
        synthetic_methods(),
    )


def evaluated_runs(wildcards):
    """Every classifier run, for the aggregate (and so the `all` target). A config made for
    augmenting data (config/augment.yaml) holds out no evaluation images or takes every
    image as a source: stop before any job instead of failing in the first train job."""
    if "all" in config["examples_per_class"]:
        raise WorkflowError(
            "config key 'examples_per_class': 'all' makes synthetic data from every image, "
            "and the all target trains classifiers on few-shot subsets only. Run the "
            "synthetic or tokens target (`snakemake --cores all synthetic --configfile ...`), "
            "or list numbers of examples per class"
        )
    for name, spec in DATASETS.items():
        if spec.val_fraction == 0:
            raise WorkflowError(
                f"config key 'datasets.{name}.val_fraction': 0 holds out no evaluation "
                "images, so the all target, which evaluates classifiers, cannot run. Run the "
                "synthetic or tokens target, or set val_fraction above 0"
            )
    return grid(
        "{dataset}/runs/{method}/seed{seed}-shots{shots}.parquet", list(METHODS)
    )


def erasure_check(dataset):
    """An eraser's check table; it also lists the delta files beside it."""
    return res(f"{dataset}/erasure/{ERASURE.eraser}/check.parquet")


def erased_datasets():
    """The datasets an erased method runs on; every dataset when no method is erased (the
    stage is on for the erasure target alone); none when the stage is off."""
    if not ERASURE.enabled:
        return []
    erased = [m for m in METHODS.values() if m.erased]
    return [d for d in DATASETS if not erased or any(m.runs_on(d) for m in erased)]


def all_erasure():
    """The erasure of every dataset that needs one."""
    return [erasure_check(d) for d in erased_datasets()]


def method_erasure(wildcards):
    """The erasure an erased method's jobs use; none for the others."""
    return erasure_check(wildcards.dataset) if METHODS[wildcards.method].erased else []


def generate_tokens(wildcards):
    """The class tokens, for methods whose prompt uses them."""
    if METHODS[wildcards.method].for_dataset(wildcards.dataset).uses_tokens:
        w = wildcards
        return tokens_path(w.dataset, w.method, w.seed, w.shots)
    return []


def train_synthetic(wildcards):
    """The synthetic set a run mixes in; a baseline run uses none."""
    if not METHODS[wildcards.method].synthetic:
        return []
    return res(
        f"{wildcards.dataset}/synthetic/{wildcards.method}/"
        f"seed{wildcards.seed}-shots{wildcards.shots}/index.parquet"
    )


def index_params(wildcards):
    """What index_dataset's outputs depend on: the entry's keys its kind reads, without
    allow_fewer (only few_shot_split reads it, so changing it does not reread the dataset).
    """
    spec = DATASETS[wildcards.dataset]
    keys = index_keys(spec)
    return {k: v for k, v in spec.result_params().items() if k in keys}


def dataset_listing(name):
    """A small file holding the digest of a dataset root's file listing (names, sizes,
    modification times), rewritten when the workflow starts only if the listing changed:
    as an input of index_dataset it reruns it when a file is added, removed or rewritten.
    With `track_files: false` it is left as it is (nothing is listed, nothing reruns).
    """
    spec = DATASETS[name]
    if not spec.root:
        return []
    path = Path(res(f"{name}/splits/.files.sha256"))
    if workflow.is_main_process:
        recorded = path.read_text() if path.exists() else None
        current = recorded
        if spec.track_files or recorded is None:
            root = Path(spec.root).expanduser()
            current = listing_digest(root) if spec.track_files else "untracked"
        if current != recorded:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(current)
    return str(path)


LISTINGS = {name: dataset_listing(name) for name in DATASETS}


def index_mem_mb(wildcards):
    """COCO's annotation files and ImageNet's file lists need more memory than the rest."""
    return 16000 if DATASETS[wildcards.dataset].kind in ("coco", "imagenet") else 4000


def per_seed_split(wildcards):
    """Whether the dataset is halved per seed (split_protocol: original-code)."""
    return DATASETS[wildcards.dataset].split_protocol == "original-code"


def training_pool(wildcards):
    """The manifest few-shot subsets are drawn from: the pool, or this seed's half of it."""
    if per_seed_split(wildcards):
        return res(f"{wildcards.dataset}/splits/seed{wildcards.seed}-pool.parquet")
    return res(f"{wildcards.dataset}/splits/pool.parquet")


def eval_split(wildcards):
    """The evaluation manifest of a run: the dataset's, or this seed's other half."""
    if per_seed_split(wildcards):
        return res(f"{wildcards.dataset}/splits/seed{wildcards.seed}-val.parquet")
    return res(f"{wildcards.dataset}/splits/val.parquet")


# The report: which figures this config can draw. Figure labels come from the methods'
# `figures:`; 11 is drawn as the alpha x M grid, paired with the "11-reference" methods (or
# the baseline), and every other label as accuracy against examples per class.
GRID_LABELS = ("11", "11-reference")


def figure_labels():
    labels = []
    for method in METHODS.values():
        for label in map(str, method.figures):
            if label not in labels:
                labels.append(label)
    return labels


def has_baseline():
    return AGGREGATE.baseline in METHODS


def aggregate_figures():
    """Names of the figures the aggregate job draws (each as .png and .pdf)."""
    labels = figure_labels()
    names = ["accuracy", "scores"]
    names += [f"figure-{label}" for label in labels if label not in GRID_LABELS]
    binned = {d for bin_ in AGGREGATE.novelty.values() for d in bin_}
    if binned & set(DATASETS):
        names.append("novelty")
    if has_baseline() and len(METHODS) > 1:
        names.append("paired")
    if "11" in labels and ("11-reference" in labels or has_baseline()):
        names.append("figure-11")
    return names


def method_layout():
    """Per (dataset, method) the resolved settings the figures group runs by."""
    rows = []
    for d in DATASETS:
        for m, method in METHODS.items():
            if not method.runs_on(d):
                continue
            w = SimpleNamespace(dataset=d, method=m)
            classifier = classifier_for(w)
            rows.append(
                {
                    "dataset": d,
                    "method": m,
                    "figures": [str(label) for label in method.figures],
                    "strengths": list(method.strengths) if method.synthetic else [],
                    "num_synthetic": (
                        generation_for(w).num_synthetic if method.synthetic else 0
                    ),
                    "synthetic_probability": classifier.synthetic_probability,
                }
            )
    return rows


def gallery_split(dataset):
    """The split a dataset's gallery shows: the first seed, the most examples per class."""
    shots = max(k for k in config["examples_per_class"] if k != "all")
    return config["seeds"][0], shots


def gallery_methods(dataset):
    return [m for m in synthetic_methods() if METHODS[m].runs_on(dataset)]


def gallery_datasets():
    return [d for d in DATASETS if gallery_methods(d)]


def gallery_inputs(wildcards):
    seed, shots = gallery_split(wildcards.dataset)
    return {
        "split": res(f"{wildcards.dataset}/splits/seed{seed}-shots{shots}.parquet"),
        "indices": [
            res(
                f"{wildcards.dataset}/synthetic/{m}/seed{seed}-shots{shots}/index.parquet"
            )
            for m in gallery_methods(wildcards.dataset)
        ],
    }


def loss_curves(dataset):
    """The first seed's inversion loss tables of a dataset (plain and erased tokens)."""
    seed = config["seeds"][0]
    return sorted(
        {
            tokens_path(dataset, m, seed, k).replace(".safetensors", "-loss.parquet")
            for m, method in METHODS.items()
            if method.runs_on(dataset) and method.for_dataset(dataset).uses_tokens
            for k in config["examples_per_class"]
        }
    )


def report_inputs(wildcards):
    """What the report shows: the aggregate's tables and figures, the galleries, the
    inversion loss curves and the erasure checks."""
    tables = ("summary", "scores", "novelty", "paired", "areas")
    return {
        **{name: res(f"tables/{name}.csv") for name in tables},
        "figures": [res(f"figures/{name}.png") for name in aggregate_figures()],
        "galleries": [res(f"figures/gallery-{d}.png") for d in gallery_datasets()],
        "curves": [
            res(f"figures/inversion-loss-{d}.png") for d in DATASETS if loss_curves(d)
        ],
        "erasure": all_erasure(),
    }


CAPTIONS = {
    path.stem: path.read_text().strip()
    for path in sorted(Path(workflow.basedir, "workflow/report").glob("*.rst"))
}
# What the aggregate reports, in words: the aggregate rule's params.measure, which its
# figures' captions show.
MEASURE = AGGREGATE.measure()


def caption_key(name):
    """The caption of a figure name (figure-5 and the like are accuracy figures)."""
    key = {"figure-11": "grid"}.get(name, name)
    return key if key in CAPTIONS else "accuracy"


def caption(name):
    return f"../report/{caption_key(name)}.rst"


def render_caption(text):
    """A caption as Snakemake's report renders it (Jinja2, the aggregate job's params): the
    same text in results/report.html as in `snakemake --report`."""
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    params = SimpleNamespace(measure=MEASURE)
    return env.from_string(text).render(snakemake=SimpleNamespace(params=params))


def report_captions():
    """Caption texts by figure name, and by name for the report's other items."""
    captions = {key: render_caption(text) for key, text in CAPTIONS.items()}
    return {
        name: captions[caption_key(name)] for name in aggregate_figures()
    } | captions


def aggregate_params(*keys):
    """The aggregate settings a rule's outputs depend on (and no others)."""
    params = AGGREGATE.result_params()
    return {k: params[k] for k in keys}
