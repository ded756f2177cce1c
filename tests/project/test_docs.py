"""The documentation: links that resolve, commands that run as written, and a configuration
reference generated from the schema that is up to date."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from dafusion.workflow.config import SCHEMA, load_schema
from dafusion.workflow.schema_docs import render

REFERENCE = REPO / "docs/configuration-reference.md"
PAGES = sorted(
    [REPO / "README.md", REPO / "CHANGELOG.md", REPO / "config/README.md"]
    + list((REPO / "docs").glob("*.md"))
)
FENCE = re.compile(r"^ *```(\w*)\n(.*?)^ *```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CONFIG_FILE = (".yaml", ".yml", ".json")
# Snakemake options that take every following word up to the next option, as key=value.
KEY_VALUES = (
    "--config", "-C", "--resources", "--res", "--set-threads", "--set-resources",
    "--default-resources",
)  # fmt: skip


def _name(page: Path) -> str:
    return str(page.relative_to(REPO))


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings (a repeated one gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.+?)\s*#*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    targets = LINK.findall(_prose(page.read_text()))
    return [t for t in targets if not re.match(r"[a-z]+:", t)]  # http:, https:, mailto:


def test_the_pages_exist():
    names = {_name(p) for p in PAGES}
    for page in ["usage", "configuration", "configuration-reference", "outputs", "cluster"]:
        assert f"docs/{page}.md" in names
    for page in ["fidelity", "benchmarks", "development"]:
        assert f"docs/{page}.md" in names


def test_slugs_follow_githubs_rules():
    assert slug("Erasure (`erasure:`)") == "erasure-erasure"
    assert slug("Running on a cluster (Slurm)") == "running-on-a-cluster-slurm"
    assert slug("What reruns `index_dataset`") == "what-reruns-index_dataset"
    assert slug("GPU-hours of the paper's grid") == "gpu-hours-of-the-papers-grid"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_relative_link_points_to_a_file_and_heading_that_exist(page):
    for target in links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{_name(page)}: {target} (no such file)"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{_name(page)}: {target} (no such heading)"


def test_the_pages_link_to_each_other():
    """Every docs page can be reached from the README."""
    readme = {(REPO / t.partition("#")[0]).resolve() for t in links(REPO / "README.md")}
    for page in PAGES:
        if page.parent == REPO / "docs":
            assert page.resolve() in readme, _name(page)


def commands(page: Path) -> list[str]:
    """Shell commands in a page: every line of a bash block (continuations joined), and every
    code span that runs snakemake."""
    text = page.read_text()
    found = []
    for language, block in FENCE.findall(text):
        if language in ("bash", "sh", "shell"):
            found += [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    found += [s.strip("`") for s in CODE_SPAN.findall(FENCE.sub("", text)) if "snakemake" in s]
    return found


def misplaced_words(command: str) -> list[str]:
    """Words Snakemake would read as config files (after --configfile) or key=value pairs
    (after --config, --resources, ...) although they are not: targets after those options."""
    words = shlex.split(command, comments=True)
    if not any(w.endswith("snakemake") for w in words):
        return []
    wrong = []
    option = None
    for word in words:
        if word.startswith("-"):
            option = word
            continue
        config_file = option not in ("--configfile", "--configfiles") or word.endswith(CONFIG_FILE)
        key_value = option not in KEY_VALUES or "=" in word
        if not (config_file and key_value):
            wrong.append(word)
    return wrong


def test_the_command_check_finds_a_target_after_configfile():
    assert misplaced_words("snakemake --cores all --configfile a.yaml synthetic") == ["synthetic"]
    assert misplaced_words("snakemake --cores all --config a=1 report") == ["report"]
    assert misplaced_words("snakemake --resources gpu=2 all --configfile a.yaml") == ["all"]
    assert not misplaced_words("snakemake --cores all synthetic --configfile a.yaml b.yml")
    assert not misplaced_words(
        ".venv/bin/snakemake --cores all synthetic --configfile config/augment.yaml "
        "--config 'datasets={photos: {root: /data/photos}}' 'model={pretrained: /m}'"
    )


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_snakemake_command_names_its_targets_before_configfile(page):
    found = commands(page)
    for command in found:
        assert not misplaced_words(command), f"{_name(page)}: {command}"


def test_the_docs_hold_snakemake_commands_with_config_files():
    found = [c for page in PAGES for c in commands(page) if "--configfile" in c]
    assert len(found) >= 5


def test_the_configuration_reference_is_up_to_date():
    page = render(load_schema(SCHEMA))
    assert REFERENCE.read_text() == page, (
        "docs/configuration-reference.md is stale: run "
        "`python -m dafusion.workflow.schema_docs --output docs/configuration-reference.md`"
    )


def _properties(node: dict, path: str):
    for name, sub in node.get("properties", {}).items():
        key = f"{path}.{name}" if path else name
        yield key, sub
        yield from _properties(sub, key)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _properties(extra, f"{path}.<name>")


def test_every_schema_property_has_a_description():
    with open(SCHEMA) as f:
        schema = yaml.safe_load(f)
    keys = list(_properties(schema, ""))
    assert len(keys) > 100
    missing = [key for key, node in keys if not node.get("description", "").strip()]
    assert not missing


def test_the_reference_lists_every_schema_key():
    page = REFERENCE.read_text()
    with open(SCHEMA) as f:
        schema = yaml.safe_load(f)
    for key, _ in _properties(schema, ""):
        assert f"`{key}`" in page, key


def test_the_reference_command_checks_and_writes_the_page(tmp_path, capsys):
    from dafusion.workflow.schema_docs import main

    assert main(["--check", str(REFERENCE)]) == 0
    stale = tmp_path / "reference.md"
    stale.write_text(REFERENCE.read_text().replace("## model", "## modell"))
    assert main(["--check", str(stale)]) == 1
    assert "is stale" in capsys.readouterr().err
    assert main(["--output", str(stale)]) == 0
    assert stale.read_text() == REFERENCE.read_text()


@pytest.mark.parametrize("page", ["README.md", "docs/cluster.md"])
def test_the_gpu_hours_table_is_the_estimate_of_the_paper_grid(page):
    """The README's and docs/cluster.md's table is `python -m dafusion.workflow.estimate
    config/paper.yaml`'s output: computed from the per-unit costs, never by hand."""
    from dafusion.workflow.estimate import plan_of, table

    assert table(plan_of([REPO / "config/paper.yaml"])) in (REPO / page).read_text()
