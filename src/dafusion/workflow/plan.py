"""The workflow's plan for one config: which jobs exist, what each reads, and what the report
shows.

`Plan.from_config` takes the validated config; the Snakefile builds one and its rules call it
(workflow/rules/common.smk holds only the glue: wildcard constraints and functions of a job's
wildcards). Everything here is a function of the typed settings (`dafusion.settings`) and,
where noted, of which result files exist: target lists over datasets x methods x seeds x
shots, a job's input paths and result params, its resources (`dafusion.workflow.runtime` for wall
times), the aggregate's figures and the report's contents and captions. The synthetic sets
are `Plan.sets` (`dafusion.workflow.sets`). Paths come from `dafusion.workflow.paths`, the
patterns the rules' outputs use.

No workflow step imports this module, so editing it changes no job's code fingerprint
(`dafusion.provenance`): it reruns only the jobs whose params or inputs it changes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..data.readers import index_keys
from ..jobs.devices import will_use_cuda
from ..provenance import digest
from ..settings import (
    AggregateSettings,
    ClassifierSettings,
    DatasetSettings,
    ErasureSettings,
    GenerationSettings,
    InversionSettings,
    MethodSettings,
    ModelSettings,
)
from . import paths, runtime
from .sets import SET_NAME_DIGITS, PlanError, SyntheticSets

# Figure labels drawn as the alpha x M grid (Figure 11) rather than as accuracy against
# examples per class: "11" and the methods it is paired with.
GRID_LABELS = ("11", "11-reference")
# The aggregate's tables (each a csv under tables/).
TABLES = ("summary", "scores", "novelty", "paired", "areas", "per_class", "runs", "validation")


@dataclasses.dataclass(frozen=True)
class Plan:
    """The typed settings of every section, plus the raw `generation:` and `classifier:`
    sections (a job's settings resolve them with its dataset's and method's overrides)."""

    results: str
    model: ModelSettings
    datasets: Mapping[str, DatasetSettings]
    inversion: InversionSettings
    methods: Mapping[str, MethodSettings]
    erasure: ErasureSettings
    classifier: ClassifierSettings
    aggregate: AggregateSettings
    generation_section: Mapping[str, Any]
    classifier_section: Mapping[str, Any]
    seeds: Sequence[int]
    shots: Sequence[int | str]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Plan:
        """The plan of a validated config (`dafusion.workflow.config.validate_config`)."""
        return cls(
            results=config["results"],
            model=ModelSettings.from_config(config["model"]),
            datasets={
                name: DatasetSettings.from_config(s) for name, s in config["datasets"].items()
            },
            inversion=InversionSettings.from_config(config["inversion"]),
            methods={name: MethodSettings.from_config(s) for name, s in config["methods"].items()},
            erasure=ErasureSettings.from_config(config["erasure"]),
            classifier=ClassifierSettings.from_config(config["classifier"]),
            aggregate=AggregateSettings.from_config(config["aggregate"]),
            generation_section=config["generation"],
            classifier_section=config["classifier"],
            seeds=list(config["seeds"]),
            shots=list(config["examples_per_class"]),
        )

    @functools.cached_property
    def sets(self) -> SyntheticSets:
        """The synthetic sets (`dafusion.workflow.sets`), built once so that each dataset's
        are worked out once."""
        return SyntheticSets(self)

    # Paths ---------------------------------------------------------------------------

    def res(self, path: str) -> str:
        """A path under the results root."""
        return f"{self.results}/{path}"

    def path(self, pattern: str, **wildcards: Any) -> str:
        """A `dafusion.workflow.paths` pattern filled in, under the results root."""
        return self.res(pattern.format(**wildcards))

    # One job's settings --------------------------------------------------------------

    def generation_for(self, dataset: str, method: str) -> GenerationSettings:
        """A generate job's settings: the section, the dataset's and the method's overrides."""
        return GenerationSettings.resolve(
            self.generation_section,
            self.datasets[dataset].generation,
            self.methods[method].generation,
        )

    def classifier_for(self, dataset: str, method: str) -> ClassifierSettings:
        """A train job's settings: the section, the dataset's and the method's overrides (and
        a baseline's alpha of 0)."""
        spec = self.methods[method]
        settings = ClassifierSettings.resolve(
            self.classifier_section, self.datasets[dataset].classifier, spec.classifier
        )
        return settings.for_method(spec)

    def method_params(self, dataset: str, method: str) -> dict[str, Any]:
        """A generate job's method params: the method as its dataset runs it (its prompt)."""
        return self.methods[method].for_dataset(dataset).result_params()

    def uses_tokens(self, dataset: str, method: str) -> bool:
        """Whether the method's prompt on this dataset needs the learned class tokens."""
        return self.methods[method].for_dataset(dataset).uses_tokens

    def index_params(self, dataset: str) -> dict[str, Any]:
        """What index_dataset's outputs depend on: the entry's keys its kind reads, without
        allow_fewer (only few_shot_split reads it, so changing it does not reread the
        dataset)."""
        spec = self.datasets[dataset]
        keys = index_keys(spec)
        return {k: v for k, v in spec.result_params().items() if k in keys}

    def dataset_check(self, dataset: str) -> str:
        """The check_dataset output index_dataset waits for: named by a digest of the
        dataset's index params, so a refused value never replaces the check of the values
        that made the finished outputs (`pipeline.check_dataset`)."""
        params = json.dumps(self.index_params(dataset), sort_keys=True)
        check = digest(params.encode())[:SET_NAME_DIGITS]
        return self.path(paths.DATASET_CHECK, dataset=dataset, check=check)

    def trained_model_params(self) -> dict[str, Any]:
        """The model settings an erasure or an inversion depends on: each trains in its own
        precision (erasure.precision, inversion.mixed_precision), whatever model.dtype."""
        return {k: v for k, v in self.model.result_params().items() if k != "dtype"}

    def aggregate_params(self, *keys: str) -> dict[str, Any]:
        """The aggregate settings a rule's outputs depend on (and no others)."""
        params = self.aggregate.result_params()
        return {k: params[k] for k in keys}

    # Targets -------------------------------------------------------------------------

    def grid(self, pattern: str, methods: Sequence[str]) -> list[str]:
        """A result pattern over datasets, methods (those that run on the dataset), seeds and
        shots."""
        return [
            self.path(pattern, dataset=d, method=m, seed=s, shots=k)
            for d in self.datasets
            for m in methods
            if self.methods[m].runs_on(d)
            for s in self.seeds
            for k in self.shots
        ]

    def synthetic_methods(self) -> list[str]:
        return [name for name, method in self.methods.items() if method.synthetic]

    def tokens_path(self, dataset: str, method: str, seed: int | str, shots: int | str) -> str:
        """A method's class tokens: learned against the erased UNet for an erased method."""
        pattern = paths.ERASED_TOKENS if self.methods[method].erased else paths.TOKENS
        eraser = self.erasure.eraser
        return self.path(pattern, dataset=dataset, eraser=eraser, seed=seed, shots=shots)

    def token_methods(self, dataset: str) -> list[str]:
        """The methods that run on a dataset with a prompt that needs the class tokens."""
        return [
            m
            for m, method in self.methods.items()
            if method.runs_on(dataset) and self.uses_tokens(dataset, m)
        ]

    def all_tokens(self) -> list[str]:
        """Every tokens file a method's prompt needs (erased and plain ones differ)."""
        return sorted(
            {
                self.tokens_path(d, m, s, k)
                for d in self.datasets
                for m in self.token_methods(d)
                for s in self.seeds
                for k in self.shots
            }
        )

    def all_synthetic(self) -> list[str]:
        """Every synthetic set, once however many methods share it."""
        return [
            self.sets.index(d, name, s, k)
            for d in self.datasets
            for name in self.sets.by_name(d)
            for s in self.seeds
            for k in self.shots
        ]

    def evaluated_runs(self) -> list[str]:
        """Every classifier run, for the aggregate (and so the `all` target). A config made for
        augmenting data (config/augment.yaml) holds out no evaluation images or takes every
        image as a source: a PlanError, to stop before any job instead of failing in the first
        train job."""
        if "all" in self.shots:
            raise PlanError(
                "config key 'examples_per_class': 'all' makes synthetic data from every image, "
                "and the all target trains classifiers on few-shot subsets only. Run the "
                "synthetic or tokens target (`snakemake --cores all synthetic --configfile "
                "...`), or list numbers of examples per class"
            )
        for name, spec in self.datasets.items():
            if spec.val_fraction == 0:
                raise PlanError(
                    f"config key 'datasets.{name}.val_fraction': 0 holds out no evaluation "
                    "images, so the all target, which evaluates classifiers, cannot run. Run the "
                    "synthetic or tokens target, or set val_fraction above 0"
                )
        return self.grid(paths.RUN, list(self.methods))

    def erasure_table(self, dataset: str) -> str:
        """An eraser's check table; it also lists the delta files beside it."""
        return self.path(paths.ERASURE, dataset=dataset, eraser=self.erasure.eraser)

    def erased_datasets(self) -> list[str]:
        """The datasets an erased method runs on; every dataset when no method is erased (the
        stage is on for the erasure target alone); none when the stage is off."""
        if not self.erasure.enabled:
            return []
        erased = [m for m in self.methods.values() if m.erased]
        return [d for d in self.datasets if not erased or any(m.runs_on(d) for m in erased)]

    def all_erasure(self) -> list[str]:
        """The erasure of every dataset that needs one."""
        return [self.erasure_table(d) for d in self.erased_datasets()]

    # One job's inputs ----------------------------------------------------------------

    def model_input(self) -> str | list[str]:
        """An embedded model's folder under the results (the built tiny model, or the shipped
        miniature's copy: a new release of it reruns the jobs that load it), or nothing for a
        hub id / directory."""
        if self.model.pretrained == "tiny-digits":
            return self.path(paths.SHIPPED, asset="tiny-digits")
        if self.model.pretrained != "tiny":
            return []
        return self.path(paths.TINY_MODEL, resolution=self.model.resolution)

    def split_path(self, dataset: str, seed: int | str, shots: int | str) -> str:
        return self.path(paths.SPLIT, dataset=dataset, seed=seed, shots=shots)

    def per_seed_split(self, dataset: str) -> bool:
        """Whether the dataset is halved per seed (split_protocol: original-code)."""
        return self.datasets[dataset].split_protocol == "original-code"

    def training_pool(self, dataset: str, seed: int | str) -> str:
        """The manifest few-shot subsets are drawn from: the pool, or this seed's half."""
        if self.per_seed_split(dataset):
            return self.path(paths.SEED_POOL, dataset=dataset, seed=seed)
        return self.path(paths.POOL, dataset=dataset)

    def eval_split(self, dataset: str, seed: int | str) -> str:
        """The evaluation manifest of a run: the dataset's, or this seed's other half."""
        if self.per_seed_split(dataset):
            return self.path(paths.SEED_VAL, dataset=dataset, seed=seed)
        return self.path(paths.VAL, dataset=dataset)

    def method_erasure(self, dataset: str, method: str) -> str | list[str]:
        """The erasure an erased method's jobs use; none for the others."""
        return self.erasure_table(dataset) if self.methods[method].erased else []

    def generate_tokens(
        self, dataset: str, set: str, seed: int | str, shots: int | str
    ) -> str | list[str]:
        """A set's class tokens, for sets whose prompt uses them."""
        method = self.sets.methods(dataset, set)[0]
        if self.uses_tokens(dataset, method):
            return self.tokens_path(dataset, method, seed, shots)
        return []

    def set_erasure(self, dataset: str, set: str) -> str | list[str]:
        """The erasure an erased set's jobs use; none for the others."""
        return self.method_erasure(dataset, self.sets.methods(dataset, set)[0])

    def train_synthetic(
        self, dataset: str, method: str, seed: int | str, shots: int | str
    ) -> str | list[str]:
        """The synthetic set a run mixes in; a baseline run uses none."""
        if not self.methods[method].synthetic:
            return []
        return self.sets.method_index(dataset, method, seed, shots)

    def generate_parts(
        self, dataset: str, set: str, seed: int | str, shots: int | str
    ) -> list[str]:
        """The part files (`generate` jobs) a set's `gather_synthetic` job gathers.

        `generation.parts` is an execution knob, so changing it reruns nothing: a set whose
        index exists lists the parts that made it (the index records how many, and
        Snakemake compares a job's inputs with those it recorded); the files are temporary,
        so their absence reruns nothing either. A new set is made in the configured number
        of parts, clamped to its number of shards once its split exists.
        """
        from ..stages.synthetic import num_shards, recorded_parts

        wildcards = {"dataset": dataset, "set": set, "seed": seed, "shots": shots}
        index = Path(self.path(paths.SYNTHETIC, **wildcards))
        parts = recorded_parts(index) if index.exists() else None
        if parts is None:
            parts = self.generation_section["parts"]
            split = Path(self.split_path(dataset, seed, shots))
            if split.exists():
                generation = self.sets.generation(dataset, set)
                images = runtime.rows(split) * generation.num_synthetic
                parts = max(1, min(parts, num_shards(images, generation.shard_size)))
        return [self.path(paths.PART, **wildcards, part=p, parts=parts) for p in range(parts)]

    # One job's resources -------------------------------------------------------------

    def gpus(self, device: str) -> int:
        """1 for a job that will compute on CUDA (GPU jobs then queue for --resources gpu=N,
        and each claims a GPU of its own when it starts)."""
        return int(will_use_cuda(device))

    def model_threads(self) -> int:
        """Threads of a job that runs the diffusion model: the tiny model's operations are too
        small to share across threads, and most of its jobs' time is single-threaded start-up
        (imports, loading), so one thread each lets two of them run at once on two cores."""
        return 1 if self.model.embedded else 2

    def model_mem_mb(self, full_size: int) -> int:
        """Memory of a job that loads the diffusion model: the tiny model's jobs peak at 1.2
        GB (the embedded default's benchmark files), a full-size model's at `full_size`."""
        return 2000 if self.model.embedded else full_size

    def index_mem_mb(self, dataset: str) -> int:
        """COCO's annotation files and ImageNet's file lists need more memory than the rest."""
        return 16000 if self.datasets[dataset].kind in ("coco", "imagenet") else 4000

    def gpu_jobs(self) -> list[str]:
        """The sections whose jobs will compute on CUDA, as `section.device (value)`."""
        return [
            f"{section}.device ({settings.device})"
            for section, settings in (("model", self.model), ("classifier", self.classifier))
            if will_use_cuda(settings.device)
        ]

    def gpu_limit_error(self, local: bool, resources: Mapping[str, Any]) -> str | None:
        """Why the run must stop before any job, or None. GPU jobs queue for the `gpu`
        resource (the profile's gpu=1) and each claims a GPU of its own
        (dafusion.jobs.devices.claim_device), waiting while every GPU is taken. Any --resources on
        the command line replaces the profile's list, and without a gpu limit every GPU job
        would start at once, holding cores and memory while it waits for a GPU. A cluster
        (`local` false) gives each job its own GPU."""
        if not local or "gpu" in resources:
            return None
        keys = self.gpu_jobs()
        if not keys:
            return None
        return (
            f"GPU jobs ({', '.join(keys)}) would all start at once: --resources replaced "
            "the profile's gpu=1. Add gpu=1 to --resources (one GPU job at a time), or "
            "gpu=N on a machine with N GPUs (each GPU job claims one of its own)"
        )

    def results_write_error(self) -> str | None:
        """Why jobs could not write the results folder, or None: Snakemake deletes a job's
        old outputs and logs and writes the new ones in folders under it, so each must be
        writable (before the folder exists, the one it will be made in), or the first job
        fails with a traceback. A dry run writes nothing and is not checked."""
        root = Path(self.results)
        folders = [root]
        while not folders[0].exists():
            folders = [folders[0].parent]
        if folders[0] == root:
            folders += [Path(top) / name for top, names, _ in os.walk(root) for name in names]
        blocked = [folder for folder in folders if not os.access(folder, os.W_OK | os.X_OK)]
        if not blocked:
            return None
        which = f"'{blocked[0]}' is"
        if len(blocked) > 1:
            which = f"'{blocked[0]}' and {len(blocked) - 1} other folder(s) in it are"
        return (
            f"config key 'results': jobs cannot write to the results folder '{root}': {which} "
            f"not writable by this user. Make it writable (chmod -R u+w {root}), or set results "
            "to a folder you can write"
        )

    # Wall times (dafusion.workflow.runtime), from the job's input manifests.

    def generate_minutes(
        self, dataset: str, set: str, split: str, attempt: int, *, parts: int | str
    ) -> int:
        """A generate job: its share of a set's images (`parts`, also as the wildcard's
        text), each at its largest t0's steps."""
        generation = self.sets.generation(dataset, set)
        strengths = self.methods[self.sets.methods(dataset, set)[0]].strengths
        steps = runtime.most_steps(generation.num_inference_steps, strengths)
        seconds = runtime.generate_seconds(generation, runtime.rows(split), steps) / int(parts)
        return runtime.minutes(seconds, attempt)

    def gather_minutes(self, attempt: int) -> int:
        """A gather_synthetic job: it reads the parts' rows and writes the index."""
        return runtime.minutes(0, attempt)

    def invert_minutes(self, split: str, attempt: int) -> int:
        seconds = runtime.invert_seconds(self.inversion, runtime.class_count(split))
        return runtime.minutes(seconds, attempt)

    def erase_minutes(self, pool: str, attempt: int) -> int:
        # UCE needs no class count (and so no pool) for its estimate.
        classes = runtime.class_count(pool) if self.erasure.method == "esd" else 0
        return runtime.minutes(runtime.erase_seconds(self.erasure, classes), attempt)

    def train_minutes(self, dataset: str, method: str, val: str, test: str, attempt: int) -> int:
        images = runtime.rows(val) + runtime.rows(test)
        seconds = runtime.train_seconds(self.classifier_for(dataset, method), images)
        return runtime.minutes(seconds, attempt)

    # The aggregate and the report ----------------------------------------------------

    def figure_labels(self) -> list[str]:
        """The methods' figure labels (`figures:`), in order of first appearance."""
        labels: list[str] = []
        for method in self.methods.values():
            for label in map(str, method.figures):
                if label not in labels:
                    labels.append(label)
        return labels

    def has_baseline(self) -> bool:
        return self.aggregate.baseline in self.methods

    def aggregate_figures(self) -> list[str]:
        """Names of the figures the aggregate job draws (each as .png and .pdf): every label
        but the grid's as accuracy against examples per class; "11" as the alpha x M grid,
        paired with the "11-reference" methods (or the baseline)."""
        labels = self.figure_labels()
        names = ["accuracy", "per-class", "validation", "scores"]
        names += [f"figure-{label}" for label in labels if label not in GRID_LABELS]
        binned = {d for bin_ in self.aggregate.novelty.values() for d in bin_}
        if binned & set(self.datasets):
            names.append("novelty")
        if self.has_baseline() and len(self.methods) > 1:
            names.append("paired")
        if "11" in labels and ("11-reference" in labels or self.has_baseline()):
            names.append("figure-11")
        return names

    def method_layout(self) -> list[dict[str, Any]]:
        """Per (dataset, method) the resolved settings the figures group runs by."""
        rows = []
        for d in self.datasets:
            for m, method in self.methods.items():
                if not method.runs_on(d):
                    continue
                classifier = self.classifier_for(d, m)
                rows.append(
                    {
                        "dataset": d,
                        "method": m,
                        "figures": [str(label) for label in method.figures],
                        "strengths": list(method.strengths) if method.synthetic else [],
                        "num_synthetic": (
                            self.generation_for(d, m).num_synthetic if method.synthetic else 0
                        ),
                        "synthetic_probability": classifier.synthetic_probability,
                    }
                )
        return rows

    def gallery_split(self) -> tuple[int, int]:
        """The split a dataset's gallery shows: the first seed, the most examples per
        class."""
        return self.seeds[0], max(k for k in self.shots if k != "all")

    def gallery_methods(self, dataset: str) -> list[str]:
        return [m for m in self.synthetic_methods() if self.methods[m].runs_on(dataset)]

    def gallery_datasets(self) -> list[str]:
        return [d for d in self.datasets if self.gallery_methods(d)]

    def gallery_inputs(self, dataset: str) -> dict[str, Any]:
        seed, shots = self.gallery_split()
        return {
            "split": self.split_path(dataset, seed, shots),
            "indices": [
                self.sets.method_index(dataset, m, seed, shots)
                for m in self.gallery_methods(dataset)
            ],
        }

    def recognition_datasets(self) -> list[str]:
        """Datasets of digits with synthetic images: the reference classifier scores them."""
        return [d for d in self.gallery_datasets() if self.datasets[d].kind == "digits"]

    def synthetic_sizes(self, dataset: str) -> dict[str, int]:
        """Each synthetic method of a dataset and the M its runs read (its set may hold more)."""
        return {
            m: self.generation_for(dataset, m).num_synthetic for m in self.gallery_methods(dataset)
        }

    def recognition_inputs(self, dataset: str) -> dict[str, Any]:
        """Every split of the dataset, and each method's set per split in the same order."""
        cells = [(seed, shots) for seed in self.seeds for shots in self.shots]
        return {
            "splits": [self.split_path(dataset, seed, shots) for seed, shots in cells],
            "indices": [
                self.sets.method_index(dataset, m, seed, shots)
                for m in self.synthetic_sizes(dataset)
                for seed, shots in cells
            ],
        }

    def loss_curves(self, dataset: str) -> list[str]:
        """The first seed's inversion loss tables of a dataset (plain and erased tokens)."""
        seed = self.seeds[0]
        return sorted(
            {
                paths.tokens_losses(self.tokens_path(dataset, m, seed, k))
                for m in self.token_methods(dataset)
                for k in self.shots
            }
        )

    def report_inputs(self) -> dict[str, Any]:
        """What the report shows: the aggregate's tables and figures, the galleries, the
        inversion loss curves and the erasure check heatmaps."""
        return {
            **{name: self.path(paths.TABLE, name=name) for name in TABLES},
            "figures": [self.path(paths.FIGURE, name=name) for name in self.aggregate_figures()],
            "galleries": [self.path(paths.GALLERY, dataset=d) for d in self.gallery_datasets()],
            "recognition": [
                self.path(paths.RECOGNITION_FIGURE, dataset=d) for d in self.recognition_datasets()
            ],
            "curves": [
                self.path(paths.INVERSION_CURVES, dataset=d)
                for d in self.datasets
                if self.loss_curves(d)
            ],
            "erasure": [self.path(paths.ERASURE_FIGURE, dataset=d) for d in self.erased_datasets()],
        }

    def report_captions(self, captions: Mapping[str, str]) -> dict[str, str]:
        """Caption texts by figure name, and by name for the report's other items, rendered
        as Snakemake's report renders them (`render_caption`)."""
        rendered = {
            key: render_caption(text, self.aggregate.measure()) for key, text in captions.items()
        }
        return {
            name: rendered[caption_key(name, captions)] for name in self.aggregate_figures()
        } | rendered


def read_captions(folder: str | Path) -> dict[str, str]:
    """The caption texts (workflow/report/*.rst) by name."""
    return {path.stem: path.read_text().strip() for path in sorted(Path(folder).glob("*.rst"))}


def caption_key(name: str, captions: Mapping[str, str]) -> str:
    """The caption of a figure name (figure-5 and the like are accuracy figures)."""
    key = {"figure-11": "grid"}.get(name, name)
    return key if key in captions else "accuracy"


def render_caption(text: str, measure: str) -> str:
    """A caption as Snakemake's report renders it (Jinja2, with the aggregate job's
    params.measure): the same text in results/report.html as in `snakemake --report`."""
    import jinja2

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    params = SimpleNamespace(measure=measure)
    return env.from_string(text).render(snakemake=SimpleNamespace(params=params))
