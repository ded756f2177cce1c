"""A config's synthetic sets: which methods share one, its folder's name, its M, its jobs'
params and its index.

Methods whose images are determined by the same settings (`SyntheticSets.identity`) share one
set, named by a digest of those settings, so that equal settings are one folder however the
methods are named. `Plan.sets` holds this for a plan. A set's folder is the rules' {set}
wildcard, hence the parameter name `set` here and in the plan: workflow/rules/common.smk
passes a job's wildcards to them by name.

No workflow step imports this module, so editing it changes no job's code fingerprint
(`dafusion.provenance`): it reruns only the jobs whose params or inputs it changes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from ..provenance import digest
from . import paths

if TYPE_CHECKING:
    from ..settings import GenerationSettings
    from .plan import Plan

# Hex digits of a synthetic set's name (SyntheticSets.name): 48 bits tell a grid's sets apart.
SET_NAME_DIGITS = 12


class PlanError(ValueError):
    """The config cannot make the requested target; the message names the key and what to
    run instead. Here, below `dafusion.workflow.plan`, since both raise it."""


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticSets:
    """The synthetic sets of a plan's datasets, from its methods' and sections' settings."""

    plan: Plan
    # Each dataset's sets, worked out once (`by_name`): the DAG asks for them for every job
    # of a set, and each asks for every method's identity digest.
    _sets: dict[str, dict[str, list[str]]] = dataclasses.field(
        default_factory=dict, init=False, repr=False
    )

    def identity(self, dataset: str, method: str) -> dict[str, Any]:
        """What determines a method's synthetic images on a dataset (with the split its seed
        and shots give): the method as the dataset runs it (prompt, strengths, mask,
        erased; its learner where the prompt uses tokens learned with a LoRA), the
        generation's result settings but M, the model, and the inversion (and LoRA) and
        erasure settings where its prompt uses tokens or its UNet is erased. The per-image
        seeds come from (seed, image, j) alone, so methods with one identity get the same
        images: they share one set, of the largest M they ask for, and each run reads its
        first M variants per image."""
        plan = self.plan
        spec = plan.methods[method].for_dataset(dataset)
        generation = plan.generation_for(dataset, method).result_params()
        del generation["num_synthetic"]
        identity = {
            "method": spec.result_params(),
            "generation": generation,
            "model": plan.model.result_params(),
        }
        if spec.uses_lora:  # tokens learned with a LoRA: the lora job's settings
            identity.update(plan.lora_params())
        elif spec.uses_tokens:
            identity["inversion"] = plan.inversion.result_params()
        if spec.erased:
            identity["erasure"] = plan.erasure.result_params()
        return identity

    def name(self, dataset: str, method: str) -> str:
        """A set's folder: a digest of its identity, so equal identities are one folder."""
        identity = json.dumps(self.identity(dataset, method), sort_keys=True)
        return digest(identity.encode())[:SET_NAME_DIGITS]

    def by_name(self, dataset: str) -> dict[str, list[str]]:
        """The dataset's sets by name, each with the methods that read it (config order)."""
        if dataset not in self._sets:
            sets: dict[str, list[str]] = {}
            for method in self.plan.synthetic_methods():
                if self.plan.methods[method].runs_on(dataset):
                    sets.setdefault(self.name(dataset, method), []).append(method)
            self._sets[dataset] = sets
        return self._sets[dataset]

    def methods(self, dataset: str, set: str) -> list[str]:
        try:
            return self.by_name(dataset)[set]
        except KeyError:
            raise PlanError(f"no method of the config makes the set {dataset}/{set}") from None

    def size(self, dataset: str, set: str) -> int:
        """A set's M: the largest its methods ask for."""
        methods = self.methods(dataset, set)
        return max(self.plan.generation_for(dataset, m).num_synthetic for m in methods)

    def generation(self, dataset: str, set: str) -> GenerationSettings:
        """A set's generation settings: its methods' (equal but for M), at the set's M."""
        method = self.methods(dataset, set)[0]
        generation = self.plan.generation_for(dataset, method)
        return generation.replace(num_synthetic=self.size(dataset, set))

    def params(self, dataset: str, set: str) -> dict[str, Any]:
        """A set's jobs' params: its identity and its M."""
        method = self.methods(dataset, set)[0]
        return {
            "identity": self.identity(dataset, method),
            "num_synthetic": self.size(dataset, set),
        }

    def index(self, dataset: str, set: str, seed: int | str, shots: int | str) -> str:
        return self.plan.path(paths.SYNTHETIC, dataset=dataset, set=set, seed=seed, shots=shots)

    def method_index(self, dataset: str, method: str, seed: int | str, shots: int | str) -> str:
        """The index of the set a method reads."""
        return self.index(dataset, self.name(dataset, method), seed, shots)

    def run_params(self, dataset: str, method: str) -> dict[str, Any]:
        """What a run reads of its set, as the train job's params: its own M (the set holds
        the largest M of the methods sharing it), and its filter where it has one (never
        part of the set's identity: a filter selects among the set's images).

        A set regenerated for a larger M reruns every run that reads it, although their
        first M variants are the same images: Snakemake reruns the jobs after a job that
        reruns, and its `ancient()`, which would stop that, also skips the params check of
        such a job (snakemake/snakemake#4166), so a run's own changed settings could go
        unseen."""
        spec = self.plan.methods[method]
        if not spec.synthetic:
            return {}
        params: dict[str, Any] = {
            "num_synthetic": self.plan.generation_for(dataset, method).num_synthetic
        }
        if spec.filter_settings is not None:  # a method without one keeps its params
            params["filter"] = spec.filter_settings.result_params()
        return params
