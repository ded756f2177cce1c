"""An intermediate changed after its job wrote it stops the next job that reads it."""

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import REPO

from dafusion.jobs import integrity
from dafusion.jobs.integrity import IntegrityError, job, record, sidecar, verify

SCRIPTS = REPO / "workflow" / "scripts"
TOKENS = "digits/tokens/seed0-shots1.safetensors"


@pytest.fixture
def tokens(tmp_path, monkeypatch) -> Path:
    """A tokens file as rule invert left it, its digest recorded; paths relative to the
    working directory, as Snakemake gives them."""
    monkeypatch.chdir(tmp_path)
    path = Path(TOKENS)
    path.parent.mkdir(parents=True)
    path.write_bytes(bytes(range(256)) * 64)
    assert record(path, "invert")
    return path


def _flip(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(data)


def test_a_file_verifies_as_written_and_its_digest_is_beside_it(tokens):
    assert verify(tokens)
    assert sidecar(tokens) == Path("digits/tokens/.seed0-shots1.safetensors.sha256.json")
    assert json.loads(sidecar(tokens).read_text())["rule"] == "invert"


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (_flip, "its sha256 is not the one recorded when it was written"),
        (lambda p: p.write_bytes(p.read_bytes()[:1000]), "it has 1000 bytes, not the 16384"),
    ],
)
def test_a_changed_file_is_named_with_the_rule_that_wrote_it(tokens, damage, why):
    damage(tokens)
    with pytest.raises(IntegrityError) as error:
        verify(tokens)
    message = str(error.value)
    assert f"'{TOKENS}' is not the file rule invert wrote" in message
    assert why in message
    assert f"snakemake --cores all --forcerun {TOKENS}" in message
    assert str(sidecar(tokens)) in message  # to accept a change made on purpose


def test_files_without_a_digest_are_accepted(tmp_path):
    """Dataset files, models and outputs of an earlier version have none."""
    (tmp_path / "given.parquet").write_bytes(b"the user's own")
    (tmp_path / "model").mkdir()
    assert not verify(tmp_path / "given.parquet")
    assert not verify(tmp_path / "model")
    assert not record(tmp_path / "model", "build_tiny_model")  # directories get no digest
    assert not list(tmp_path.glob(".*"))


def test_an_unreadable_digest_is_named(tokens):
    sidecar(tokens).write_text("{")
    with pytest.raises(IntegrityError, match=r"cannot read '.*\.sha256\.json', the digest of"):
        verify(tokens)


@pytest.fixture
def snakemake(tokens, monkeypatch) -> SimpleNamespace:
    """The Snakemake object of a generate job reading the tokens (setup_job, which takes over
    the process's logging and stderr, is left out here: tests/unit/jobs/test_io.py runs it)."""
    calls = []
    monkeypatch.setattr(integrity, "setup_job", lambda *args: calls.append(args))
    given = Path("digits/splits/seed0-shots1.parquet")  # no digest: accepted
    given.parent.mkdir(parents=True)
    given.write_bytes(b"split")
    return SimpleNamespace(
        input=[str(given), str(tokens), str(tokens)],
        output=["digits/synthetic/part-0-of-1.json", "digits/model"],
        rule="generate",
        log=["logs/generate.log"],
        threads=2,
        setup=calls,
    )


def test_a_job_checks_its_inputs_and_records_its_outputs(snakemake):
    with job(snakemake):
        Path("digits/synthetic").mkdir(parents=True)
        Path(snakemake.output[0]).write_text("{}")
        Path(snakemake.output[1]).mkdir()
    assert snakemake.setup == [("logs/generate.log", 2)]
    assert verify(snakemake.output[0])
    assert json.loads(sidecar(snakemake.output[0]).read_text())["rule"] == "generate"


def test_a_job_with_a_changed_input_stops_before_its_step(snakemake, tokens):
    _flip(tokens)
    ran = []
    with pytest.raises(IntegrityError, match="rule invert wrote"), job(snakemake):
        ran.append(True)
    assert not ran


def test_a_failed_step_records_nothing(snakemake):
    with pytest.raises(RuntimeError), job(snakemake):
        Path("digits/synthetic").mkdir(parents=True)
        Path(snakemake.output[0]).write_text("half")
        raise RuntimeError("killed")
    assert not sidecar(snakemake.output[0]).exists()


@pytest.mark.parametrize("script", sorted(SCRIPTS.glob("*.py")), ids=lambda p: p.stem)
def test_every_workflow_script_runs_its_step_inside_a_job(script):
    """So no rule skips the checks: the script's statements after its imports are one
    `with job(snakemake):` block."""
    tree = ast.parse(script.read_text())
    body = [node for node in tree.body if not isinstance(node, ast.Import | ast.ImportFrom)]
    body = [node for node in body if not isinstance(node, ast.Expr)]  # the docstring
    assert len(body) == 1 and isinstance(body[0], ast.With), ast.dump(body[0])
    assert ast.unparse(body[0].items[0].context_expr) == "job(snakemake)"
