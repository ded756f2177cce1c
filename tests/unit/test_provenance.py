"""Code fingerprints (dafusion.provenance): which library code each rule's jobs run, so that
an edit reruns exactly the jobs that run the edited code."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

import dafusion
from dafusion.provenance import (
    _LINE,
    ROOT,
    _segment,
    global_names,
    import_graph,
    rule_code,
    script_rules,
    step_code,
    workflow_code,
)

# Every rule that runs a script, read from workflow/scripts/ (a hand-kept list missed some).
RULES = script_rules(REPO)
# Subpackages no job imports: what runs while Snakemake parses (editing it reruns only the
# jobs whose params or inputs change) and the tools that train the shipped assets.
NOT_JOB_CODE = ("dafusion/workflow/", "dafusion/training/")


@pytest.fixture
def library(tmp_path: Path) -> Path:
    root = tmp_path / "dafusion"
    shutil.copytree(REPO / "src/dafusion", root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _changed(before: dict, root: Path) -> set[str]:
    return {rule for rule in RULES if step_code(rule, root) != before[rule]}


def _pipeline_calls(script: Path) -> set[str]:
    tree = ast.parse(script.read_text())
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "pipeline"
    }


def test_the_rules_are_read_from_the_scripts():
    assert {"report", "recognition", "gallery", "generate", "train"} <= set(RULES)


@pytest.mark.parametrize("rule", RULES)
def test_each_script_runs_the_pipeline_function_of_its_rule(rule):
    """A rule's fingerprint is its script and `pipeline.<rule>`: a script that called another
    function would rerun on the wrong edits."""
    assert _pipeline_calls(REPO / f"workflow/scripts/{rule}.py") == {rule}
    assert f"pipeline.{rule}" in step_code(rule)


@pytest.mark.parametrize(
    ("source", "names"),
    [
        ("def f(a):\n    return a, b", {"b"}),
        ("def f():\n    a = 1\n    return a, b", {"b"}),
        (
            "def f():\n    for a in b:\n        pass\n    with c as d:\n        return a, d",
            {"b", "c"},
        ),
        ("def f():\n    import a.b as c, d.e\n    return c, d", set()),
        ("def f():\n    try:\n        pass\n    except E as e:\n        return e", {"E"}),
        ("def f():\n    return [a for a in b], {k: v for k, v in c}", {"b", "c"}),
        ("def f():\n    return [a for a in a]", {"a"}),  # the first iterable runs outside
        ("def f():\n    return [a for a in b if (c := a)], c", {"b"}),  # := binds in f
        ("def f():\n    return (lambda a: a)(b)", {"b"}),
        ("def f(a=b, *c: d) -> e:\n    return c", {"b", "d", "e"}),
        ("def f(a):\n    def g():\n        return a, b\n    return g", {"b"}),
        ("def f():\n    a = 1\n    def g():\n        global a\n        return a", {"a"}),
        ("class C(B):\n    x = x", {"B", "x"}),  # a class body may read the global first
        ("x = f(y)", {"f", "y"}),
    ],
)
def test_only_names_read_from_the_module_count(source, names):
    """A name a function binds (a parameter, assignment, import, loop or `with` target) is
    its own, even where a module function has the same name."""
    assert global_names(ast.parse(source).body[0]) == names


SHADOWING = """
from .light import write


def recognition(paths):
    from .recognizer import score
    return score(paths)


def gallery(paths):
    from .painter import draw
    return draw(paths)


def train(paths):
    from .trainer import fit
    return fit(paths)


def erase(paths):
    from .eraser import run
    return run(paths)


def invert(paths):
    from .inverter import run
    return run(paths)


def _caption(text):
    from .captions import render
    return render(text)


def report(recognition, output):
    import json as gallery
    for train in recognition:
        print(train)
    with open(output, "w") as erase:
        erase.write(gallery.dumps([invert for invert in recognition]))
    shown = (lambda train: train)(output)
    return write(output, [_caption(name) for name in recognition], shown)
"""


def test_a_local_name_like_a_steps_is_not_that_step(tmp_path):
    """`report` binds `recognition`, `gallery`, `train`, `erase` and `invert` itself (a
    parameter, an import, loop, `with`, comprehension and lambda targets): their steps'
    modules are not its code, while the helper it does call is."""
    root = tmp_path / "dafusion"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "pipeline.py").write_text(SHADOWING)
    for module in ("light", "recognizer", "painter", "trainer", "eraser", "inverter", "captions"):
        (root / f"{module}.py").write_text("def write(*args): pass\n")
    code = step_code("report", root)
    assert set(code) == {
        "pipeline.report",
        "dafusion/__init__.py",
        "dafusion/light.py",
        "dafusion/captions.py",
    }
    assert "dafusion/painter.py" in step_code("gallery", root)
    (root / "pipeline.py").write_text(SHADOWING.replace("from .recognizer", "from .painter"))
    assert step_code("report", root) == code  # the recognition step's body is not report's


def test_the_report_runs_no_recognition_code():
    """`pipeline.report` takes the recognition figures as a parameter named `recognition`:
    the recognition step, its classifier and the models it loads are not the report's code."""
    code = step_code("report")
    for module in (
        "reporting/recognition", "reporting/reference", "training/miniature", "stages/tiny",
        "stages/models", "data/readers/common",
    ):  # fmt: skip
        assert (REPO / f"src/dafusion/{module}.py").is_file()
        assert f"dafusion/{module}.py" not in code
    for module in ("reporting/report", "reporting/record", "reporting/diagnostics", "provenance"):
        assert f"dafusion/{module}.py" in code


def test_scoring_with_the_reference_classifier_runs_no_trainer():
    """The recognition job loads the shipped reference classifier; the code that trained it
    and the miniature (fonts, VAE and UNet training) is not the job's code."""
    code = step_code("recognition")
    assert "dafusion/reporting/reference.py" in code
    assert not [source for source in code if source.startswith("dafusion/training/")]


def test_editing_the_recognition_code_reruns_only_recognition(library):
    before = {rule: step_code(rule, library) for rule in RULES}
    for module in ("reporting/reference.py", "reporting/recognition.py"):
        with open(library / module, "a") as f:
            f.write("\n# edited\n")
    assert _changed(before, library) == {"recognition"}


@pytest.mark.parametrize("rule", RULES)
def test_no_job_runs_workflow_side_code(rule):
    """No job's fingerprint holds a module of `dafusion.workflow` (only the Snakefile imports
    it) or `dafusion.training` (tools run by hand): editing one reruns only the jobs whose
    params or inputs change."""
    code = step_code(rule)
    assert [source for source in code if source.startswith(NOT_JOB_CODE)] == []
    assert f"pipeline.{rule}" in code and "dafusion/__init__.py" in code


def test_the_workflow_side_imports_no_torch():
    """Snakemake imports every `dafusion.workflow` module while it parses: none may pull in
    torch or a model library (seconds of start-up for every dry run and cluster submission)."""
    probe = (
        "import importlib, pkgutil, sys, dafusion.workflow as w\n"
        "for m in pkgutil.iter_modules(w.__path__, 'dafusion.workflow.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'matplotlib')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("rule", RULES)
def test_the_release_number_is_in_no_fingerprinted_file(rule):
    """A release changes no result, so it must rerun no job: the version is read from
    dafusion/VERSION, which no fingerprint covers, and written in no module that one does."""
    version = dafusion.__version__
    assert version == (REPO / "src/dafusion/VERSION").read_text().strip()
    for source in step_code(rule):
        if source.endswith(".py"):
            assert version not in (REPO / "src" / source).read_text(), source


def test_a_rules_code_is_its_step_and_its_script():
    code = rule_code("train", REPO)
    script = "workflow/scripts/train.py"
    assert code == {**step_code("train"), script: code[script]}
    assert re.fullmatch(r"[0-9a-f]{16}", code[script])


def test_the_workflows_code_covers_every_script(tmp_path):
    """The report's one digest changes with any rule's script."""
    shutil.copytree(REPO / "workflow/scripts", tmp_path / "workflow/scripts")
    assert workflow_code(tmp_path) == workflow_code(REPO)
    with open(tmp_path / "workflow/scripts/place_shipped.py", "a") as f:
        f.write("\n# edited\n")
    assert workflow_code(tmp_path) != workflow_code(REPO)


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
    assert "dafusion.stages.generation" in graph and "dafusion.data.readers.folders" in graph


def test_a_module_edit_changes_the_code_of_the_steps_that_import_it(library):
    before = {rule: step_code(rule, library) for rule in RULES}
    assert "dafusion/stages/generation.py" in before["generate"]
    assert "dafusion/stages/generation.py" not in before["invert"]
    for path in library.rglob("*.py"):
        os.utime(path)  # touch: no content change
    assert _changed(before, library) == set()
    with open(library / "stages/generation.py", "a") as f:
        f.write("\n# edited\n")
    assert _changed(before, library) == {"generate"}
    with open(library / "reporting/aggregate.py", "a") as f:
        f.write("\n# edited\n")
    assert _changed(before, library) == {"generate", "aggregate"}


def test_only_the_edited_pipeline_function_changes(library):
    before = {rule: step_code(rule, library) for rule in RULES}
    pipeline = library / "pipeline.py"
    source = pipeline.read_text()
    pipeline.write_text(source.replace('"seed %d, %s shots: %d images"', '"%d/%s: %d images"'))
    assert _changed(before, library) == {"few_shot_split"}
    pipeline.write_text(source.replace("def _model_source(", "def _model_source(  # edited\n"))
    assert _changed(before, library) == {"erase", "invert", "lora", "generate"}  # its callers


def test_a_step_without_a_pipeline_function_is_an_error(library):
    with pytest.raises(ValueError, match="no function 'nonsense' for the workflow rule"):
        step_code("nonsense", library)


def test_code_fingerprints_cut_source_exactly_as_ast_does():
    """step_code splits each file's lines once; its segments must equal
    ast.get_source_segment's, or every fingerprint (and so every job) would change."""
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
    assert "from .generation import Engine" in (library / "stages/synthetic.py").read_text()
    gather = step_code("gather_synthetic", library)
    assert (
        "dafusion/stages/synthetic.py" in gather and "dafusion/stages/generation.py" not in gather
    )
