"""One home per setting, and knobs kept apart from result settings (the code fingerprints
are tests/unit/test_provenance.py's)."""

from __future__ import annotations

import dataclasses
import re

import pytest
from helpers import REPO

from dafusion.settings import (
    ESD_KEYS,
    SECTIONS,
    UCE_KEYS,
    ClassifierSettings,
    ErasureSettings,
    GenerationSettings,
    MethodSettings,
)
from dafusion.workflow.config import PER_ENTRY, SCHEMA, load_schema

# Keys the schema accepts that validation expands into other keys and removes.
EXPANDED = {"inversion": {"preset"}, "classifier": {"protocol"}}


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _schema_properties(section: str) -> dict:
    node = load_schema(SCHEMA)["properties"][section]
    if section in PER_ENTRY:
        node = node["additionalProperties"]
    return node["properties"]


@pytest.mark.parametrize("section", list(SECTIONS))
def test_every_schema_default_equals_its_settings_default(section):
    properties = _schema_properties(section)
    fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
    assert set(properties) - EXPANDED.get(section, set()) == set(fields)
    for key, field in fields.items():
        if "default" in properties[key]:
            default = (
                field.default_factory()
                if field.default_factory is not dataclasses.MISSING
                else field.default
            )
            assert _plain(default) == properties[key]["default"], f"{section}.{key}"
        else:  # required in the schema, or absent meaning None
            assert field.default in (dataclasses.MISSING, None), f"{section}.{key}"


@pytest.mark.parametrize("section", list(SECTIONS))
def test_the_schema_describes_exactly_the_knobs_as_execution_knobs(section):
    properties = _schema_properties(section)
    described = {
        key for key, p in properties.items() if p.get("description", "").startswith("execution")
    }
    assert described == set(SECTIONS[section].knob_keys())


def test_the_usage_page_lists_every_knob():
    usage = (REPO / "docs/usage.md").read_text()
    table = usage.split("## Result settings and execution knobs", 1)[1].split("\n#", 1)[0]
    listed = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", table.split("Execution knobs", 1)[1]))
    knobs = {f"{s}.{k}" for s, cls in SECTIONS.items() for k in cls.knob_keys()}
    assert knobs <= listed


def test_params_carry_result_settings_only():
    settings = GenerationSettings(batch_size=3, workers=2, compile=True)
    params = settings.result_params()
    assert not {"batch_size", "workers", "compile"} & set(params)
    assert "safety_retries" not in params  # read only with the safety checker
    assert "safety_retries" in settings.replace(safety_checker=True).result_params()
    config = {**params, "batch_size": 5, "workers": None, "compile": False}
    assert GenerationSettings.from_parts(params, config).batch_size == 5
    baseline = MethodSettings(kind="baseline")
    assert ClassifierSettings().for_method(baseline).synthetic_probability == 0.0
    assert "device" not in ClassifierSettings().result_params()
    assert "erased" not in baseline.result_params()  # an unerased method's params as before
    assert MethodSettings(kind="sdedit", erased=True).result_params()["erased"] is True


def test_an_erasure_gets_only_its_method_settings():
    esd = ErasureSettings(method="esd").result_params()
    uce = ErasureSettings(method="uce").result_params()
    assert set(ESD_KEYS) <= set(esd) and not set(UCE_KEYS) & set(esd)
    assert set(UCE_KEYS) <= set(uce) and not set(ESD_KEYS) & set(uce)
    assert not {"enabled", "checkpoint_every", "batch_size"} & (set(esd) | set(uce))
    assert ErasureSettings(method="uce", scope="joint").eraser == "uce-joint"


def test_a_job_counts_as_a_gpu_job_only_when_it_will_use_cuda(monkeypatch):
    from dafusion.jobs.devices import will_use_cuda

    assert will_use_cuda("cuda") and will_use_cuda("cuda:1")
    assert not will_use_cuda("cpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not will_use_cuda("auto")  # every GPU hidden


def test_a_filters_defaults_and_keys_are_the_schemas():
    """methods.<name>.filter: the keys and defaults of `FilterSettings` (issue 41)."""
    from dafusion.settings import FILTER_CRITERIA, SCORER_NAMES, FilterSettings

    node = _schema_properties("methods")["filter"]
    fields = {f.name: f for f in dataclasses.fields(FilterSettings)}
    assert set(node["properties"]) == set(fields) and node["required"] == ["by"]
    assert node["properties"]["by"]["enum"] == list(SCORER_NAMES) == list(FILTER_CRITERIA)
    for key, field in fields.items():
        default = node["properties"][key].get("default")
        assert default == (None if field.default is dataclasses.MISSING else field.default), key


def test_a_filter_is_no_part_of_a_methods_result_params():
    """The filter selects among a set's images: not in the set's identity, and its params
    name only the criteria given."""
    from dafusion.settings import FilterSettings

    plain = MethodSettings(kind="sdedit", prompt="a photo of a {token}", strengths=[0.5])
    filtered = plain.replace(filter={"by": "classifier", "min_confidence": 0.5})
    assert plain.result_params() == filtered.result_params()
    assert plain.filter_settings is None
    spec = filtered.filter_settings
    assert spec == FilterSettings(by="classifier", min_confidence=0.5)
    assert spec.result_params() == {"by": "classifier", "min_confidence": 0.5}
    written_out = FilterSettings(by="classifier", min_confidence=0.5, require_top1=False)
    assert written_out.result_params() == spec.result_params()


def test_each_scorer_reads_only_its_own_scoring_settings():
    from dafusion.settings import ScoringSettings

    settings = ScoringSettings(clip_model="some/clip", batch_size=3, device="cpu")
    assert settings.params("clip") == {
        "clip_model": "some/clip",
        "clip_prompt": "a photo of a {name}",
    }
    assert settings.params("classifier") == {} and settings.params("change") == {}
    assert set(ScoringSettings.knob_keys()) == {"batch_size", "device"}
