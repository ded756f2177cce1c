import ast
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import REPO, relabelled_model

from dafusion.workflow.config import (
    JOB_CHECKS,
    PER_ENTRY,
    SCHEMA,
    ConfigError,
    load_schema,
    validate_config,
)
from dafusion.workflow.machine import Needs, check_machine


def default_config() -> dict:
    return yaml.safe_load((REPO / "config/config.yaml").read_text())


def start_up(config: dict, base_dir: Path | str = ".") -> dict:
    """The config as a run's start-up checks it: validated, then what every target reads
    looked for on this machine."""
    validated = validate_config(config, SCHEMA)
    check_machine(validated, base_dir, Needs())
    return validated


def test_default_config_is_valid_and_defaults_are_filled():
    config = start_up(default_config())
    assert config["results"] == "results"
    assert config["generation"]["shard_size"] == 1000
    assert config["inversion"]["templates"] == "imagenet_small"  # the original code's set
    assert config["datasets"]["digits"]["val_per_class"] is None


def test_paper_values_are_the_defaults():
    """Keys a config leaves out take Table 1's values."""
    config = validate_config(
        {
            "datasets": {"d": {"kind": "digits"}},
            "seeds": [0],
            "examples_per_class": [1],
            "model": {"pretrained": "tiny"},
            "methods": {"baseline": {"kind": "baseline"}},
        },
        SCHEMA,
    )
    assert config["inversion"]["learning_rate"] == 0.0005
    assert config["inversion"]["steps"] == 1000
    assert config["inversion"]["initializer"] == "the"
    assert config["generation"]["guidance_scale"] == 7.5
    assert config["generation"]["num_synthetic"] == 10
    assert config["classifier"]["synthetic_probability"] == 0.5
    assert config["classifier"]["batch_size"] == 32
    assert config["classifier"]["eval_interval"] == 200


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda c: c["datasets"]["digits"].update(kind="mnist"), "datasets.digits.kind"),
        (lambda c: c.update(examples_per_class=[1, -4]), "examples_per_class.1"),
        (lambda c: c["generation"].update(num_synthetic=0), "generation.num_synthetic"),
        (lambda c: c["methods"]["da-fusion"].pop("prompt"), "methods.da-fusion"),
        (lambda c: c.update(sedds=[0]), "<top level>"),
    ],
)
def test_bad_values_name_their_key(change, key):
    config = default_config()
    change(config)
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        start_up(config)


def test_missing_dataset_root_names_the_key(tmp_path):
    config = default_config()
    config["datasets"]["mine"] = {"kind": "imagefolder", "root": str(tmp_path / "nowhere")}
    with pytest.raises(ConfigError, match="datasets.mine.root.*does not exist"):
        start_up(config)
    config["datasets"]["mine"] = {"kind": "imagefolder"}
    with pytest.raises(ConfigError, match="datasets.mine.root"):
        start_up(config)


def test_prompt_with_unknown_placeholder_is_rejected():
    config = default_config()
    config["methods"]["da-fusion"]["prompt"] = "a photo of a {klass}"
    with pytest.raises(ConfigError, match="methods.da-fusion.prompt"):
        start_up(config)


def test_inversion_preset_fills_only_unset_keys():
    config = default_config()
    config["inversion"] = {"preset": "published", "steps": 10}
    inversion = start_up(config)["inversion"]
    assert inversion["num_vectors"] == 4
    assert inversion["initializer"] == "class_name"
    assert inversion["batch_size"] == 8
    assert inversion["steps"] == 10  # set explicitly: the preset does not override it
    config["inversion"] = {"preset": "nonsense"}
    with pytest.raises(ConfigError, match="inversion.preset"):
        start_up(config)


def test_dataset_kinds_come_from_the_reader_registry(tmp_path):
    from dafusion.data.readers import KINDS
    from dafusion.workflow.config import load_schema

    entry = load_schema(SCHEMA)["properties"]["datasets"]["additionalProperties"]
    assert entry["properties"]["kind"]["enum"] == list(KINDS)
    assert [k for k, v in KINDS.items() if not v.needs_root] == ["digits"]
    config = default_config()
    config["datasets"]["mine"] = {"kind": "mnist", "root": str(tmp_path)}
    with pytest.raises(ConfigError, match="datasets.mine.kind': 'mnist' is not one of"):
        start_up(config)


def test_inversion_preset_is_expanded_and_removed():
    config = default_config()
    config["inversion"] = {"preset": "table1"}
    inversion = start_up(config)["inversion"]
    assert "preset" not in inversion and inversion["steps"] == 1000


def test_dataset_options_are_validated_and_defaulted(tmp_path):
    config = default_config()
    config["datasets"]["cal"] = {"kind": "caltech101", "root": str(tmp_path), "classes": 20}
    spec = start_up(config)["datasets"]["cal"]
    assert spec["split_protocol"] == "default"
    assert spec["allow_fewer"] is False and spec["skip_corrupt"] is False
    config["datasets"]["cal"].update(classes=["accordion", "faces easy"])
    config["datasets"]["cal"].update(split_protocol="original-code", allow_fewer=True)
    assert start_up(config)["datasets"]["cal"]["allow_fewer"] is True


@pytest.mark.parametrize(
    ("entry", "key", "message"),
    [
        ({"kind": "coco", "classes": 0}, "classes", ""),
        ({"kind": "coco", "classes": ["dog", "dog"]}, "classes", ""),
        ({"kind": "coco", "split_protocol": "original-code"}, "split_protocol", "applies to"),
        ({"kind": "coco", "split_protocol": "random"}, "split_protocol", ""),
        ({"kind": "caltech101", "label_level": "family"}, "label_level", "only kind"),
        ({"kind": "fgvc_aircraft", "label_level": "model"}, "label_level", ""),
        ({"kind": "pascal", "hf_config": "crop"}, "hf_config", "only kind"),
        ({"kind": "imagenet", "skip_corrupt": "yes"}, "skip_corrupt", ""),
    ],
)
def test_bad_dataset_options_name_their_key(tmp_path, entry, key, message):
    config = default_config()
    config["datasets"]["mine"] = {"root": str(tmp_path), **entry}
    with pytest.raises(ConfigError, match=f"config key 'datasets.mine.{key}': .*{message}"):
        start_up(config)


@pytest.mark.parametrize("kind", ["pascal", "coco", "leafy_spurge", "imagenet"])
def test_every_disk_kind_needs_its_root(kind):
    config = default_config()
    config["datasets"]["mine"] = {"kind": kind}
    with pytest.raises(ConfigError, match=f"datasets.mine.root': kind '{kind}' needs"):
        start_up(config)


def test_the_removed_warm_start_key_says_it_is_gone():
    config = default_config() | {"warm_start": True}
    with pytest.raises(ConfigError, match="'warm_start': the warm-start fork server was removed"):
        start_up(config)


def test_a_moved_key_says_where_it_went():
    config = default_config()
    config["classifier"]["report_split"] = "val"
    with pytest.raises(
        ConfigError, match="'classifier.report_split' is now 'aggregate.report_split'"
    ):
        start_up(config)


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        (lambda c: c["model"].update(device="banana"), "model.device", "does not match"),
        (lambda c: c["classifier"].update(device="gpu0"), "classifier.device", "does not match"),
        (
            lambda c: c["inversion"].update(templates=["a {} of a {}"]),
            "inversion.templates.0",
            "exactly one",
        ),
        (
            lambda c: c["methods"]["da-fusion"].update(prompt="a photo of {name.__class__}"),
            "methods.da-fusion.prompt",
            r"only \{name\} or \{token\}",
        ),
        (
            lambda c: c["methods"]["da-fusion"].update(prompt="a photo of {name.foo}"),
            "methods.da-fusion.prompt",
            r"not \{name.foo\}",
        ),
        (
            lambda c: c["methods"]["real-guidance"].update(dataset_prompts={"cifar": "a {name}"}),
            "methods.real-guidance.dataset_prompts.cifar",
            "does not run on a dataset named 'cifar'",
        ),
        (
            lambda c: c["methods"]["real-guidance"].update(dataset_prompts={"digits": "{nam}"}),
            "methods.real-guidance.dataset_prompts.digits",
            r"only \{name\} or \{token\}",
        ),
        (
            lambda c: c["methods"]["baseline"].update(dataset_prompts={"digits": "a photo"}),
            "methods.baseline.dataset_prompts.digits",
            "a baseline has no prompt",
        ),
        (
            lambda c: c["generation"].update(scheduler="NoSuchScheduler"),
            "generation.scheduler",
            "not a diffusers scheduler class",
        ),
        (
            lambda c: c["generation"].update(scheduler="DPMSolverSDEScheduler"),
            "generation.scheduler",
            "cannot be drawn per image",
        ),
        (
            lambda c: c["erasure"].update(enabled=False),
            "methods.da-fusion-erased.erased",
            "set erasure.enabled to true",
        ),
        (
            lambda c: c["methods"]["baseline"].update(erased=True),
            "methods.baseline.erased",
            "only sdedit methods",
        ),
        # learner: lora learns the class tokens, with a LoRA on the base UNet
        (
            lambda c: c["methods"]["real-guidance"].update(learner="lora"),
            "methods.real-guidance.learner",
            r"uses no \{token\}",
        ),
        (
            lambda c: c["methods"]["baseline"].update(learner="lora"),
            "methods.baseline.learner",
            "a baseline learns nothing",
        ),
        (
            lambda c: c["methods"]["da-fusion-erased"].update(learner="lora"),
            "methods.da-fusion-erased.learner",
            "cannot be combined with erased: true",
        ),
        (lambda c: c.update(lora={"projections": ["to_x"]}), "lora.projections.0", "not one of"),
        (
            lambda c: c["erasure"].update(prompt="all digits"),
            "erasure.prompt",
            r"exactly one \{name\}",
        ),
        (lambda c: c["erasure"].update(method="fmn"), "erasure.method", "is not one of"),
        # issue 30: settings that passed start-up and failed in a job
        (
            lambda c: c["methods"]["real-guidance"].update(mask="object"),
            "methods.real-guidance.mask",
            r"dataset digits \(kind digits\) does not have \(only coco, pascal do\)",
        ),
        (
            lambda c: c["methods"]["real-guidance"].update(generation={"safety_checker": True}),
            "generation.safety_checker",
            "the tiny-digits model has no safety checker",
        ),
        (
            lambda c: c["model"].update(resolution=32),
            "model.resolution",
            "tiny-digits was trained at 16 px and makes no images at 32",
        ),
        (
            lambda c: c["methods"]["real-guidance"].update(generation={"scheduler": "Nope"}),
            "generation.scheduler",
            "not a diffusers scheduler class",
        ),
        (
            lambda c: c["erasure"].update(ddim_steps=1001),
            "erasure.ddim_steps",
            "1001 is above the model's 1000 training steps",
        ),
        (
            lambda c: [
                c["methods"][m].update(figures=[11]) for m in ("real-guidance", "da-fusion")
            ],
            "methods.da-fusion.figures",
            r"\['da-fusion', 'real-guidance'\] labelled 11 share a",
        ),
        (
            lambda c: [
                c["methods"]["da-fusion"].update(figures=[11]),
                c["methods"]["real-guidance"].update(
                    figures=["11-reference"], generation={"num_synthetic": 3}
                ),
            ],
            "methods.da-fusion.figures",
            r"alpha=0.5, M=2\) needs exactly one method labelled '11-reference'",
        ),
    ],
)
def test_settings_that_would_fail_in_a_job_fail_at_start_up(change, key, message):
    """Before Snakemake deletes the outputs of the jobs that would read them."""
    config = default_config()
    change(config)
    with pytest.raises(ConfigError, match=f"config key '{key}': .*{message}"):
        start_up(config)


def test_the_model_is_checked_at_start_up(tmp_path, monkeypatch, tiny_dir):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    config = default_config()
    config["model"]["pretrained"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="'model.pretrained': directory .* does not exist"):
        start_up(config)
    (tmp_path / "not-a-model").mkdir()
    config["model"]["pretrained"] = str(tmp_path / "not-a-model")
    with pytest.raises(ConfigError, match="is not a diffusers model .no model_index.json"):
        start_up(config)
    config["model"]["pretrained"] = "CompVis/stable-diffusion-v1-4"
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache.*hf download"):
        start_up(config)
    repo = tmp_path / "hub/models--CompVis--stable-diffusion-v1-4"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs/main").write_text("abc123")
    (repo / "snapshots/abc123").mkdir(parents=True)
    shutil.copy(Path(tiny_dir, "model_index.json"), repo / "snapshots/abc123")
    with pytest.raises(ConfigError, match="'CompVis/stable-diffusion-v1-4' lacks tokenizer/"):
        start_up(config)  # a half-downloaded cache
    shutil.rmtree(repo / "snapshots/abc123")
    shutil.copytree(tiny_dir, repo / "snapshots/abc123")
    assert start_up(config)["model"]["pretrained"] == config["model"]["pretrained"]


def test_a_local_model_needs_every_component_as_safetensors(tmp_path, tiny_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    config = default_config()
    config["model"]["pretrained"] = str(model)
    start_up(config)
    config["generation"]["safety_checker"] = True
    with pytest.raises(
        ConfigError, match=r"lacks safety_checker/config.json \(generation.safety_checker is on"
    ):
        start_up(config)
    config["generation"]["safety_checker"] = False
    weights = model / "unet/diffusion_pytorch_model.safetensors"
    weights.rename(model / "unet/diffusion_pytorch_model.bin")
    with pytest.raises(
        ConfigError,
        match=r"'model.pretrained': '.*' lacks unet/diffusion_pytorch_model.safetensors; it "
        r"holds only pickle weights \(diffusion_pytorch_model.bin\)",
    ):
        start_up(config)
    (model / "unet/diffusion_pytorch_model.bin").unlink()
    with pytest.raises(ConfigError, match="lacks unet/diffusion_pytorch_model.safetensors; copy"):
        start_up(config)


def test_a_kinds_optional_package_is_named_with_its_extra(tmp_path, monkeypatch):
    import dataclasses

    from dafusion.data import readers

    for kind in ("coco", "leafy_spurge"):
        absent = dataclasses.replace(readers.KINDS[kind], package="no_such_module_here")
        monkeypatch.setitem(readers.KINDS, kind, absent)
    config = default_config()
    config["datasets"] = {"mine": {"kind": "coco", "root": str(tmp_path)}}
    with pytest.raises(
        ConfigError,
        match=r"'datasets.mine.kind': reading .* as coco needs the no_such_module_here package; "
        r"install it with `.venv/bin/pip install -e '.\[coco\]'`",
    ):
        start_up(config)
    config["datasets"] = {"spurge": {"kind": "leafy_spurge", "root": str(tmp_path)}}
    with pytest.raises(ConfigError, match=r"pip install -e '.\[leafy_spurge\]'"):
        start_up(config)
    (tmp_path / "absent").mkdir()  # the plain folder layout reads without the package
    start_up(config)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"datasets": {"digits": {"generation": {"batch_size": 4}}}},
            "'datasets.digits.generation.batch_size': an execution knob cannot differ per entry",
        ),
        (
            {"methods": {"baseline": {"generation": {"num_synthetic": 3}}}},
            "'methods.baseline.generation': a baseline generates no images",
        ),
        (
            {"methods": {"baseline": {"datasets": ["digitz"]}}},
            "'methods.baseline.datasets': no dataset named 'digitz'",
        ),
        (
            {"methods": {"baseline": {"classifier": {"lr": "fast"}}}},
            "'methods.baseline.classifier.lr'",
        ),
    ],
)
def test_overrides_are_checked(change, message):
    config = default_config()
    for section, entries in change.items():
        for name, extra in entries.items():
            config[section][name] = {**config[section][name], **extra}
    with pytest.raises(ConfigError, match=re.escape(message)):
        start_up(config)


def test_overrides_resolve_section_then_dataset_then_method():
    from dafusion.settings import DatasetSettings, GenerationSettings, MethodSettings

    config = start_up(default_config())
    dataset = DatasetSettings(kind="digits", generation={"num_synthetic": 50, "guidance_scale": 3})
    method = MethodSettings(
        kind="sdedit", prompt="a", strengths=[0.5], generation={"num_synthetic": 5}
    )
    settings = GenerationSettings.resolve(
        config["generation"], dataset.generation, method.generation
    )
    assert (settings.num_synthetic, settings.guidance_scale) == (5, 3)
    assert settings.num_inference_steps == config["generation"]["num_inference_steps"]
    assert "generation" not in dataset.result_params() and "figures" not in method.result_params()


def test_a_dataset_prompt_replaces_the_methods_prompt_on_that_dataset_only():
    """The original's Real Guidance on Leafy Spurge: scripts/real_guidance/
    launch_real_guidance=0.5_spurge.sh passes --prompt "a woodland seen from a drone"; its
    other datasets' scripts pass "a photo of a {name}"."""
    from dafusion.settings import MethodSettings

    spurge = "a woodland seen from a drone"
    method = MethodSettings(
        kind="sdedit", prompt="a photo of a {name}", strengths=[0.5],
        dataset_prompts={"leafy_spurge": spurge},
    )  # fmt: skip
    assert method.for_dataset("leafy_spurge").result_params()["prompt"] == spurge
    assert method.for_dataset("pascal").result_params()["prompt"] == "a photo of a {name}"
    assert "dataset_prompts" not in method.result_params()
    assert not method.for_dataset("leafy_spurge").uses_tokens


def test_the_paper_config_follows_the_original_code(tmp_path, backbone_cache):
    """config/paper.yaml resolves to the original code's choices (README, deviations table):
    the metric and selection of plot.py lines 75-95, reported on val; the 27 templates of
    fine_tune.py lines 276-304; Real Guidance's Leafy Spurge prompt of scripts/real_guidance/
    launch_real_guidance=0.5_spurge.sh; mean = std = 0.5 (few_shot_dataset.py lines 34-39);
    Leafy Spurge's flips and 45 degrees (spurge.py lines 72-81); ESD `full`
    (scripts/erase_classes/*.sh)."""
    from dafusion.settings import ClassifierSettings, MethodSettings

    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    for spec in paper["datasets"].values():
        spec["root"] = str(tmp_path)
    paper["model"]["pretrained"] = "tiny"
    config = start_up(paper)
    aggregate = config["aggregate"]
    assert (aggregate["metric"], aggregate["selection"], aggregate["report_split"]) == (
        "mean_class_accuracy", "seed_mean", "val",
    )  # fmt: skip
    assert config["inversion"]["templates"] == "imagenet_small"
    assert not config["inversion"]["scale_lr"] and config["inversion"]["initializer"] == "the"
    woodland = "a woodland seen from a drone"
    for name in ("real-guidance", "real-guidance-erased"):
        method = MethodSettings.from_config(config["methods"][name])
        assert method.for_dataset("leafy_spurge").prompt == woodland
        assert method.for_dataset("pascal").prompt == "a photo of a {name}"
    agnostic = MethodSettings.from_config(config["methods"]["real-guidance-agnostic"])
    assert agnostic.for_dataset("leafy_spurge").prompt == "a photo"
    spurge = ClassifierSettings.resolve(
        config["classifier"], config["datasets"]["leafy_spurge"]["classifier"]
    )
    assert (spurge.vertical_flip, spurge.rotation_degrees) == (True, 45)
    pascal = ClassifierSettings.resolve(
        config["classifier"], config["datasets"]["pascal"].get("classifier", {})
    )
    assert (pascal.vertical_flip, pascal.rotation_degrees, pascal.normalization) == (
        False, 15, "original",
    )  # fmt: skip
    assert config["erasure"]["train_method"] == "full" and config["erasure"]["sampler"] == "trained"


def test_a_strength_that_runs_no_denoising_step_stops_at_start_up():
    """img2img runs floor(steps x t0) steps: t0 = 0.01 with 25 steps would return the image
    unchanged, and the generate job would fail only after its old outputs were deleted. A
    dataset's own steps count: 0.02 passes with 50 steps, not with the 25 of an override."""
    config = default_config()
    config["generation"]["num_inference_steps"] = 50
    config["methods"]["real-guidance"]["strengths"] = [0.02]
    start_up(config)
    config["datasets"]["digits"]["generation"] = {"num_inference_steps": 25}
    message = (
        "config key 'methods.real-guidance.strengths': t0 = 0.02 with "
        "generation.num_inference_steps 25 (dataset digits) runs no denoising step"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        start_up(config)


def test_backbone_weights_must_be_on_this_machine(tmp_path, monkeypatch):
    """Where train jobs would fail to load them: the default ResNet-50 repo not in the cache
    (the message gives the download command), a weights file that does not exist; a file that
    exists, random weights, or the small CNN need nothing."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    config = default_config()
    config["classifier"]["backbone"] = "resnet50"
    with pytest.raises(ConfigError, match=r"hf download timm/resnet50\.tv2_in1k"):
        start_up(config)
    config["classifier"]["weights"] = "missing.safetensors"
    with pytest.raises(ConfigError, match="'classifier.weights': file .*missing.safetensors"):
        start_up(config, tmp_path)
    (tmp_path / "missing.safetensors").write_bytes(b"")
    start_up(config, tmp_path)
    config["classifier"].update(weights=None, pretrained=False)
    start_up(config)
    config["classifier"]["pretrained"] = True
    config["methods"]["baseline"]["classifier"] = {"backbone": "deit"}
    with pytest.raises(ConfigError, match="deit weights 'facebook/deit-base-distilled"):
        start_up(config)


def test_an_empty_initializer_stops_at_start_up():
    config = default_config()
    config["inversion"]["initializer"] = " "
    with pytest.raises(ConfigError, match="config key 'inversion.initializer'"):
        start_up(config)


def test_the_models_own_scheduler_and_training_steps_are_checked_at_start_up(tmp_path, tiny_dir):
    """generation.scheduler 'default' is the model's own scheduler, which must draw its noise
    per image; ESD's DDIM steps are at most the model's training steps (issue 30)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    scheduler = model / "scheduler/scheduler_config.json"
    own = json.loads(scheduler.read_text())
    scheduler.write_text(json.dumps({**own, "num_train_timesteps": 40}))
    config = default_config()
    config["model"]["pretrained"] = str(model)
    config["erasure"]["ddim_steps"] = 40
    start_up(config)
    config["erasure"]["ddim_steps"] = 41
    with pytest.raises(ConfigError, match="'erasure.ddim_steps': 41 is above the model's 40"):
        start_up(config)
    config["erasure"]["ddim_steps"] = 40
    scheduler.write_text(json.dumps({**own, "_class_name": "DPMSolverSDEScheduler"}))
    with pytest.raises(
        ConfigError, match=r"'generation.scheduler': 'default' \(DPMSolverSDEScheduler\) is sto"
    ):
        start_up(config)
    config["generation"]["scheduler"] = "fast"
    start_up(config)


def test_the_tiny_models_schedulers_are_the_ones_start_up_assumes(tiny_dir):
    from dafusion.stages.tiny import build_tiny_pipeline
    from dafusion.workflow.machine import TINY_SCHEDULERS

    own = json.loads((Path(tiny_dir) / "scheduler/scheduler_config.json").read_text())
    assert {key: own[key] for key in TINY_SCHEDULERS["tiny"]} == TINY_SCHEDULERS["tiny"]
    sdxl = build_tiny_pipeline(family="sdxl").scheduler
    expected = TINY_SCHEDULERS["tiny-sdxl"]
    assert type(sdxl).__name__ == expected["_class_name"]
    assert sdxl.config.num_train_timesteps == expected["num_train_timesteps"]


# Issue 30's rule: a job whose settings pass the start-up checks never fails on a setting
# alone. Every error the library raises whose message names a setting is caught at start-up
# (START_UP: words of the job's message -> a change to the default config that start-up
# refuses, naming the key), or is a JobCheck of dafusion.workflow.config.JOB_CHECKS, which says why
# only a job can check it. config.py, schema_types.py, machine.py, plan.py and sets.py run at
# start-up and estimate.py outside the workflow: they are not scanned.
START_UP = {
    "labelled 11 share a": (
        lambda c: [c["methods"][m].update(figures=[11]) for m in ("real-guidance", "da-fusion")],
        "methods.da-fusion.figures",
    ),
    "on different datasets": (
        lambda c: [
            c["datasets"].update(
                other={"kind": "digits", "classifier": {"synthetic_probability": 0.3}}
            ),
            c["methods"]["da-fusion"].update(figures=[11]),
        ],
        "methods.da-fusion.figures",
    ),
    "needs exactly one method labelled '11-reference'": (
        lambda c: [
            c["methods"]["da-fusion"].update(figures=[11]),
            c["methods"]["real-guidance"].update(figures=["11-reference"]),
            c["methods"]["real-guidance"].update(generation={"num_synthetic": 3}),
        ],
        "methods.da-fusion.figures",
    ),
    "unknown backbone": (lambda c: c["classifier"].update(backbone="vgg"), "classifier.backbone"),
    "ImageNet ResNet-50 weights not found offline": (
        lambda c: c["classifier"].update(backbone="resnet50", weights="someone/not-cached"),
        "classifier.weights",
    ),
    "DeiT weights": (
        lambda c: c["classifier"].update(backbone="deit", weights="someone/not-cached"),
        "classifier.weights",
    ),
    "'erasure.train_method': unknown": (
        lambda c: c["erasure"].update(train_method="most"),
        "erasure.train_method",
    ),
    "'erasure.sampler': unknown": (lambda c: c["erasure"].update(sampler="x"), "erasure.sampler"),
    "'erasure.precision': unknown": (
        lambda c: c["erasure"].update(precision="float16"),
        "erasure.precision",
    ),
    "above the model's": (lambda c: c["erasure"].update(ddim_steps=1001), "erasure.ddim_steps"),
    "runs no denoising step": (
        lambda c: c["methods"]["real-guidance"].update(strengths=[0.001]),
        "methods.real-guidance.strengths",
    ),
    "needs a mask_path for every image": (
        lambda c: c["methods"]["real-guidance"].update(mask="object"),
        "methods.real-guidance.mask",
    ),
    "is stochastic but its step takes no generator": (
        lambda c: c["generation"].update(scheduler="DPMSolverSDEScheduler"),
        "generation.scheduler",
    ),
    "is not a diffusers scheduler class": (
        lambda c: c["generation"].update(scheduler="Nope"),
        "generation.scheduler",
    ),
    "has no safety_checker/feature_extractor": (
        lambda c: c["generation"].update(safety_checker=True),
        "generation.safety_checker",
    ),
    "generation.parts must be at least 1": (
        lambda c: c["generation"].update(parts=0),
        "generation.parts",
    ),
    "split_protocol 'original-code' applies to": (
        lambda c: c["datasets"]["digits"].update(split_protocol="original-code"),
        "datasets.digits.split_protocol",
    ),
    "holds no VAE": (lambda c: c["model"].update(vae=str(REPO / "config")), "model.vae"),
    "does not exist; give 'checkpoint', 'float32'": (
        lambda c: c["model"].update(vae="./no-such-vae"),
        "model.vae",
    ),
    "is 'checkpoint', 'float32', a local folder or a hub id": (
        lambda c: c["model"].update(vae="someone/not-cached"),
        "model.vae",
    ),
    "-channel latents and the UNet of": (
        lambda c: c["model"].update(vae=str(_vae_folder(latent_channels=8))),
        "model.vae",
    ),
    # A method's filter (issue 41): its criteria, before the set is scored.
    "is a fraction in (0, 1]": (
        lambda c: c["methods"]["da-fusion"].update(filter={"by": "clip", "keep_top": 0}),
        "methods.da-fusion.filter",
    ),
    "scores, not those of": (
        lambda c: c["methods"]["da-fusion"].update(filter={"by": "clip", "min_confidence": 0.5}),
        "methods.da-fusion.filter",
    ),
    "must lie in [": (
        lambda c: c["methods"]["da-fusion"].update(filter={"by": "change", "max_change": 2}),
        "methods.da-fusion.filter",
    ),
    "is above": (
        lambda c: c["methods"]["da-fusion"].update(
            filter={"by": "classifier", "min_confidence": 0.6, "max_confidence": 0.4}
        ),
        "methods.da-fusion.filter",
    ),
}


def _vae_folder(**config) -> Path:
    """A VAE's files as start-up looks at them: its config.json and a weights file."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="vae-"))
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **config}))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    return folder


# Errors raised while the workflow starts are start-up checks by definition.
STARTS_UP = "workflow"


def _message(call: ast.Call) -> str | None:
    """An error's message as written: f-string fields as {}, and the string constants
    inside them (a conditional fix) after it."""
    node = call.args[0] if call.args else None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if not isinstance(node, ast.JoinedStr):
        return None
    parts = [v.value if isinstance(v, ast.Constant) else "{}" for v in node.values]
    inner = [
        n.value
        for v in node.values
        if isinstance(v, ast.FormattedValue)
        for n in ast.walk(v.value)
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]
    return " | ".join(["".join(parts), *inner])


def _names_a_setting(message: str, schema: dict) -> bool:
    """Whether a message names a config key: 'config key', a dotted key (generation.parts),
    an entry key followed by ':' (classes:) or any key with an underscore
    (examples_per_class)."""
    top = schema["properties"]
    entries = {k for name in PER_ENTRY for k in top[name]["additionalProperties"]["properties"]}
    dotted = {
        f"{name}.{key}"
        for name, node in top.items()
        for key in [*node.get("properties", {}), *(entries if name in PER_ENTRY else ())]
    }
    keys = set(top) | entries | {k for node in top.values() for k in node.get("properties", {})}
    patterns = [r"config key '"]
    patterns += [rf"(?<![\w.]){re.escape(key)}\b" for key in dotted]
    patterns += [rf"(?<![\w.]){re.escape(key)}:" for key in entries]
    patterns += [rf"(?<![\w.]){re.escape(key)}\b" for key in keys if "_" in key]
    return any(re.search(pattern, message) for pattern in patterns)


def _setting_errors() -> list[tuple[str, str]]:
    """(file:line, message) of every error the library's jobs can raise naming a setting."""
    schema = load_schema(SCHEMA)
    root = REPO / "src/dafusion"
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == STARTS_UP:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            message = _message(node) if name.endswith(("Error", "Exception")) else None
            if message and _names_a_setting(message, schema):
                found.append((f"{path.relative_to(root)}:{node.lineno}", message))
    return found


def test_every_setting_a_job_can_fail_on_is_checked_at_start_up_or_registered():
    """A new job-time error that names a setting fails here until a start-up check catches
    it (and START_UP says how) or JOB_CHECKS records why only a job can."""
    errors = _setting_errors()
    assert len(errors) >= len(START_UP) + len(JOB_CHECKS)
    unchecked = [
        f"{where}: {message}"
        for where, message in errors
        if not any(words in message for words in START_UP)
        and not any(check.error in message for check in JOB_CHECKS)
    ]
    assert unchecked == [], "neither checked at start-up nor in config.JOB_CHECKS"
    messages = [message for _, message in errors]
    stale = [
        w for w in [*START_UP, *(c.error for c in JOB_CHECKS)] if not any(w in m for m in messages)
    ]
    assert stale == [], "no such job-time error any more"


@pytest.mark.parametrize("words", START_UP)
def test_a_setting_a_job_would_fail_on_stops_at_start_up(words):
    change, key = START_UP[words]
    config = default_config()
    change(config)
    with pytest.raises(ConfigError, match=f"config key '{re.escape(key)}"):
        start_up(config)


def _from_the_command_line(**sections) -> dict:
    """The default config overlaid by `--config` values as Snakemake hands them over: the
    scalars inside a nested value (and a top-level `false`) as strings."""
    config = default_config()
    for section, value in sections.items():
        config[section] = {**config[section], **value} if isinstance(value, dict) else value
    return config


def test_command_line_strings_take_the_schemas_types():
    config = start_up(
        _from_the_command_line(
            model={"resolution": "16"},  # 'model={resolution: 16}'
            seeds=["0", "1"],  # 'seeds=[0, 1]'
            examples_per_class=["1", "all"],
            generation={"guidance_scale": "7.5", "safety_checker": "FALSE"},
            inversion={"flip": "False"},
            datasets={"digits": {"kind": "digits", "val_per_class": "null"}},
        )
    )
    assert config["model"]["resolution"] == 16
    assert config["seeds"] == [0, 1] and config["examples_per_class"] == [1, "all"]
    assert config["generation"]["guidance_scale"] == 7.5
    assert config["generation"]["safety_checker"] is False
    assert config["inversion"]["flip"] is False
    assert config["datasets"]["digits"]["val_per_class"] is None
    assert config["results"] == "results"  # a string stays a string


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"model": {"resolution": "large"}}, "'model.resolution': 'large' is not of type integer"),
        ({"seeds": ["0", "one"]}, "'seeds.1': 'one' is not of type integer"),
        ({"inversion": {"flip": "yes"}}, "'inversion.flip': 'yes' is not of type boolean"),
        (
            {"datasets": {"digits": {"kind": "digits", "val_per_class": "few"}}},
            "'datasets.digits.val_per_class': 'few' is not of type integer or null",
        ),
    ],
)
def test_a_command_line_value_of_the_wrong_type_names_key_and_type(sections, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        start_up(_from_the_command_line(**sections))


# What start-up looks for on this machine: what the targets read, every problem at once
# (issue 36: the offline augment command stopped for backbone weights that `synthetic`
# never loads).


@pytest.mark.parametrize(
    ("targets", "rules", "expected"),
    [
        ((), (), Needs()),  # the default target, all
        (("all",), (), Needs()),
        (("synthetic",), (), Needs(backbones=False, clip=False)),
        (("tokens", "erasure"), (), Needs(backbones=False, clip=False)),
        (("out/digits/runs/baseline/seed0-shots1.parquet",), (), Needs()),
        (
            ("out/digits/synthetic/abc/seed0-shots1/index.parquet",),
            (),
            Needs(backbones=False, clip=False),
        ),
        (
            ("out/digits/splits/seed0-shots1.parquet",),
            (),
            Needs(model=False, backbones=False, clip=False),
        ),
        (("out/model/tiny-16px",), (), Needs(False, False, False, False)),
        (("elsewhere/file.txt",), (), Needs()),  # not a result this knows: everything
        (("synthetic", "out/tables/summary.csv"), (), Needs()),
        ((), ("generate",), Needs(data=False, backbones=False, clip=False)),
        ((), ("train",), Needs(data=False, model=False, clip=False)),
        ((), ("few_shot_split",), Needs(False, False, False, False)),
        # the scorers (issue 41): the classifier scorer rebuilds the baseline's backbone
        ((), ("score_classifier",), Needs(data=False, model=False, clip=False)),
        ((), ("score_clip",), Needs(False, False, False, True)),
        ((), ("score_change",), Needs(False, False, False, False)),
        (("out/digits/synthetic/abc/seed0-shots1/scores-clip.parquet",), (), Needs()),
    ],
)
def test_start_up_looks_for_what_the_targets_read(targets, rules, expected):
    assert Needs.of_targets(targets, rules, "out") == expected


def test_everything_missing_is_named_in_one_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    config = validate_config(
        {
            "datasets": {"photos": {"kind": "imagefolder", "root": "photos"}},
            "seeds": [0],
            "examples_per_class": [1],
            "model": {"pretrained": "someone/not-cached"},
            "methods": {"baseline": {"kind": "baseline"}},
            "classifier": {"backbone": "resnet50"},
        },
        SCHEMA,
    )
    with pytest.raises(ConfigError) as everything:
        check_machine(config, tmp_path, Needs())
    message = str(everything.value)
    assert message.startswith("3 things this run reads are missing:")
    for key in ("datasets.photos.root", "classifier.weights", "model.pretrained"):
        assert f"config key '{key}'" in message
    with pytest.raises(ConfigError) as synthetic:
        check_machine(config, tmp_path, Needs(backbones=False))
    assert "classifier.weights" not in str(synthetic.value)
    (tmp_path / "photos").mkdir()
    check_machine(config, tmp_path, Needs(model=False, backbones=False))  # nothing missing


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"examples_per_class": [0]},
            "config key 'examples_per_class.0': 0 is not an integer >= 1 or 'all'",
        ),
        (
            {"datasets": {"d": {"kind": "digits", "classes": [1]}}},
            "config key 'datasets.d.classes': [1] is not null or an integer >= 1 or a list "
            "(1 is not of type 'string' at item 0)",
        ),
    ],
)
def test_a_value_no_alternative_takes_is_told_what_the_alternatives_are(change, message):
    """Issue 36: `examples_per_class: [0]` got "not valid under any of the given schemas"."""
    config = {
        "datasets": {"d": {"kind": "digits"}},
        "seeds": [0],
        "examples_per_class": [1],
        "model": {"pretrained": "tiny"},
        "methods": {"baseline": {"kind": "baseline"}},
        **change,
    }
    with pytest.raises(ConfigError) as error:
        validate_config(config, SCHEMA)
    assert str(error.value) == message


def test_the_paper_config_splits_flowers_and_draws_figure_11_as_the_original():
    """config/paper.yaml as the original code: Flowers102 halved per seed from all its images
    (semantic_aug/datasets/flowers102.py lines 141-154, setid.mat unread), and Figure 11 on
    PASCAL alone, one factor at a time: M 5 and 20 at alpha 0.5
    (scripts/num_synthetic/launch_*_pascal-{5,20}.sh), alpha 0.3 and 0.7 at M 10
    (scripts/synthetic_prob/launch_*_pascal-{0.3,0.7}.sh), and the alpha 0.5, M 10 centre,
    DA-Fusion (label 11) against class-agnostic Real Guidance ("a photo", 11-reference)."""
    import pandas as pd

    from dafusion.reporting.aggregate import grid_references
    from dafusion.workflow.estimate import plan_of

    plan = plan_of([REPO / "config/paper.yaml"])
    assert plan.per_seed_split("flowers102")
    assert plan.datasets["flowers102"].split_protocol == "original-code"
    layout = [
        row for row in plan.report.method_layout() if {"11", "11-reference"} & set(row["figures"])
    ]
    assert {row["dataset"] for row in layout} == {"pascal"}
    cells = {(0.5, 5), (0.5, 10), (0.5, 20), (0.3, 10), (0.7, 10)}
    for label, prompt in (("11", "a photo of a {token}"), ("11-reference", "a photo")):
        rows = [row for row in layout if row["figures"] == [label]]
        assert {(r["synthetic_probability"], r["num_synthetic"]) for r in rows} == cells
        assert {plan.methods[r["method"]].prompt for r in rows} == {prompt}
    pairs = grid_references(pd.DataFrame(plan.report.method_layout()), plan.aggregate.baseline)
    assert pairs == {
        f"da-fusion-{cell}": f"real-guidance-agnostic-{cell}"
        for cell in ("a50-m5", "a50-m10", "a50-m20", "a30-m10", "a70-m10")
    }


def _classifier_jobs(config: dict) -> dict:
    """Each (dataset, method)'s classifier settings, as its train jobs get them."""
    from dafusion.workflow.config import job_settings

    return {(d, m): s for d, m, s in job_settings(config, "classifier")}


def test_the_paper_path_runs_the_original_classifier_protocol():
    """The original calls model.train() before its training steps (train_classifier.py
    l. 171) and normalizes with mean = std = 0.5 (few_shot_dataset.py l. 34-39): every train
    job of config/paper.yaml, and a config that says nothing, runs that protocol."""
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    config = validate_config(paper, SCHEMA)
    bare = validate_config({**default_config(), "classifier": {"backbone": "resnet50"}}, SCHEMA)
    for settings in [*_classifier_jobs(config).values(), *_classifier_jobs(bare).values()]:
        assert (settings.bn_mode, settings.normalization) == ("train", "original")


def test_the_clean_classifier_protocol_is_one_setting_away():
    """`protocol: clean` sets both keys (eval-mode BatchNorm fed ImageNet-normalized inputs),
    in the section or in one dataset's or method's overrides; a key set beside it wins."""
    config = default_config()
    config["classifier"] = {"backbone": "resnet50", "protocol": "clean"}
    clean = validate_config(config, SCHEMA)
    assert "protocol" not in clean["classifier"]
    for settings in _classifier_jobs(clean).values():
        assert (settings.bn_mode, settings.normalization) == ("eval", "backbone")
    config = default_config()
    config["classifier"] = {"backbone": "resnet50"}
    config["methods"]["da-fusion"]["classifier"] = {"protocol": "clean", "feature_cache": True}
    jobs = _classifier_jobs(validate_config(config, SCHEMA))
    assert (jobs["digits", "da-fusion"].bn_mode, jobs["digits", "baseline"].bn_mode) == (
        "eval", "train",
    )  # fmt: skip
    config["methods"]["da-fusion"]["classifier"] = {"protocol": "clean", "bn_mode": "train"}
    jobs = _classifier_jobs(validate_config(config, SCHEMA))
    assert (jobs["digits", "da-fusion"].bn_mode, jobs["digits", "da-fusion"].normalization) == (
        "train", "backbone",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("classifier", "override", "message"),
    [
        # eval-mode BatchNorm on ImageNet statistics fed inputs at mean = std = 0.5
        ({"bn_mode": "eval"}, {}, "config key 'classifier.bn_mode': eval keeps resnet50's"),
        (
            {"protocol": "clean"},
            {"normalization": "original"},
            "but methods.da-fusion.classifier.normalization: original feeds",
        ),
        # cached features of a BatchNorm that normalizes each batch with its own statistics
        (
            {"feature_cache": True},
            {},
            "config key 'classifier.feature_cache': with classifier.bn_mode: train",
        ),
        (
            {"protocol": "clean"},
            {"bn_mode": "train", "feature_cache": True},
            "'methods.da-fusion.classifier.feature_cache': with methods.da-fusion.classifier",
        ),
    ],
)
def test_a_mix_of_the_two_classifier_protocols_stops_at_start_up(classifier, override, message):
    """Neither the original code nor a standard setup runs eval-mode BatchNorm on ImageNet
    statistics with inputs about 0.45x the scale they expect; refused before any job, naming
    the key and where it was set."""
    config = default_config()
    config["classifier"] = {"backbone": "resnet50", **classifier}
    config["methods"]["da-fusion"]["classifier"] = override
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(config, SCHEMA)


def test_the_protocol_check_concerns_pretrained_batchnorm_backbones_only():
    """small-cnn trains end to end (the embedded default: its protocol is unchanged), DeiT has
    no BatchNorm, and random ResNet-50 weights have no ImageNet statistics to mismatch."""
    for classifier in (
        {"backbone": "small-cnn", "bn_mode": "eval"},
        {"backbone": "deit", "bn_mode": "eval"},
        {"backbone": "deit", "feature_cache": True},
        {"backbone": "resnet50", "pretrained": False, "bn_mode": "eval"},
    ):
        validate_config({**default_config(), "classifier": classifier}, SCHEMA)


def test_the_models_family_is_read_from_its_files_and_checked_at_start_up(
    tmp_path, tiny_dir, tiny_sdxl_dir
):
    """Stable Diffusion 1.x and 2.x (v-prediction too) and SDXL base are driven; an SDXL
    without its second text encoder, an SDXL refiner and any other pipeline class are
    refused before any job, naming what the checkpoint is."""
    from dafusion.stages.families import model_family

    v = relabelled_model(
        tiny_dir, tmp_path / "sd2", "StableDiffusionPipeline", prediction_type="v_prediction"
    )
    assert model_family(v).prediction_type == "v_prediction"
    assert model_family(tiny_dir).name == "stable-diffusion"
    config = default_config()
    config["model"]["pretrained"] = str(v)
    start_up(config)
    config["model"]["pretrained"] = tiny_sdxl_dir
    start_up(config)
    assert model_family(tiny_sdxl_dir).name == "sdxl"
    assert model_family(tiny_sdxl_dir).force_zeros_for_empty_prompt
    config["model"]["pretrained"] = str(
        relabelled_model(tiny_dir, tmp_path / "xl", "StableDiffusionXLPipeline")
    )
    with pytest.raises(ConfigError, match=r"'model.pretrained': .* lacks tokenizer_2/vocab.json"):
        start_up(config)
    refiner = relabelled_model(tiny_dir, tmp_path / "refiner", "StableDiffusionXLImg2ImgPipeline")
    index = json.loads((refiner / "model_index.json").read_text())
    (refiner / "model_index.json").write_text(
        json.dumps({**index, "requires_aesthetics_score": True})
    )
    config["model"]["pretrained"] = str(refiner)
    with pytest.raises(ConfigError, match=r"is an SDXL refiner .* drive SDXL base"):
        start_up(config)
    config["model"]["pretrained"] = str(
        relabelled_model(tiny_dir, tmp_path / "k", "KandinskyPipeline")
    )
    with pytest.raises(
        ConfigError,
        match=r"KandinskyPipeline checkpoint \(components: scheduler, text_encoder, tokenizer, "
        r"unet, vae\), not a model family",
    ):
        start_up(config)
    config["model"]["pretrained"] = str(
        relabelled_model(
            tiny_dir, tmp_path / "s", "StableDiffusionPipeline", prediction_type="sample"
        )
    )
    with pytest.raises(ConfigError, match="its scheduler predicts 'sample'"):
        start_up(config)


def test_another_vae_is_checked_at_start_up(tmp_path, monkeypatch, tiny_dir):
    """`model.vae` set to a folder or hub id: its config and safetensors weights are looked
    for before any job, in the error naming the key; 'checkpoint' and 'float32' need nothing."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    config = default_config()
    config["model"]["pretrained"] = tiny_dir
    for value in ("checkpoint", "float32", tiny_dir, str(Path(tiny_dir, "vae"))):
        config["model"]["vae"] = value
        assert start_up(config)["model"]["vae"] == value
    config["model"]["vae"] = "madebyollin/sdxl-vae-fp16-fix"
    with pytest.raises(ConfigError, match="'model.vae'.*hf download madebyollin/sdxl-vae-fp16"):
        start_up(config)
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled/config.json").write_text("{}")
    (tmp_path / "pickled/diffusion_pytorch_model.bin").write_bytes(b"")
    config["model"]["vae"] = str(tmp_path / "pickled")
    with pytest.raises(ConfigError, match="'model.vae'.*holds no VAE.*pickle weights"):
        start_up(config)
    assert validate_config(default_config(), SCHEMA)["model"]["vae"] == "checkpoint"


def test_esd_layer_methods_stop_at_start_up_on_sdxl(tmp_path, tiny_sdxl_dir):
    """xlayer and selflayer count Stable Diffusion 1.x/2.x blocks: on an SDXL model (a
    directory, or the embedded tiny-sdxl) they stop before any job; xattn-strict, the ESD
    authors' SDXL esd-x-strict, starts."""
    config = default_config()
    config["model"]["pretrained"] = tiny_sdxl_dir
    config["erasure"].update(enabled=True, method="esd", train_method="xattn-strict")
    start_up(config)
    for pretrained in (tiny_sdxl_dir, "tiny-sdxl"):
        config["model"]["pretrained"] = pretrained
        for method in ("xlayer", "selflayer"):
            config["erasure"]["train_method"] = method
            with pytest.raises(
                ConfigError, match=rf"'erasure.train_method': {method} names blocks of Stable"
            ):
                start_up(config)
    config["erasure"]["method"] = "uce"  # UCE reads no train_method
    start_up(config)


def test_a_lora_learner_starts_on_every_family(tmp_path, tiny_dir, tiny_sdxl_dir):
    """learner: lora drives Stable Diffusion 1.x/2.x and SDXL alike: a lora method starts on
    each (a directory, or the embedded tiny models)."""
    config = default_config()
    config["methods"]["da-fusion"]["learner"] = "lora"
    v = relabelled_model(
        tiny_dir, tmp_path / "sd2", "StableDiffusionPipeline", prediction_type="v_prediction"
    )
    for pretrained in (tiny_dir, str(v), "tiny", tiny_sdxl_dir, "tiny-sdxl"):
        config["model"]["pretrained"] = pretrained
        assert start_up(config)["methods"]["da-fusion"]["learner"] == "lora"


# Filters (issue 41): a method's filter, and what its scorer reads, stop a run at start-up
# when no job could apply them.

CLASSIFIER_FILTER = {"by": "classifier", "min_confidence": 0.5}


def _filtered(config: dict, filter: dict = CLASSIFIER_FILTER, **scoring) -> None:
    config["methods"]["da-fusion"]["filter"] = filter
    config.setdefault("scoring", {}).update(scoring)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["methods"]["baseline"].update(filter=CLASSIFIER_FILTER),
            "'methods.baseline.filter': a baseline draws no synthetic images; remove filter",
        ),
        (
            lambda c: _filtered(c, {"by": "classifier"}),
            "'methods.da-fusion.filter': a filter by classifier needs a criterion",
        ),
        (
            lambda c: _filtered(c, {"by": "clip", "min_score": 0.2}),
            "'methods.da-fusion.filter': Additional properties are not allowed",
        ),
        (lambda c: _filtered(c, {"min_change": 0.1}), "'methods.da-fusion.filter': 'by'"),
        (
            lambda c: _filtered(c, classifier_method="real-guidance"),
            "'scoring.classifier_method': 'real-guidance' is not a baseline-kind method of "
            "this config (method da-fusion filters by classifier); name one whose run scores "
            "the images (baseline)",
        ),
        (
            lambda c: [
                c["datasets"].update(other={"kind": "digits"}),
                c["methods"]["baseline"].update(datasets=["digits"]),
                _filtered(c),
            ],
            "'scoring.classifier_method': 'baseline' does not run on dataset other",
        ),
        (
            lambda c: _filtered(c, {"by": "clip", "keep_top": 0.7}, clip_prompt="a photo"),
            "'scoring.clip_prompt': 'a photo' must hold exactly one {name}",
        ),
    ],
)
def test_a_filter_no_job_could_apply_stops_at_start_up(change, message):
    config = default_config()
    change(config)
    with pytest.raises(ConfigError, match=re.escape(f"config key {message}")):
        validate_config(config, SCHEMA)


def test_a_filter_and_the_scoring_section_validate_with_their_defaults():
    config = default_config()
    _filtered(config, {"by": "change", "min_change": 0.02, "keep_top": 0.5})
    config["methods"]["real-guidance"]["filter"] = None  # null: no filter
    validated = validate_config(config, SCHEMA)
    assert validated["methods"]["da-fusion"]["filter"] == {
        "by": "change", "min_change": 0.02, "keep_top": 0.5, "require_top1": False,
    }  # fmt: skip
    assert validated["scoring"] == {
        "classifier_method": "baseline", "clip_model": "openai/clip-vit-base-patch32",
        "clip_prompt": "a photo of a {name}", "batch_size": 64, "device": "auto",
    }  # fmt: skip
    # a filter by clip or change reads no baseline run: any classifier_method will do
    _filtered(config, {"by": "clip", "keep_top": 0.7}, classifier_method="nobody")
    validate_config(config, SCHEMA)


def test_the_clip_model_of_a_clip_filter_is_looked_for_at_start_up(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    only_clip = Needs(data=False, model=False, backbones=False)
    config = default_config()
    _filtered(config, {"by": "clip", "keep_top": 0.7}, clip_model="someone/not-cached")
    validated = validate_config(config, SCHEMA)
    with pytest.raises(ConfigError, match="config key 'scoring.clip_model'.*`hf download "):
        check_machine(validated, tmp_path, only_clip)
    check_machine(validated, tmp_path, Needs(data=False, model=False, backbones=False, clip=False))
    folder = tmp_path / "clip"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (folder / name).write_text("{}")
    _filtered(config, {"by": "clip", "keep_top": 0.7}, clip_model=str(folder))
    validated = validate_config(config, SCHEMA)
    with pytest.raises(ConfigError, match="lacks preprocessor_config.json"):
        check_machine(validated, tmp_path, only_clip)
    (folder / "preprocessor_config.json").write_text("{}")
    check_machine(validated, tmp_path, only_clip)
    # no method filters by clip: nothing is looked for
    _filtered(config, CLASSIFIER_FILTER, clip_model="someone/not-cached")
    check_machine(validate_config(config, SCHEMA), tmp_path, only_clip)
