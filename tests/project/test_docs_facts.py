"""Numbers and names the docs state, checked against the code where the code knows them: the
embedded default's job count (a dry run), its model's name (config/config.yaml), and the
quick tier's size (pytest's own collection), stated in one place only.

Each checker is also run on the stale statements an issue found in the docs, to show that
it catches them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import yaml
from helpers import REPO, dry_run_jobs

PAGES = [REPO / "README.md", REPO / "config/README.md", *sorted((REPO / "docs").glob("*.md"))]
# A sentence that names a release speaks of that release (docs/benchmarks.md's history).
DATED = re.compile(r"\b(version|release|at) \d+\.\d+(\.\d+)?\b|\b\d+\.\d+\.\d+\b")


def sentences(text: str) -> list[str]:
    """The page's prose as sentences: code blocks, tables, headings and HTML comments dropped,
    each paragraph's lines joined."""
    text = re.sub(r"```.*?```", "\n\n", text, flags=re.S)
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"^[|#].*$", "\n", text, flags=re.M)
    found = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = re.sub(r"\s+", " ", paragraph).strip()
        found += [s for s in re.split(r"(?<=[.!?;])\s+(?=[A-Z(`*])", paragraph) if s]
    return found


def default_job_counts(text: str) -> list[tuple[int, str]]:
    """Every "N jobs" in a sentence about the default (not the paper's grid, not a release's
    measurement)."""
    found = []
    for sentence in sentences(text):
        lower = sentence.lower()
        if "default" not in lower or "paper" in lower or DATED.search(sentence):
            continue
        found += [
            (int(n.replace(",", "")), sentence) for n in re.findall(r"(\d[\d,]*) jobs", sentence)
        ]
    return found


def misnamed_default(text: str, model: str) -> list[str]:
    """Sentences that call the embedded default the random-weight `tiny` model, or say its
    weights are random, without naming `model`."""
    wrong = r"(`tiny`(?!-)|random[- ]weight|accuracies mean nothing)"
    default = r"\b(the (embedded )?default|default is)\b"
    return [
        sentence
        for sentence in sentences(text)
        if model not in sentence
        and (
            re.search(rf"{default}[^.;:]{{0,60}}?{wrong}", sentence, re.I)
            or re.search(rf"{wrong}[^.;:]{{0,30}}?{default}", sentence, re.I)
        )
    ]


def quick_tier_claims(text: str) -> list[str]:
    """Sizes and times stated for the quick tier ("630 tests, 77 s")."""
    return [
        sentence
        for sentence in sentences(text)
        if "quick tier" in sentence.lower() and re.search(r"\d+ tests|\d+ (min|s)\b", sentence)
    ]


# The stale statements issue 39 found, each as the docs stated it.
STALE = {
    "cluster": "The embedded default (`config/config.yaml`) has 47 jobs; a cluster runs them.",
    "config": "The default is a tiny random-weight Stable Diffusion. Its accuracies mean nothing.",
    "outputs": "Each figure of a run of `tiny`, the embedded default, shows the plumbing.",
    "development": (
        "The quick tier takes 77 s (630 tests). Later: the quick tier, 630 tests, runs in 95 s."
    ),
}


@pytest.fixture(scope="module")
def model() -> str:
    return yaml.safe_load((REPO / "config/config.yaml").read_text())["model"]["pretrained"]


def test_each_checker_catches_the_stale_statements_the_issue_found(model):
    assert [n for n, _ in default_job_counts(STALE["cluster"])] == [47]
    assert len(misnamed_default(STALE["config"], model)) == 1
    assert len(misnamed_default(STALE["outputs"], model)) == 1
    assert len(quick_tier_claims(STALE["development"])) == 2


def test_no_page_calls_the_default_by_another_model(model):
    assert model == "tiny-digits"
    found = {page.name: misnamed_default(page.read_text(), model) for page in PAGES}
    assert {name: s for name, s in found.items() if s} == {}


@pytest.mark.workflow  # a dry run of the embedded default
def test_the_docs_state_the_defaults_job_count(tmp_path):
    from helpers import copy_workflow

    workdir = copy_workflow(tmp_path / "wf")
    shutil.copytree(REPO / "config", workdir / "config")
    jobs = [job for job in dry_run_jobs(workdir) if job["rule"] != "all"]
    claims = [(page.name, n, s) for page in PAGES for n, s in default_job_counts(page.read_text())]
    readme = (REPO / "README.md").read_text()
    runtime = readme.split("<!-- runtime -->")[1].split("<!-- /runtime -->")[0]
    claims.append(("README.md runtime", int(runtime.split(" jobs")[0]), runtime))
    assert len(claims) >= 2
    assert [c for c in claims if c[1] != len(jobs)] == []


@pytest.mark.workflow  # collects the whole suite
def test_the_quick_tier_is_stated_once_and_as_large_as_it_is():
    claims = [(page.name, s) for page in PAGES for s in quick_tier_claims(page.read_text())]
    assert len(claims) == 1, claims
    stated = int(re.search(r"(\d+) tests", claims[0][1]).group(1))
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    counts = re.search(r"(\d+)/(\d+) tests collected \((\d+) deselected\)", collected.stdout)
    assert counts, collected.stdout[-2000:]
    assert stated == int(counts.group(1))
