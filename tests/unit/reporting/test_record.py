import yaml
from helpers import REPO

import dafusion
from dafusion.provenance import library_versions
from dafusion.reporting.record import (
    OUTSIDE,
    config_text,
    portable_path,
    random_weights,
    resolved_config,
    write_config,
)
from dafusion.settings import SECTIONS
from dafusion.workflow.config import SCHEMA, readable, validate_config


def test_only_the_embedded_tiny_model_has_random_weights():
    assert random_weights("tiny")
    # a trained miniature, Stable Diffusion and a local directory were trained
    for pretrained in ("tiny-digits", "CompVis/stable-diffusion-v1-4", "models/tiny"):
        assert not random_weights(pretrained), pretrained


def test_portable_paths_name_no_place_on_the_machine(tmp_path):
    base = tmp_path / "checkout"
    assert portable_path(str(base / "data" / "voc"), base) == "data/voc"
    assert portable_path(str(base), base) == "."
    assert portable_path(str(base / "a" / ".." / "b"), base) == "b"
    assert portable_path(str(tmp_path / "elsewhere" / "VOCdevkit"), base) == (
        f"{OUTSIDE}/VOCdevkit"
    )
    assert portable_path("data/voc", base) == "data/voc"
    assert portable_path("CompVis/stable-diffusion-v1-4", base) == "CompVis/stable-diffusion-v1-4"


def test_the_resolved_config_has_defaults_no_knobs_and_no_absolute_path(tmp_path):
    workdir = tmp_path / "work"
    outside = tmp_path / "data" / "photos"
    outside.mkdir(parents=True)
    for name in ("a", "b"):
        (outside / name).mkdir()
    config = validate_config(
        {
            "results": str(workdir / "results"),
            "datasets": {
                "photos": {"kind": "imagefolder", "root": str(outside), "track_files": False},
            },
            "seeds": [0],
            "examples_per_class": [1],
            "model": {"pretrained": "tiny", "device": "cpu"},
            "methods": {"baseline": {"kind": "baseline"}},
            "generation": {"batch_size": 3, "parts": 2},
        },
        SCHEMA,
    )
    resolved = resolved_config(config, workdir)
    assert resolved["results"] == "results"
    assert resolved["datasets"]["photos"]["root"] == f"{OUTSIDE}/photos"
    assert "track_files" not in resolved["datasets"]["photos"]
    assert resolved["model"] == {
        "pretrained": "tiny",
        "dtype": "float32",
        "resolution": 512,
        "vae": "checkpoint",
    }
    assert resolved["inversion"]["steps"] == 1000  # a default, filled in
    for section, settings in SECTIONS.items():
        entries = (
            resolved[section].values()
            if section in ("datasets", "methods")
            else [resolved[section]]
        )
        for entry in entries:
            assert not set(settings.knob_keys()) & set(entry), section
    text = config_text(resolved)
    assert str(tmp_path) not in text
    assert yaml.safe_load(text) == resolved
    assert list(yaml.safe_load(text)) == list(config)  # the config's order
    path = tmp_path / "results" / "config.yaml"
    write_config(path, resolved)
    assert path.read_text(encoding="utf-8") == text
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]


def test_library_versions_name_each_library():
    versions = library_versions(("pandas", "no-such-library-here"))
    assert list(versions) == ["dafusion", "pandas", "no-such-library-here"]
    declared = (REPO / "src/dafusion/VERSION").read_text().strip()
    assert versions["dafusion"] == dafusion.__version__ == declared
    assert versions["pandas"].split(".")[0].isdigit()
    assert versions["no-such-library-here"] == "not installed"


def test_the_resolved_config_reads_back_as_a_config(tmp_path):
    """docs/outputs.md: results/config.yaml runs again with --configfile. Defaults of keys
    only other dataset kinds read (image_size for imagefolder, label_level and hf_config for
    digits) are left out: validation refuses them for this kind."""
    config = validate_config(
        {
            "datasets": {
                "digits": {"kind": "digits"},
                "photos": {"kind": "imagefolder", "root": str(tmp_path)},
            },
            "seeds": [0],
            "examples_per_class": [1],
            "model": {"pretrained": "tiny"},
            "methods": {"baseline": {"kind": "baseline"}},
        },
        SCHEMA,
    )
    resolved = resolved_config(readable(config), tmp_path)  # as common.smk records it
    assert "label_level" not in resolved["datasets"]["digits"]
    assert "image_size" in resolved["datasets"]["digits"]
    assert "image_size" not in resolved["datasets"]["photos"]
    again = validate_config(yaml.safe_load(config_text(resolved)), SCHEMA)
    assert resolved_config(readable(again), tmp_path) == resolved
