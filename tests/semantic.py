"""Sampling and scoring for the semantic tests: images made by the workflow's own engine
(`dafusion.stages.generation.Engine`), recognized by the reference digit classifier."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dafusion.data.images import encode_png
from dafusion.data.readers.folders import DIGIT_NAMES
from dafusion.reporting.reference import load_reference, probabilities
from dafusion.settings import GenerationSettings
from dafusion.stages.generation import Engine
from dafusion.stages.models import Components, load_components
from dafusion.training.miniature import RESOLUTION, SHIPPED
from dafusion.training.reference import handwritten_digits

STEPS = 25  # the embedded default's num_inference_steps


def miniature(path=SHIPPED) -> Components:
    return load_components(str(path), torch.device("cpu"), torch.float32)


def sample(
    components: Components,
    sources: np.ndarray,
    prompts: Sequence[str],
    strength: float,
    seed: int = 0,
) -> np.ndarray:
    """One SDEdit image per (source, prompt) at t0 = `strength`, per-image seeds `seed + i`;
    (N, 16, 16, 3) uint8. At t0 = 1 the source is noised away: text-to-image."""
    names = sorted(set(prompts))
    label = {p: i for i, p in enumerate(names)}
    manifest = pd.DataFrame(
        {
            "key": [f"s{i}" for i in range(len(sources))],
            "image": [encode_png(Image.fromarray(s).convert("RGB")) for s in sources],
            "label": [label[p] for p in prompts],
        }
    )
    settings = GenerationSettings(num_inference_steps=STEPS, batch_size=64)
    engine = Engine(
        components, components.scheduler, manifest, dict(enumerate(names)), RESOLUTION, settings
    )
    work = [
        {"row": i, "key": f"s{i}", "variant_seed": seed + i, "strength": strength}
        for i in range(len(sources))
    ]
    out = np.empty((len(sources), RESOLUTION, RESOLUTION, 3), np.uint8)
    for item, image in engine.run(work, seed):
        out[item["row"]] = np.asarray(image.resize((RESOLUTION, RESOLUTION)))
    return out


def blank(n: int) -> np.ndarray:
    """White sources for text-to-image (t0 = 1 noises them away whatever they are)."""
    return np.full((n, RESOLUTION, RESOLUTION), 255, np.uint8)


def photo_prompts(
    per_class: int, template: str = "a photo of a {}"
) -> tuple[list[str], np.ndarray]:
    labels = np.repeat(np.arange(10), per_class)
    return [template.format(DIGIT_NAMES[c]) for c in labels], labels


def recognized(images: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Per class (0-9), the fraction of its images the reference classifier calls it."""
    predicted = probabilities(load_reference(), images).argmax(-1).numpy()
    labels = np.asarray(labels)
    return np.array([(predicted[labels == c] == c).mean() for c in range(10)])


def handwritten(per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` of scikit-learn's handwritten digits per class (the few-shot task's
    images), drawn with `seed`."""
    images, labels = handwritten_digits()
    rng = np.random.default_rng(seed)
    rows = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    )
    return images[rows], labels[rows]


def conditioning(components: Components, per_class: int = 20) -> np.ndarray:
    """Per class, how often text-to-image "a photo of a {name}" is recognized as it."""
    prompts, labels = photo_prompts(per_class)
    return recognized(sample(components, blank(len(prompts)), prompts, 1.0), labels)


def sdedit_rates(
    components: Components, strengths: Sequence[float], per_class: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Handwritten digit c under the prompt of digit (c + 5) % 10, at each t0: how often the
    image is recognized as its source's class, and as the prompt's."""
    sources, labels = handwritten(per_class)
    targets = (labels + 5) % 10
    prompts = [f"a photo of a {DIGIT_NAMES[c]}" for c in targets]
    reference = load_reference()
    kept, moved = [], []
    for strength in strengths:
        predicted = probabilities(reference, sample(components, sources, prompts, strength))
        predicted = predicted.argmax(-1).numpy()
        kept.append((predicted == labels).mean())
        moved.append((predicted == targets).mean())
    return np.array(kept), np.array(moved)


def inversion_rates(
    model,
    tmp_path,
    shots: int,
    steps: int,
    learning_rate: float,
    per_class: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens learned (jointly, as the invert stage does) from `shots` handwritten images a
    class; per class, how often "a photo of a {token}" at t0 = 1 is recognized as it, and
    how often "a photo of a the" (the initializer's word) is. The tokens are saved and
    loaded into a fresh copy of `model`, as a generate job does."""
    from dafusion.data.manifest import class_token
    from dafusion.settings import InversionSettings
    from dafusion.stages.inversion import learn_tokens
    from dafusion.stages.tokens import load_into, save_tokens

    images, labels = handwritten(shots, seed=1)
    settings = InversionSettings(steps=steps, learning_rate=learning_rate)
    result = learn_tokens(
        miniature(model), [Image.fromarray(i).convert("RGB") for i in images], labels.tolist(),
        DIGIT_NAMES, settings, seed=0, resolution=RESOLUTION, progress=False,
    )  # fmt: skip
    save_tokens(tmp_path / "tokens.safetensors", result.tokens, {})
    components = miniature(model)
    load_into(components, tmp_path / "tokens.safetensors")
    learned, targets = photo_prompts(per_class, "a photo of a {}")
    learned = [f"a photo of a {class_token(DIGIT_NAMES[c])}" for c in targets]
    initial = [f"a photo of a {settings.initializer}"] * len(targets)
    blanks = blank(len(targets))
    return (
        recognized(sample(components, blanks, learned, 1.0), targets),
        recognized(sample(components, blanks, initial, 1.0), targets),
    )


def erased_rates(
    components: Components, erased: str, settings, tmp_path
) -> tuple[np.ndarray, pd.DataFrame]:
    """Per class, how often "a photo of a {name}" is recognized as it with `erased`'s name
    erased from the UNet (ESD or UCE, by `settings.method`), and the erasure check's table
    (the erase stage's own measure) for that delta."""
    from dafusion.stages.deltas import DeltaSwitch, save_delta
    from dafusion.stages.erasure import erasure_scores, esd, uce

    prompt = settings.prompt.format(name=erased)
    if settings.method == "uce":
        others = [settings.prompt.format(name=n) for n in DIGIT_NAMES if n != erased]
        tensors = uce(components, [prompt], others, settings)
    else:
        tensors, _ = esd(components, [prompt], settings, RESOLUTION, stream=erased, progress=False)
    path = tmp_path / f"{erased}.safetensors"
    save_delta(path, tensors, torch.float32, {})
    switch = DeltaSwitch(components.unet)
    check = erasure_scores(
        components, switch, {erased: path}, {erased: [erased]}, DIGIT_NAMES, settings, RESOLUTION
    )
    switch.use_file(path)
    try:
        rates = conditioning(components)
    finally:
        switch.restore()
    return rates, check
