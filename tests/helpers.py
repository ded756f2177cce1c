"""What several test modules share (their fixtures are in conftest.py): Snakemake on a copy of
the workflow and the jobs a dry run would run, the dataset kinds' files in their on-disk
formats, and a page opened in Chromium.

Test modules import from here, never from one another.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from packaging.version import Version
from PIL import Image
from scipy.io import savemat
from snakemake.utils import update_config

from dafusion.workflow.config import SCHEMA, validate_config
from dafusion.workflow.plan import Plan

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

# The embedded default, reduced: the tiny model, two shot counts, every kind of method.
REDUCED = {
    "results": "results",
    "datasets": {"digits": {"kind": "digits", "image_size": 32, "val_per_class": 4}},
    "seeds": [0],
    "examples_per_class": [1, 2],
    "model": {"pretrained": "tiny", "resolution": 32},
    "inversion": {"steps": 2, "batch_size": 2},
    "methods": {
        "baseline": {"kind": "baseline"},
        "real-guidance": {"kind": "sdedit", "prompt": "a photo of a {name}", "strengths": [0.5]},
        "da-fusion": {
            "kind": "sdedit",
            "prompt": "a photo of a {token}",
            "strengths": [0.25, 0.5, 0.75, 1.0],
        },
        "da-fusion-erased": {
            "kind": "sdedit",
            "prompt": "a photo of a {token}",
            "strengths": [0.5],
            "erased": True,
        },
    },
    "erasure": {"enabled": True, "method": "esd", "iterations": 2, "ddim_steps": 4},
    "generation": {"num_synthetic": 2, "num_inference_steps": 4, "batch_size": 8},
    "classifier": {
        "backbone": "small-cnn",
        "image_size": 32,
        "steps": 10,
        "eval_interval": 5,
        "lr": 0.001,
    },
    "aggregate": {"novelty": {"common": ["digits"]}},
}


# Snakemake -------------------------------------------------------------------------------


def snakemake(
    workdir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [*SNAKEMAKE, *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def copy_workflow(dest: Path) -> Path:
    """The workflow's files as a user's checkout has them, without results."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", dest / "Snakefile")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("workflow", "profiles", "src", "envs"):
        shutil.copytree(REPO / folder, dest / folder, ignore=ignore)
    return dest


def write_config(workdir: Path, name: str, config: dict) -> str:
    path = workdir / "config" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return f"config/{name}"


# The jobs a dry run would run, from Snakemake's structured log events (never its text
# output): Snakemake 9 hands them to logger plugins (tests/plugins), Snakemake 8 to a
# --log-handler-script (tests/plugins/snakemake8_jobs.py).
PLUGINS = Path(__file__).resolve().parent / "plugins"
SNAKEMAKE_9 = Version(importlib.metadata.version("snakemake")) >= Version("9")


def dry_run_jobs(workdir: Path, *args: str) -> list[dict]:
    """Every job `snakemake -n ARGS` would run, as Snakemake describes it: a dict with `rule`,
    `output` (a list, in the rule's order), `input`, `wildcards`, `resources`, `reason`...
    Fails with Snakemake's output if the dry run fails. (Not with `--quiet rules`, which makes
    Snakemake 8 report no job.)"""
    assert not {"-q", "--quiet"} & set(args), "under --quiet, Snakemake 8 reports no job"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "jobs.jsonl"
        if SNAKEMAKE_9:
            path_entries = [str(PLUGINS), *filter(None, [os.environ.get("PYTHONPATH")])]
            logger = ["--logger", "dafusion-tests", "--logger-dafusion-tests-jobs", str(path)]
            env = {"PYTHONPATH": os.pathsep.join(path_entries)}
        else:
            logger = ["--log-handler-script", str(PLUGINS / "snakemake8_jobs.py")]
            env = {"DAFUSION_TEST_JOBS": str(path)}
        result = snakemake(workdir, "-n", *logger, *args, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        text = path.read_text() if path.exists() else ""
    lines = [json.loads(line) for line in text.splitlines()]
    if SNAKEMAKE_9:  # the plugin's last line: Snakemake closed it, so every job is listed
        assert lines and lines.pop() == {"closed": True}, result.stderr[-3000:]
    # Snakemake 8 calls a handler script once per time it was registered: once per job, by id.
    return list({job["jobid"]: job for job in lines}.values())


def workflow_plan(*configs: dict) -> Plan:
    """The plan of config files merged as Snakemake merges `--configfile a b`."""
    merged: dict = {}
    for config in configs:
        update_config(merged, copy.deepcopy(config))
    return Plan.from_config(validate_config(merged, SCHEMA))


def set_labels(*configs: dict) -> dict[str, str]:
    """Each synthetic set's folder name -> its methods joined by '+' (SyntheticSets.by_name)."""
    plan = workflow_plan(*configs)
    return {
        name: "+".join(methods)
        for dataset in plan.datasets
        for name, methods in plan.sets.by_name(dataset).items()
    }


def label_sets(jobs: set[tuple[str, str]], labels: dict[str, str]) -> set[tuple[str, str]]:
    """Jobs with each set's folder shown by its methods' names (`set_labels`)."""
    pattern = re.compile(r"/synthetic/([0-9a-f]+)/")
    return {(rule, pattern.sub(lambda m: f"/synthetic/{labels[m[1]]}/", out)) for rule, out in jobs}


def scheduled(workdir: Path, *args: str) -> set[tuple[str, str]]:
    """(rule, first output) of every job `snakemake -n ARGS` would run; a job without output
    (the `all` target) is (rule, '')."""
    return {(job["rule"], (job["output"] or [""])[0]) for job in dry_run_jobs(workdir, *args)}


def photo_folder(root: Path) -> None:
    """Class folders of odd sizes and modes; one class has a single image."""
    rng = np.random.default_rng(0)

    def noise(*shape):
        return rng.integers(0, 255, shape, dtype=np.uint8)

    images = {
        "cat/a.jpg": Image.fromarray(noise(23, 37, 3)),
        "cat/b.png": Image.fromarray(noise(40, 30)),  # grayscale
        "dog/c.png": Image.fromarray(noise(17, 50, 4), "RGBA"),
        "dog/d.gif": Image.fromarray(noise(33, 33, 3)).convert("P"),
        "dog/e.png": Image.fromarray(noise(21, 19).astype(np.uint16) * 250),  # 16-bit
        "red_fox/f.jpg": Image.fromarray(noise(20, 26, 3)).convert("CMYK"),
    }
    for name, image in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / name)


# The dataset kinds' files, in their exact on-disk formats (fixtures: conftest.py) -----------


def write_image(path: Path, color=(120, 60, 30), size=(16, 16), fmt: str | None = None) -> None:
    """An image file; `fmt` for a suffix Pillow does not map to its format (`.JPE`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


def write_heic(path: Path, color=(120, 60, 30), size=(16, 16)) -> None:
    """A lossless HEIC photo, a phone's default format, written through pillow-heif's own
    API: what reads it back is the library's registration, not the test's."""
    import pillow_heif

    path.parent.mkdir(parents=True, exist_ok=True)
    pillow_heif.from_pillow(Image.new("RGB", size, color)).save(path, quality=-1)


def voc_palette() -> list[int]:
    """VOC's color map: the bits of the index spread over R, G and B."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def palette_png(path: Path, indices: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.frombytes("P", indices.shape[::-1], indices.astype(np.uint8).tobytes())
    image.putpalette(voc_palette())
    image.save(path)


DOG, CAT, PERSON = 12, 8, 15  # VOC class indices


def voc_image(root: Path, image_id: str, objects: list[tuple[int, slice, slice]]) -> None:
    """objects: (class index, rows, cols); instance i + 1 each, with a void border."""
    instances = np.zeros((16, 16), np.uint8)
    classes = np.zeros((16, 16), np.uint8)
    for i, (cls, rows, cols) in enumerate(objects):
        grown = (
            slice(max(rows.start - 1, 0), rows.stop + 1),
            slice(max(cols.start - 1, 0), cols.stop + 1),
        )
        instances[grown] = classes[grown] = 255
        instances[rows, cols], classes[rows, cols] = i + 1, cls
    palette_png(root / "SegmentationObject" / f"{image_id}.png", instances)
    palette_png(root / "SegmentationClass" / f"{image_id}.png", classes)
    write_image(root / "JPEGImages" / f"{image_id}.jpg")


def rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode()}


def coco_split(root: Path, name: str, images: dict[int, list[dict]]) -> None:
    entries, annotations = [], []
    for image_id, anns in images.items():
        file_name = f"{image_id:012d}.jpg"
        write_image(root / name / file_name)
        entries.append({"id": image_id, "file_name": file_name, "height": 16, "width": 16})
        for ann in anns:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0, **ann}
            )
    categories = [{"id": 1, "name": "person"}, {"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    instances = {"images": entries, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{name}.json").write_text(json.dumps(instances))


def polygon(category: int, x0: int, y0: int, side: int) -> dict:
    x1, y1 = x0 + side, y0 + side
    return {
        "category_id": category,
        "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
        "area": float(side * side),
        "bbox": [x0, y0, side, side],
    }


CARS = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"]


def cars_annotations(path: Path, folder: Path, labels: list[int]) -> None:
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    records = np.zeros((1, len(labels)), dtype=[(f, "O") for f in fields])
    for i, label in enumerate(labels):
        fname = f"{i + 1:05d}.jpg"
        write_image(folder / fname, (40 * label, 0, 0))
        records[0, i] = (1, 1, 15, 15, label, fname)
    savemat(path, {"annotations": records})


def spurge_images(root: Path, layout: dict[str, int]) -> None:
    """Leafy Spurge as plain folders: `count` images in each folder of `layout`."""
    for folder, count in layout.items():
        for i in range(count):
            write_image(root / folder / f"{Path(folder).name}_{i}.png", (0, 20 * i, 0))


# Chromium ----------------------------------------------------------------------------------
# Open an HTML file in the system's headless Chromium (driven by Playwright) and report what
# a reader would see: which images decoded, and any console or page errors. Playwright only
# drives the browser: it uses the Chromium on PATH (Debian's `chromium`), so nothing is
# downloaded (never run `playwright install`).

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
BROWSER_TIMEOUT_MS = 30_000
NO_CHROMIUM = "chromium is not installed (apt-get install chromium); the browser check did not run"

IMAGE_STATES = """images => images.map(image => ({
    alt: image.alt, natural_width: image.naturalWidth, complete: image.complete
}))"""


def chromium_path() -> str | None:
    """The first Chromium on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def render(
    html: Path, selectors: dict[str, str] | None = None, screenshot: Path | None = None
) -> dict:
    """Load `html` and return its images' states, the errors logged while loading and, per
    name in `selectors`, the rendered text (innerText) of each element the CSS selector
    matches; `screenshot`: also save the whole page there as a PNG."""
    from playwright.sync_api import sync_playwright  # here: chromium_path() needs no Playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError(f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)})")
    console_errors: list[str] = []
    page_errors: list[str] = []
    with sync_playwright() as playwright:
        # Playwright starts Chromium with --no-sandbox by default, which running as root needs.
        browser = playwright.chromium.launch(executable_path=executable, timeout=BROWSER_TIMEOUT_MS)
        try:
            page = browser.new_page()

            def on_console(message) -> None:
                if message.type == "error":
                    console_errors.append(message.text)

            page.on("console", on_console)
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            # "load" waits for every <img> in the document, so the states below are final.
            page.goto(Path(html).resolve().as_uri(), wait_until="load", timeout=BROWSER_TIMEOUT_MS)
            images = page.eval_on_selector_all("img", IMAGE_STATES)
            texts = {
                name: page.eval_on_selector_all(selector, "nodes => nodes.map(n => n.innerText)")
                for name, selector in (selectors or {}).items()
            }
            if screenshot is not None:
                page.set_viewport_size({"width": 1100, "height": 900})
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {
        "images": images,
        "texts": texts,
        "console_errors": console_errors,
        "page_errors": page_errors,
    }


# A synthetic set made as the workflow makes it ------------------------------------------


def make_set(split: str, out_dir: Path, model, method, settings, seed: int = 0, **inputs) -> Path:
    """A set of one generate part and its gather (model_dir=, tokens_path=, erasure_path= as
    `dafusion.pipeline.generate` takes them): the set's index path."""
    from dafusion import pipeline

    out_dir.mkdir(parents=True, exist_ok=True)
    part = out_dir / "part-0-of-1.json"
    pipeline.generate(
        split, model, "set", method, settings, seed=seed, part=0, parts=1, output=str(part),
        **inputs,
    )  # fmt: skip
    index = out_dir / "index.parquet"
    pipeline.gather_synthetic(
        split, {}, method, settings, seed=seed, parts=[str(part)], output=str(index)
    )
    part.unlink()
    return index


def relabelled_model(
    tiny_dir: str, folder: Path, pipeline: str = "StableDiffusionPipeline", **scheduler
) -> Path:
    """A copy of the tiny model's files relabelled as another pipeline class, or with other
    scheduler settings (`prediction_type="v_prediction"`: Stable Diffusion 2.x at 768 px)."""
    shutil.copytree(tiny_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": pipeline}))
    config = folder / "scheduler/scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **scheduler}))
    return folder


def tiny_clip(folder: Path) -> Path:
    """A random CLIP of two small layers per tower, with the tiny model's BPE tokenizer and
    a 32-pixel image processor, saved in `folder` as transformers saves one (safetensors):
    the clip scorer's model in the workflow's tests."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from dafusion.stages.tiny import build_tokenizer

    (folder / "bpe").mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(folder / "bpe")
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
             "num_attention_heads": 4}  # fmt: skip
    text = {
        **tower, "vocab_size": len(tokenizer), "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }  # fmt: skip
    vision = {**tower, "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    model = folder / "clip"
    CLIPModel(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    ).save_pretrained(model)
    tokenizer.save_pretrained(model)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(model)
    return model
