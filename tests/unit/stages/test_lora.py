"""The LoRA learner (`learner: lora`): its adapter is diffusers', its images are diffusers',
it resumes exactly, and it changes nothing but the LoRA and the token rows."""

import io

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_set
from PIL import Image
from safetensors.torch import load_file

from dafusion import pipeline
from dafusion.data.datasets import few_shot
from dafusion.data.images import encode_png, load_image
from dafusion.data.manifest import class_names
from dafusion.data.shards import read_images
from dafusion.jobs.checkpoint import Checkpoint
from dafusion.settings import (
    GenerationSettings,
    InversionSettings,
    LoraSettings,
    MethodSettings,
    ModelSettings,
)
from dafusion.stages import lora_learner
from dafusion.stages.lora import ADAPTER_FILE, adapter_state
from dafusion.stages.lora_learner import learn_lora

# A few steps with large learning rates: the LoRA moves far enough to change the images.
INVERSION = InversionSettings(batch_size=1, learning_rate=1e-2, checkpoint_every=2)
LORA = LoraSettings(rank=4, steps=4, learning_rate=5e-2)


@pytest.fixture(scope="module")
def split(digits, tmp_path_factory):
    """Two classes, one image each: the manifest file and its images."""
    pool = digits[0]
    manifest = few_shot(pool[pool["label"] < 2], seed=0, shots=1).reset_index(drop=True)
    path = tmp_path_factory.mktemp("split") / "split.parquet"
    manifest.to_parquet(path)
    return str(path), manifest, [load_image(r) for r in manifest.to_dict("records")]


@pytest.fixture(scope="module")
def learned(tiny_dir, split, tmp_path_factory):
    """A lora job's outputs on the tiny model: adapter folder, tokens file, loss table."""
    out = tmp_path_factory.mktemp("lora")
    model = ModelSettings(pretrained="tiny", resolution=32, device="cpu")
    pipeline.lora(
        split[0], model, INVERSION, LORA, seed=0, adapter_dir=str(out / "seed0-shots1"),
        tokens_path=str(out / "seed0-shots1.safetensors"),
        loss_path=str(out / "seed0-shots1-loss.parquet"), model_dir=tiny_dir,
    )  # fmt: skip
    return out


def _fresh(tiny_dir):
    from dafusion.stages.models import load_components

    return load_components(tiny_dir, torch.device("cpu"), torch.float32)


def test_the_job_writes_a_diffusers_adapter_tokens_and_inversions_loss_table(learned, tiny_dir):
    from diffusers import StableDiffusionPipeline

    assert sorted(p.name for p in learned.iterdir()) == [
        "seed0-shots1",
        "seed0-shots1-loss.parquet",
        "seed0-shots1.safetensors",
    ]  # the checkpoint is removed once the job is done
    assert [p.name for p in (learned / "seed0-shots1").iterdir()] == [ADAPTER_FILE]
    curves = pd.read_parquet(learned / "seed0-shots1-loss.parquet")
    assert list(curves.columns) == ["step", "class_name", "token", "loss"]  # as invert's
    assert len(curves) == LORA.steps * 2 and set(curves["token"]) == {"<zero>", "<one>"}
    assert set(load_file(str(learned / "seed0-shots1.safetensors"))) == {"<zero>", "<one>"}
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, use_safetensors=True)
    pipe.load_lora_weights(str(learned / "seed0-shots1"))
    saved = load_file(str(learned / "seed0-shots1" / ADAPTER_FILE))
    assert all(k.startswith("unet.") for k in saved) and len(saved) == 2 * 4 * 2 * 4
    # Every projection of every attn1 and attn2 got its LoRA, with the saved weights.
    loaded = {n: p for n, p in pipe.unet.named_parameters() if "lora_" in n}
    assert len(loaded) == len(saved)
    for name, value in saved.items():
        if ".lora.up." in name:
            peft = name.removeprefix("unet.").replace(".lora.up.", ".lora_B.default_0.")
            torch.testing.assert_close(loaded[peft], value)
    assert any(v.abs().max() > 0 for k, v in saved.items() if ".lora.up." in k)  # it learned


def test_diffusers_img2img_with_the_adapter_and_tokens_gives_the_engines_images(
    learned, tiny_dir, split, tmp_path
):
    """Faithfulness: a lora method's synthetic images are what diffusers' img2img gives with
    `load_lora_weights(folder)` and `load_textual_inversion`, within one uint8 level."""
    from diffusers import StableDiffusionImg2ImgPipeline

    path, manifest, images = split
    model = ModelSettings(pretrained="tiny", resolution=32, device="cpu")
    method = MethodSettings(
        kind="sdedit", prompt="a photo of a {token}", strengths=[0.5, 1.0], learner="lora"
    )
    settings = GenerationSettings(num_synthetic=2, num_inference_steps=6, batch_size=4)
    tokens = str(learned / "seed0-shots1.safetensors")
    inputs = {"model_dir": tiny_dir, "tokens_path": tokens}
    index = make_set(
        path, tmp_path / "lora", model, method, settings, lora_path=str(learned / "seed0-shots1"),
        **inputs,
    )  # fmt: skip
    plain = make_set(path, tmp_path / "plain", model, method, settings, **inputs)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_dir, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(learned / "seed0-shots1"))
    for token, rows in load_file(tokens).items():
        pipe.load_textual_inversion({token: rows}, token=token)
    sources = {r["key"]: im for r, im in zip(manifest.to_dict("records"), images, strict=True)}
    ours, without = read_images(index), read_images(plain)
    rows = pd.read_parquet(index).to_dict("records")
    assert len(rows) == 4
    for row in rows:
        expected = pipe(
            prompt=method.prompt.format(token=f"<{row['class_name']}>"),
            image=sources[row["source_key"]], strength=row["strength"],
            guidance_scale=settings.guidance_scale, num_inference_steps=6,
            generator=torch.Generator().manual_seed(int(row["seed"])),
        ).images[0]  # fmt: skip
        image = np.asarray(Image.open(io.BytesIO(ours[row["key"]][0])), dtype=np.int16)
        assert np.abs(image - np.asarray(expected, dtype=np.int16)).max() <= 1
        other = np.asarray(Image.open(io.BytesIO(without[row["key"]][0])), dtype=np.int16)
        assert np.abs(image - other).max() > 8  # the LoRA changed the images


def test_a_killed_job_resumes_to_the_same_tokens_and_lora(tiny_dir, split, tmp_path, monkeypatch):
    _, manifest, images = split
    labels, names = manifest["label"].tolist(), class_names(manifest)

    def run(checkpoint=None):
        return learn_lora(
            _fresh(tiny_dir), images, labels, names, INVERSION, LORA, seed=3, resolution=32,
            progress=False, checkpoint=checkpoint,
        )  # fmt: skip

    whole = run()

    class Killed(Exception):
        pass

    steps = []
    step = lora_learner._LoraTrainer.step

    def counted(self, draws):
        if len(steps) == kill_at:
            raise Killed
        steps.append(len(steps))
        return step(self, draws)

    monkeypatch.setattr(lora_learner._LoraTrainer, "step", counted)
    checkpoint = Checkpoint(tmp_path / "ckpt.safetensors", fingerprint="job")
    kill_at = 3  # killed in step 4, after the checkpoint of step 2
    with pytest.raises(Killed):
        run(checkpoint)
    assert checkpoint.path.exists()
    steps.clear()
    kill_at = None
    resumed = run(checkpoint)
    assert len(steps) == 2  # steps 3 and 4: restarted after the checkpoint at step 2
    for token in whole.tokens:
        torch.testing.assert_close(resumed.tokens[token], whole.tokens[token], atol=1e-6, rtol=0)
    torch.testing.assert_close(resumed.losses, whole.losses, atol=1e-6, rtol=0)
    assert resumed.adapter.keys() == whole.adapter.keys()
    for key, value in whole.adapter.items():
        torch.testing.assert_close(resumed.adapter[key], value, atol=1e-6, rtol=0)


def test_only_the_lora_and_the_token_rows_change(tiny_dir, split):
    _, manifest, images = split
    components = _fresh(tiny_dir)
    before = {
        part: {k: v.clone() for k, v in getattr(components, part).state_dict().items()}
        for part in ("unet", "vae", "text_encoder")
    }
    alpha = LORA.replace(alpha=2 * LORA.rank)  # scale 2, folded into the saved up matrices
    result = learn_lora(
        components, images, manifest["label"].tolist(), class_names(manifest), INVERSION,
        alpha, seed=0, resolution=32, progress=False,
    )  # fmt: skip
    for part, state in before.items():
        after = getattr(components, part).state_dict()
        assert after.keys() == state.keys(), part  # the adapter is removed again
        for key, value in state.items():
            assert torch.equal(after[key], value), f"{part}.{key}"
    the = components.text_encoder.get_input_embeddings().weight[
        components.tokenizer("the", add_special_tokens=False).input_ids[0]
    ]
    for rows in result.tokens.values():
        assert not torch.allclose(rows[0], the)  # moved away from the initializer
    ups = [v for k, v in result.adapter.items() if ".lora.up." in k]
    assert ups and all(v.abs().max() > 0 for v in ups)


def test_alpha_is_folded_into_the_saved_up_matrices(tiny_dir):
    from dafusion.stages.lora import add_lora

    unet = _fresh(tiny_dir).unet
    add_lora(unet, LoraSettings(rank=4, alpha=12))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.fill_(0.5)
    saved = adapter_state(unet, LoraSettings(rank=4, alpha=12))
    ups = [v for k, v in saved.items() if ".lora.up." in k]
    assert ups and all(torch.equal(v, torch.full_like(v, 0.5 * 12.0 / 4)) for v in ups)


# SDXL -------------------------------------------------------------------------------------

# The two sources' sizes (height, width): SDXL conditions each image on its own.
SDXL_SOURCES = [(40, 48), (24, 60)]


@pytest.fixture(scope="module")
def sdxl_split(digits, tmp_path_factory):
    """Two classes, one image each, of the sizes of SDXL_SOURCES: the manifest file and its
    images."""
    pool = digits[0]
    manifest = few_shot(pool[pool["label"] < 2], seed=0, shots=1).reset_index(drop=True)
    images = [
        load_image(r).resize((w, h), Image.BILINEAR)
        for r, (h, w) in zip(manifest.to_dict("records"), SDXL_SOURCES, strict=True)
    ]
    manifest["image"] = [encode_png(im) for im in images]
    path = tmp_path_factory.mktemp("sdxl-split") / "split.parquet"
    manifest.to_parquet(path)
    return str(path), manifest, [load_image(r) for r in manifest.to_dict("records")]


SDXL = ModelSettings(pretrained="tiny-sdxl", resolution=32, device="cpu")


@pytest.fixture(scope="module")
def sdxl_learned(tiny_sdxl_dir, sdxl_split, tmp_path_factory):
    """A lora job's outputs on the tiny SDXL: adapter folder, tokens file, loss table."""
    out = tmp_path_factory.mktemp("sdxl-lora")
    pipeline.lora(
        sdxl_split[0], SDXL, INVERSION, LORA, seed=0, adapter_dir=str(out / "seed0-shots1"),
        tokens_path=str(out / "seed0-shots1.safetensors"),
        loss_path=str(out / "seed0-shots1-loss.parquet"), model_dir=tiny_sdxl_dir,
    )  # fmt: skip
    return out


def _load_tokens_into_both_encoders(pipe, path):
    """A split's SDXL tokens file (`clip_l/<token>`, `clip_g/<token>`) into diffusers'
    two text encoders with `load_textual_inversion`."""
    encoders = {
        "clip_l": (pipe.text_encoder, pipe.tokenizer),
        "clip_g": (pipe.text_encoder_2, pipe.tokenizer_2),
    }
    for key, rows in load_file(str(path)).items():
        name, token = key.split("/")
        encoder, tokenizer = encoders[name]
        pipe.load_textual_inversion(rows, token=token, text_encoder=encoder, tokenizer=tokenizer)


def test_sdxl_the_job_writes_an_adapter_that_the_sdxl_pipeline_loads(sdxl_learned, tiny_sdxl_dir):
    """On SDXL the adapter is saved as diffusers' train_dreambooth_lora_sdxl.py saves it
    (`StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=...)`) and loads
    with `StableDiffusionXLPipeline.load_lora_weights(folder)`; the tokens file holds both
    encoders' rows, as an SDXL invert job's."""
    from diffusers import StableDiffusionXLPipeline

    assert sorted(p.name for p in sdxl_learned.iterdir()) == [
        "seed0-shots1",
        "seed0-shots1-loss.parquet",
        "seed0-shots1.safetensors",
    ]
    assert [p.name for p in (sdxl_learned / "seed0-shots1").iterdir()] == [ADAPTER_FILE]
    curves = pd.read_parquet(sdxl_learned / "seed0-shots1-loss.parquet")
    assert len(curves) == LORA.steps * 2 and set(curves["token"]) == {"<zero>", "<one>"}
    assert set(load_file(str(sdxl_learned / "seed0-shots1.safetensors"))) == {
        "clip_l/<zero>", "clip_l/<one>", "clip_g/<zero>", "clip_g/<one>",
    }  # fmt: skip
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir, use_safetensors=True)
    # Every attention of SDXL's UNet (each block's attn1 and attn2) gets a LoRA on its four
    # projections: a down and an up matrix each.
    attentions = [n for n, _ in pipe.unet.named_modules() if n.endswith((".attn1", ".attn2"))]
    pipe.load_lora_weights(str(sdxl_learned / "seed0-shots1"))
    saved = load_file(str(sdxl_learned / "seed0-shots1" / ADAPTER_FILE))
    assert saved and all(k.startswith("unet.") for k in saved)  # the UNet's LoRA only
    assert attentions and len(saved) == len(attentions) * 4 * 2
    loaded = {n: p for n, p in pipe.unet.named_parameters() if "lora_" in n}
    assert len(loaded) == len(saved)
    for name, value in saved.items():
        peft = name.removeprefix("unet.")
        peft = peft.replace(".lora.up.", ".lora_B.default_0.").replace(
            ".lora.down.", ".lora_A.default_0."
        )
        torch.testing.assert_close(loaded[peft], value)
    assert any(v.abs().max() > 0 for k, v in saved.items() if ".lora.up." in k)  # it learned


def test_sdxl_diffusers_img2img_with_the_adapter_and_tokens_gives_the_engines_images(
    sdxl_learned, tiny_sdxl_dir, sdxl_split, tmp_path
):
    """Faithfulness on SDXL: a lora method's synthetic images are what diffusers'
    `StableDiffusionXLImg2ImgPipeline` gives with `load_lora_weights(folder)` and the tokens
    loaded into both text encoders, called per image with its source's `original_size`,
    within one uint8 level."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    path, manifest, images = sdxl_split
    method = MethodSettings(
        kind="sdedit", prompt="a photo of a {token}", strengths=[0.5, 1.0], learner="lora"
    )
    settings = GenerationSettings(
        num_synthetic=2, num_inference_steps=6, batch_size=4, resize_to_source=False
    )
    tokens = sdxl_learned / "seed0-shots1.safetensors"
    inputs = {"model_dir": tiny_sdxl_dir, "tokens_path": str(tokens)}
    index = make_set(
        path, tmp_path / "lora", SDXL, method, settings,
        lora_path=str(sdxl_learned / "seed0-shots1"), **inputs,
    )  # fmt: skip
    plain = make_set(path, tmp_path / "plain", SDXL, method, settings, **inputs)
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        tiny_sdxl_dir, use_safetensors=True, add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(sdxl_learned / "seed0-shots1"))
    _load_tokens_into_both_encoders(pipe, tokens)
    sources = {r["key"]: im for r, im in zip(manifest.to_dict("records"), images, strict=True)}
    ours, without = read_images(index), read_images(plain)
    rows = pd.read_parquet(index).to_dict("records")
    assert len(rows) == 4
    for row in rows:
        source = sources[row["source_key"]]
        expected = pipe(
            prompt=method.prompt.format(token=f"<{row['class_name']}>"),
            # The engine's input: the source resized to the model's side (bilinear).
            image=source.resize((32, 32), Image.BILINEAR), strength=row["strength"],
            guidance_scale=settings.guidance_scale, num_inference_steps=6,
            original_size=source.size[::-1], target_size=(32, 32),
            generator=torch.Generator().manual_seed(int(row["seed"])),
        ).images[0]  # fmt: skip
        image = np.asarray(Image.open(io.BytesIO(ours[row["key"]][0])), dtype=np.int16)
        assert np.abs(image - np.asarray(expected, dtype=np.int16)).max() <= 1
        other = np.asarray(Image.open(io.BytesIO(without[row["key"]][0])), dtype=np.int16)
        assert np.abs(image - other).max() > 8  # the LoRA changed the images


def test_sdxl_a_killed_job_resumes_to_the_same_tokens_and_lora(
    tiny_sdxl_dir, sdxl_split, tmp_path, monkeypatch
):
    _, manifest, images = sdxl_split
    labels, names = manifest["label"].tolist(), class_names(manifest)

    def run(checkpoint=None):
        return learn_lora(
            _fresh(tiny_sdxl_dir), images, labels, names, INVERSION, LORA, seed=3,
            resolution=32, progress=False, checkpoint=checkpoint,
        )  # fmt: skip

    whole = run()

    class Killed(Exception):
        pass

    steps = []
    step = lora_learner._LoraTrainer.step

    def counted(self, draws):
        if len(steps) == kill_at:
            raise Killed
        steps.append(len(steps))
        return step(self, draws)

    monkeypatch.setattr(lora_learner._LoraTrainer, "step", counted)
    checkpoint = Checkpoint(tmp_path / "ckpt.safetensors", fingerprint="job")
    kill_at = 3  # killed in step 4, after the checkpoint of step 2
    with pytest.raises(Killed):
        run(checkpoint)
    assert checkpoint.path.exists()
    steps.clear()
    kill_at = None
    resumed = run(checkpoint)
    assert len(steps) == 2  # steps 3 and 4: restarted after the checkpoint at step 2
    assert len(whole.encoders) == len(resumed.encoders) == 2  # both text encoders' rows
    for ours, theirs in zip(resumed.encoders, whole.encoders, strict=True):
        assert ours.keys() == theirs.keys()
        for token, rows in theirs.items():
            torch.testing.assert_close(ours[token], rows, atol=1e-6, rtol=0)
    torch.testing.assert_close(resumed.losses, whole.losses, atol=1e-6, rtol=0)
    assert resumed.adapter.keys() == whole.adapter.keys()
    for key, value in whole.adapter.items():
        torch.testing.assert_close(resumed.adapter[key], value, atol=1e-6, rtol=0)


def test_sdxl_only_the_lora_and_both_encoders_token_rows_change(tiny_sdxl_dir, sdxl_split):
    _, manifest, images = sdxl_split
    components = _fresh(tiny_sdxl_dir)
    parts = ("unet", "vae", "text_encoder", "text_encoder_2")
    before = {
        part: {k: v.clone() for k, v in getattr(components, part).state_dict().items()}
        for part in parts
    }
    result = learn_lora(
        components, images, manifest["label"].tolist(), class_names(manifest), INVERSION,
        LORA, seed=0, resolution=32, progress=False,
    )  # fmt: skip
    for part, state in before.items():
        after = getattr(components, part).state_dict()
        assert after.keys() == state.keys(), part  # the adapter is removed again
        for key, value in state.items():
            assert torch.equal(after[key], value), f"{part}.{key}"
    assert len(result.encoders) == 2
    for (tokenizer, encoder), rows_of in zip(
        components.text_encoders, result.encoders, strict=True
    ):
        the = encoder.get_input_embeddings().weight[
            tokenizer("the", add_special_tokens=False).input_ids[0]
        ]
        for rows in rows_of.values():
            assert not torch.allclose(rows[0], the)  # moved away from the initializer
    ups = [v for k, v in result.adapter.items() if ".lora.up." in k]
    assert ups and all(v.abs().max() > 0 for v in ups)


def test_sdxl_gradient_checkpointing_covers_the_unet_and_both_text_encoders(
    tiny_sdxl_dir, sdxl_split
):
    """`inversion.gradient_checkpointing` on SDXL: the UNet's and both text encoders' layers
    recompute their forward pass in the backward one (run twice a step, not once), and
    the tokens, losses and LoRA are those of a run without it."""
    _, manifest, images = sdxl_split
    labels, names = manifest["label"].tolist(), class_names(manifest)

    def run(checkpointing):
        components = _fresh(tiny_sdxl_dir)
        calls = {"unet": 0, "text_encoder": 0, "text_encoder_2": 0}

        def count(part):
            def hook(*_):
                calls[part] += 1

            return hook

        # The first attention block of the UNet, the first layer of each text encoder.
        block = next(m for n, m in components.unet.named_modules() if n.endswith("attn2"))
        block.register_forward_pre_hook(count("unet"))
        for part in ("text_encoder", "text_encoder_2"):
            encoder = getattr(components, part)
            mlp = next(m for n, m in encoder.named_modules() if n.endswith("layers.0.mlp"))
            mlp.register_forward_pre_hook(count(part))
        settings = INVERSION.replace(gradient_checkpointing=checkpointing)
        result = learn_lora(
            components, images, labels, names, settings, LORA, seed=0, resolution=32,
            progress=False,
        )  # fmt: skip
        for _, encoder in components.text_encoders:
            assert not any(m.training for m in encoder.modules())  # eval mode again
        return result, calls

    plain, once = run(False)
    checkpointed, twice = run(True)
    assert once == {part: LORA.steps for part in once}  # one forward a step (both classes)
    assert twice == {part: 2 * LORA.steps for part in twice}  # and its recomputation
    for ours, theirs in zip(checkpointed.encoders, plain.encoders, strict=True):
        for token, rows in theirs.items():
            torch.testing.assert_close(ours[token], rows, atol=1e-6, rtol=0)
    torch.testing.assert_close(checkpointed.losses, plain.losses, atol=1e-6, rtol=0)
    for key, value in plain.adapter.items():
        torch.testing.assert_close(checkpointed.adapter[key], value, atol=1e-6, rtol=0)
