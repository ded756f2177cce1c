"""The README's commands verbatim, as a new user runs them on a bare machine (the `first_run`
tier, issue 36).

The project is a copy of what a clone has (tracked and new, unignored files) in a folder
outside the checkout. Its `.venv` is this environment (a link: the tests do not install
packages), with the copy's own `src/` first on the path, as its editable install would put
it. HOME, the Hugging Face cache and every other cache are new and empty, nothing of this
process's environment is passed on, and the commands run without a network (a network
namespace of their own, where `unshare` allows it). So nothing the suite's machine has, and
a user's lacks, can make them pass.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import webdataset as wds
from helpers import REPO, photo_folder
from PIL import Image

from dafusion.data.manifest import read_manifest

pytestmark = pytest.mark.first_run

README = (REPO / "README.md").read_text()
# The quick start's command 1 and the offline augment command, each a line of the README.
QUICK_START = re.search(r"^python3\.11 -m venv \.venv && .*snakemake.*$", README, re.M)[0]
AUGMENT = re.search(r"`(\.venv/bin/snakemake .*config/augment-tiny\.yaml.*)`", README)[1]
EXAMPLES = re.findall(r"```python\n(.*?)```", README, re.S)


def _isolated() -> list[str]:
    """The words that run a command without a network: `unshare`'s own namespace."""
    if shutil.which("unshare") is None:
        return []
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    return ["unshare", "-rn"] if probe.returncode == 0 else []


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(the project folder, the environment of a fresh machine)."""
    root = tmp_path_factory.mktemp("fresh machine")
    project = root / "projects/dafusion"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, project / name)
    (project / ".venv").symlink_to(Path(sys.prefix))
    home = root / "home"
    (home / "hf").mkdir(parents=True)
    env = {
        "PATH": f"{project / '.venv/bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(project / "src"),  # the clone's editable install
        "MPLBACKEND": "Agg",
    }
    return project, env


def run(command: str, project: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*_isolated(), "bash", "-c", command],
        cwd=project, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip


def test_the_quick_start_plans_the_whole_embedded_default(fresh):
    """Command 1's workflow, as a dry run (running it is the workflow tier's job)."""
    project, env = fresh
    setup, workflow = QUICK_START.rsplit(" && ", 1)
    assert setup == "python3.11 -m venv .venv && .venv/bin/pip install -e ."
    result = run(f"{workflow} -n", project, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for rule in ("place_shipped", "check_dataset", "index_dataset", "invert", "train", "report"):
        assert re.search(rf"^rule {rule}:", result.stdout, re.M), rule
    assert "synthetic images at 16 px" in result.stdout + result.stderr  # the run's size


def test_the_offline_augment_command_and_the_python_examples_run(fresh):
    """The README's offline augment command on a folder of three classes, with an empty
    Hugging Face cache (it once stopped for backbone weights the `synthetic` target never
    loads), then its three Python examples, as written, from the project folder."""
    project, env = fresh
    photos = project.parent.parent / "data/photos"
    photo_folder(photos)
    assert "/data/photos" in AUGMENT
    result = run(AUGMENT.replace("/data/photos", str(photos)), project, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    results = project / "results-augment"
    assert not (project / "results").exists()
    pool = read_manifest(results / "photos/splits/pool.parquet")
    assert len(pool) == 6 and len(pd.read_parquet(results / "photos/splits/val.parquet")) == 0
    (synthetic,) = (results / "photos/synthetic").glob("*/seed0-shotsall")  # one set
    index = pd.read_parquet(synthetic / "index.parquet")
    by_source = index.groupby("source_key")["key"].apply(sorted).to_dict()
    assert by_source == {k: [f"{k}-{j:03d}" for j in range(3)] for k in pool["key"]}
    assert set(index["class_name"]) == {"cat", "dog", "red fox"}
    shards = sorted(str(p) for p in synthetic.glob("shard-*.tar"))
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode("pil"))
    assert sorted(s["__key__"] for s in samples) == sorted(index["key"])
    sizes = {row.key: Image.open(project / row.path).size for row in pool.itertuples()}
    assert all(s["png"].size == sizes[s["json"]["source_key"]] for s in samples)

    assert len(EXAMPLES) == 3
    for n, example in enumerate(EXAMPLES):
        ran = run(f".venv/bin/python -c {_quoted(example)}", project, env)
        assert ran.returncode == 0, ran.stderr[-3000:]
        if n < 2:
            assert all(key in ran.stdout for key in pool["key"])
    assert "epoch 1: loss" in ran.stdout and "synthetic [" in ran.stdout


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"
