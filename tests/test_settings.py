"""One home per setting, knobs kept apart from result settings, and code fingerprints."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path

import pytest

from dafusion.config import PER_ENTRY, load_schema
from dafusion.provenance import import_graph, step_code
from dafusion.settings import (
    ESD_KEYS,
    SECTIONS,
    UCE_KEYS,
    ClassifierSettings,
    ErasureSettings,
    GenerationSettings,
    MethodSettings,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
STEPS = [
    "build_tiny_model", "place_shipped", "check_dataset", "index_dataset", "seed_split",
    "few_shot_split", "erase", "invert", "generate", "gather_synthetic", "train", "aggregate",
]  # fmt: skip
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


def test_no_module_imports_another_in_a_circle():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                cycle = path[path.index(dep) :] + [dep] if dep in path else [module, dep]
                pytest.fail(f"import circle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert "dafusion.generation" in graph and "dafusion.readers.folders" in graph


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "dafusion"
    shutil.copytree(REPO / "src/dafusion", root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _changed(before: dict, root: Path) -> set[str]:
    return {step for step in STEPS if step_code(step, root) != before[step]}


def test_a_module_edit_changes_the_code_of_the_steps_that_import_it(library):
    before = {step: step_code(step, library) for step in STEPS}
    assert "dafusion/generation.py" in before["generate"]
    assert "dafusion/generation.py" not in before["invert"]
    for path in library.rglob("*.py"):
        os.utime(path)  # touch: no content change
    assert _changed(before, library) == set()
    with open(library / "generation.py", "a") as f:
        f.write("\n# edited\n")
    assert _changed(before, library) == {"generate"}
    with open(library / "aggregate.py", "a") as f:
        f.write("\n# edited\n")
    assert _changed(before, library) == {"generate", "aggregate"}


def test_only_the_edited_pipeline_function_changes(library):
    before = {step: step_code(step, library) for step in STEPS}
    pipeline = library / "pipeline.py"
    source = pipeline.read_text()
    pipeline.write_text(source.replace('"seed %d, %s shots: %d images"', '"%d/%s: %d images"'))
    assert _changed(before, library) == {"few_shot_split"}
    pipeline.write_text(source.replace("def _model_source(", "def _model_source(  # edited\n"))
    assert _changed(before, library) == {"erase", "invert", "generate"}  # its callers


def test_a_step_without_a_pipeline_function_is_an_error(library):
    with pytest.raises(ValueError, match="no function 'nonsense' for the workflow rule"):
        step_code("nonsense", library)


def test_a_job_counts_as_a_gpu_job_only_when_it_will_use_cuda(monkeypatch):
    from dafusion.devices import will_use_cuda

    assert will_use_cuda("cuda") and will_use_cuda("cuda:1")
    assert not will_use_cuda("cpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not will_use_cuda("auto")  # every GPU hidden


def test_code_fingerprints_cut_source_exactly_as_ast_does():
    """step_code splits each file's lines once; its segments must equal
    ast.get_source_segment's, or every fingerprint (and so every job) would change."""
    import ast

    from dafusion.provenance import _LINE, ROOT, _segment

    for path in sorted(ROOT.rglob("*.py")):
        source = path.read_text()
        lines = _LINE.findall(source)
        for node in ast.parse(source).body:  # the statements step_code cuts out
            assert _segment(lines, node) == ast.get_source_segment(source, node), path
    source = "x = 1\r\ny = 'é'; z = (\r  2)\nw = 3"
    lines = _LINE.findall(source)
    for node in ast.parse(source).body:
        assert _segment(lines, node) == ast.get_source_segment(source, node)


def test_an_import_for_type_checkers_only_is_not_code_a_step_runs(library):
    """synthetic.py names generation.Engine only under `if TYPE_CHECKING:`: editing
    generation.py changes the code of generate, not of gather_synthetic."""
    assert "from .generation import Engine" in (library / "synthetic.py").read_text()
    gather = step_code("gather_synthetic", library)
    assert "dafusion/synthetic.py" in gather and "dafusion/generation.py" not in gather
