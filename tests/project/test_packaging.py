"""Packaging metadata that cannot drift: every import declared, conda env = pyproject, and
the built wheel works installed, away from the checkout."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from helpers import REPO
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirements(group: str | None = None) -> set[str]:
    """The declared requirements (`name>=bound`, names normalized) of the dependencies or of
    one extra."""
    entries = PROJECT["dependencies"] if group is None else PROJECT["optional-dependencies"][group]
    return {f"{canonicalize_name(r.name)}{r.specifier}" for r in map(Requirement, entries)}


def runtime_requirements() -> set[str]:
    """What a job may need: the dependencies and every dataset extra (all extras but dev)."""
    extras = [name for name in PROJECT["optional-dependencies"] if name != "dev"]
    return requirements().union(*(requirements(name) for name in extras))


def imported_modules(folders: list[Path]) -> dict[str, Path]:
    """Top-level modules imported by the code (absolute imports only), with one importer."""
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], path)
    return found


def test_every_imported_package_is_declared():
    declared = {Requirement(r).name for r in runtime_requirements()}
    distributions = importlib.metadata.packages_distributions()
    folders = [REPO / "src/dafusion", REPO / "workflow/scripts", REPO / "benchmarks"]
    local = {"dafusion"} | {p.stem for folder in folders for p in folder.glob("*.py")}
    undeclared = {}
    for module, path in imported_modules(folders).items():
        if module in sys.stdlib_module_names or module in local:
            continue
        names = {canonicalize_name(d) for d in distributions.get(module, [module])}
        if not names & declared:
            undeclared[module] = str(path.relative_to(REPO))
    assert undeclared == {}, "declare these in pyproject.toml (dependencies or an extra)"


def test_the_conda_environment_is_pyprojects():
    """envs/dafusion.yaml (the rules' environment) lists exactly the runtime requirements,
    bounds included; snakemake is the one exception, as it runs the jobs."""
    env = yaml.safe_load((REPO / "envs/dafusion.yaml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    listed = {f"{canonicalize_name(r.name)}{r.specifier}" for r in map(Requirement, pip)}
    expected = {r for r in runtime_requirements() if not r.startswith("snakemake")}
    assert listed == expected
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert SpecifierSet(PROJECT["requires-python"]).contains(python.removeprefix("python="))


def test_the_license_file_is_the_declared_license():
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from the checkout (no dependencies, no build isolation)."""
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(folder), str(REPO)],
        check=True,
    )  # fmt: skip
    (path,) = folder.glob("dafusion-*.whl")
    return path


def test_the_wheel_ships_the_schema_the_miniature_the_reference_classifier_and_the_costs(wheel):
    """A non-editable install has what `dafusion.workflow.config`, `dafusion.shipped` and
    `dafusion.workflow.runtime` point at."""
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = REPO / "src/dafusion/assets"
    expected = {
        f"dafusion/assets/{p.relative_to(shipped)}" for p in shipped.rglob("*") if p.is_file()
    }
    assert "dafusion/assets/tiny-digits/unet/diffusion_pytorch_model.safetensors" in expected
    assert "dafusion/assets/reference-digits.safetensors" in expected
    assert (
        expected | {"dafusion/workflow/config.schema.yaml", "dafusion/workflow/costs.json"} <= names
    )
    assert "dafusion/VERSION" in names
    version = (REPO / "src/dafusion/VERSION").read_text().strip()
    assert wheel.name.startswith(f"dafusion-{version}-")


def test_the_installed_wheel_estimates_a_config_outside_the_checkout(wheel, tmp_path):
    """`python -m dafusion.workflow.estimate` validates the config against the schema the package
    ships, not one at the checkout's workflow/schemas: the wheel, installed in a fresh venv,
    prints the table from a folder outside the checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin/python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # The dependencies from this environment's site-packages, after the venv's own: a .pth
    # line adds the folder alone, without running its .pth files (this checkout's editable
    # install of dafusion among them).
    Path(purelib, "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # No PYTHONPATH (a checkout's src/ on it would be taken for the installed package).
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q",
         str(wheel)],
        check=True, env=env,
    )  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(REPO / "config/paper.yaml", elsewhere / "paper.yaml")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [python, *args], cwd=elsewhere, env=env, capture_output=True, text=True
        )

    where = run("-c", "import dafusion; print(dafusion.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr
    estimate = run("-m", "dafusion.workflow.estimate", "paper.yaml")
    assert estimate.returncode == 0, estimate.stderr[-3000:]
    from dafusion.workflow.estimate import plan_of, table

    assert estimate.stdout == table(plan_of([REPO / "config/paper.yaml"]))
