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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..data.readers import index_keys
from ..provenance import digest
from ..settings import (
    BUILT_MODELS,
    EMBEDDED_FAMILIES,
    SCORER_NAMES,
    AggregateSettings,
    ClassifierSettings,
    DatasetSettings,
    ErasureSettings,
    FilterSettings,
    GenerationSettings,
    InversionSettings,
    LoraSettings,
    MethodSettings,
    ModelSettings,
    ScoringSettings,
)
from . import paths, runtime
from .contents import ReportContents
from .resources import Resources
from .sets import SET_NAME_DIGITS, PlanError, SyntheticSets


@dataclasses.dataclass(frozen=True)
class Plan:
    """The typed settings of every section, plus the raw `generation:` and `classifier:`
    sections (a job's settings resolve them with its dataset's and method's overrides)."""

    results: str
    model: ModelSettings
    datasets: Mapping[str, DatasetSettings]
    inversion: InversionSettings
    lora: LoraSettings
    methods: Mapping[str, MethodSettings]
    erasure: ErasureSettings
    classifier: ClassifierSettings
    scoring: ScoringSettings
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
            lora=LoraSettings.from_config(config["lora"]),
            methods={name: MethodSettings.from_config(s) for name, s in config["methods"].items()},
            erasure=ErasureSettings.from_config(config["erasure"]),
            classifier=ClassifierSettings.from_config(config["classifier"]),
            scoring=ScoringSettings.from_config(config["scoring"]),
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

    @functools.cached_property
    def family(self) -> str:
        """The model's family (`dafusion.stages.families`), for the cost model: read from its
        files where they are on this machine, else told by its name (SDXL's hub ids say
        "xl"), as an estimate on a machine without the model is."""
        import re

        from ..stages.families import model_family

        pretrained = self.model.pretrained
        if pretrained in EMBEDDED_FAMILIES:
            return EMBEDDED_FAMILIES[pretrained]
        folder = Path(pretrained).expanduser()
        if not folder.is_dir() and pretrained.count("/") == 1:
            from huggingface_hub import try_to_load_from_cache

            try:
                cached = try_to_load_from_cache(pretrained, "model_index.json")
            except ValueError:  # not a valid repo id
                cached = None
            folder = Path(cached).parent if isinstance(cached, str) else folder
        if (folder / "model_index.json").is_file():
            try:
                return model_family(folder).name
            except ValueError:
                pass  # refused at start-up, with the reason
        return (
            "sdxl" if re.search(r"(xl\b|sdxl)", pretrained, re.IGNORECASE) else "stable-diffusion"
        )

    @functools.cached_property
    def resources(self) -> Resources:
        """Each job's threads, memory, GPUs and wall time (`dafusion.workflow.resources`)."""
        return Resources(self)

    @functools.cached_property
    def report(self) -> ReportContents:
        """What the aggregate draws and the report shows (`dafusion.workflow.contents`)."""
        return ReportContents(self)

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

    def uses_lora(self, dataset: str, method: str) -> bool:
        """Whether the method's tokens on this dataset come with a LoRA (`learner: lora`)."""
        return self.methods[method].for_dataset(dataset).uses_lora

    def lora_params(self) -> dict[str, Any]:
        """What a lora job's outputs depend on besides the model: the LoRA's settings and
        the inversion settings its token rows follow (all but inversion.steps: the job
        runs lora.steps)."""
        inversion = {k: v for k, v in self.inversion.result_params().items() if k != "steps"}
        return {"inversion": inversion, "lora": self.lora.result_params()}

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

    def erasure_model_params(self) -> dict[str, Any]:
        """The model settings an erasure depends on: an inversion's but model.vae (ESD and
        UCE read no image: the erase job loads the checkpoint's own VAE and never runs it)."""
        return {k: v for k, v in self.trained_model_params().items() if k != "vae"}

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
        """A method's class tokens: learned against the erased UNet for an erased method,
        with a LoRA (the lora job's) where its learner is lora."""
        pattern = paths.ERASED_TOKENS if self.methods[method].erased else paths.TOKENS
        if self.uses_lora(dataset, method):
            pattern = paths.LORA_TOKENS
        eraser = self.erasure.eraser
        return self.path(pattern, dataset=dataset, eraser=eraser, seed=seed, shots=shots)

    def token_job(self, dataset: str, method: str) -> str:
        """The rule that learns a method's class tokens on a dataset: `invert`,
        `invert_erased` (an erased method) or `lora` (learner: lora)."""
        if self.uses_lora(dataset, method):
            return "lora"
        return "invert_erased" if self.methods[method].erased else "invert"

    def token_steps(self, job: str) -> int:
        """The optimization steps of a `token_job`'s jobs."""
        return self.lora.steps if job == "lora" else self.inversion.steps

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
        if self.model.pretrained not in BUILT_MODELS:
            return []
        return self.path(
            paths.TINY_MODEL, name=self.model.pretrained, resolution=self.model.resolution
        )

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

    def generate_lora(
        self, dataset: str, set: str, seed: int | str, shots: int | str
    ) -> str | list[str]:
        """A set's LoRA adapter (the folder of the lora job), for sets of a lora learner."""
        method = self.sets.methods(dataset, set)[0]
        if self.uses_lora(dataset, method):
            return self.path(paths.LORA, dataset=dataset, seed=seed, shots=shots)
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

    # Scores and filters (docs/filtering.md) ------------------------------------------

    def filter_of(self, method: str) -> FilterSettings | None:
        """A method's filter, or None (its runs draw every image of its set)."""
        return self.methods[method].filter_settings

    def filtered_methods(self, dataset: str) -> list[str]:
        """The methods that run on a dataset with a filter (config order)."""
        return [
            m
            for m, spec in self.methods.items()
            if spec.runs_on(dataset) and spec.synthetic and spec.filter is not None
        ]

    def scorers(self, dataset: str) -> list[str]:
        """The scorers a dataset's filters read (`SCORER_NAMES`' order). Each scores every
        synthetic set of the dataset (one light job per set, seed and shots), so that the
        report shows what each filter keeps of every method's images; none without a
        filter. Thresholds are no part of a scoring job: changing one rescores nothing."""
        used = set()
        for method in self.filtered_methods(dataset):
            spec = self.filter_of(method)
            assert spec is not None  # a filtered method's
            used.add(spec.by)
        return [name for name in SCORER_NAMES if name in used]

    def scores_path(
        self, dataset: str, set: str, seed: int | str, shots: int | str, scorer: str
    ) -> str:
        return self.path(paths.scores(scorer), dataset=dataset, set=set, seed=seed, shots=shots)

    def all_scores(self) -> list[str]:
        """Every scores file of the config: each scorer in use on a dataset, per set."""
        return [
            self.scores_path(d, name, s, k, scorer)
            for d in self.datasets
            for scorer in self.scorers(d)
            for name in self.sets.by_name(d)
            for s in self.seeds
            for k in self.shots
        ]

    def train_scores(
        self, dataset: str, method: str, seed: int | str, shots: int | str
    ) -> str | list[str]:
        """The scores a filtered method's run reads (of its filter's scorer, beside its set);
        none for a method without a filter, so that no other run waits for a scoring job."""
        spec = self.filter_of(method)
        if spec is None or not self.methods[method].synthetic:
            return []
        return self.scores_path(dataset, self.sets.name(dataset, method), seed, shots, spec.by)

    def scoring_head(self, dataset: str, seed: int | str, shots: int | str) -> str:
        """What the classifier scorer of a set of (dataset, seed, shots) reads: the head of
        `scoring.classifier_method`'s run of the same dataset, seed and shots, trained on
        the real few-shot split alone (checked at start-up to be a baseline-kind method)."""
        method = self.scoring.classifier_method
        return self.path(paths.RUN_HEAD, dataset=dataset, method=method, seed=seed, shots=shots)

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
