import copy
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import relabelled_model
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from dafusion.data.datasets import few_shot
from dafusion.data.images import encode_png, load_image
from dafusion.jobs.seeds import derive_seed
from dafusion.settings import GenerationSettings
from dafusion.stages.families.conditioning import Conditioning
from dafusion.stages.generation import Engine, denoising_timesteps, encode_images, sdedit
from dafusion.stages.models import scheduler_from_name
from dafusion.stages.synthetic import variant_plan


@pytest.fixture(scope="module")
def manifest(digits):
    return few_shot(digits[0], seed=0, shots=1).iloc[:3].reset_index(drop=True)


def test_strength_sets_the_insertion_step(components):
    """Eq. 5: with S steps and strength t0, floor(S * t0) denoising steps remain."""
    from diffusers import DDIMScheduler

    S = 50
    ddim = DDIMScheduler.from_config(components.scheduler.config)
    for t0 in (0.25, 0.5, 0.75, 1.0, 0.33):
        ddim.set_timesteps(S)
        full = ddim.timesteps.clone()
        steps = denoising_timesteps(ddim, S, t0)
        assert len(steps) == int(S * t0)
        assert steps[0] == full[S - int(S * t0)]
    pndm = copy.deepcopy(components.scheduler)
    pndm.set_timesteps(S)
    steps = denoising_timesteps(pndm, S, 0.5)
    assert steps[0] == pndm.timesteps[S - 25]


def test_image_is_inserted_with_eq5_noise(components, manifest):
    """The first denoising step sees sqrt(a_t) x0 + sqrt(1 - a_t) eps at t = t[S - floor(S t0)]."""
    S, t0, seed = 10, 0.5, 1234
    image = load_image(manifest.iloc[0].to_dict())
    means, stds = encode_images(components, [image], 32, 1)
    cond = components.encode(["a photo of a zero"])
    uncond = components.encode([""])
    seen = {}

    class Recorder(type(components.scheduler)):
        def step(self, model_output, timestep, sample, *args, **kwargs):
            seen.setdefault("first", (int(timestep), sample.clone()))
            return super().step(model_output, timestep, sample, *args, **kwargs)

    scheduler = Recorder.from_config(components.scheduler.config)
    settings = GenerationSettings(num_inference_steps=S, guidance_scale=7.5)
    sdedit(
        components,
        scheduler,
        means,
        stds,
        cond,
        uncond,
        [torch.Generator().manual_seed(seed)],
        t0,
        settings,
    )
    g = torch.Generator().manual_seed(seed)
    x0 = (
        means + stds * torch.randn(means.shape[1:], generator=g)
    ) * components.vae.config.scaling_factor
    eps = torch.randn(means.shape[1:], generator=g)
    reference = copy.deepcopy(components.scheduler)
    reference.set_timesteps(S)
    t = int(reference.timesteps[S - int(S * t0)])
    alpha_bar = reference.alphas_cumprod[t]
    expected = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    assert seen["first"][0] == t
    torch.testing.assert_close(seen["first"][1], expected, atol=1e-5, rtol=1e-5)


def _generate(components, manifest, settings, strengths, scheduler=None):
    """(plan row, image) of every synthetic image of `manifest`, as the generate step runs."""
    prompts = {c: f"a photo of a {c}" for c in manifest["label"].unique()}
    engine = Engine(components, scheduler or components.scheduler, manifest, prompts, 32, settings)
    work = variant_plan(manifest, 0, settings.num_synthetic, strengths).to_dict("records")
    return list(engine.run(work, 0))


def _run(
    components,
    manifest,
    batch_size,
    num_synthetic=2,
    strengths=(0.25, 0.5, 0.75, 1.0),
    scheduler=None,
):
    settings = GenerationSettings(
        num_synthetic=num_synthetic,
        guidance_scale=7.5,
        num_inference_steps=8,
        batch_size=batch_size,
    )
    return {
        rec["key"]: (rec["strength"], np.asarray(image, dtype=np.int16))
        for rec, image in _generate(components, manifest, settings, strengths, scheduler)
    }


def _euler_ancestral(components):
    """A stochastic scheduler: every step draws noise."""
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler.from_config(components.scheduler.config)


@pytest.mark.parametrize("stochastic", [False, True])
def test_outputs_do_not_depend_on_batch_size(components, manifest, stochastic):
    scheduler = _euler_ancestral(components) if stochastic else None
    one = _run(components, manifest, batch_size=1, scheduler=scheduler)
    eight = _run(components, manifest, batch_size=8, scheduler=scheduler)
    assert one.keys() == eight.keys() and len(one) == 6
    for key in one:
        assert one[key][0] == eight[key][0]
        assert np.abs(one[key][1] - eight[key][1]).max() <= 1


def test_seeds_are_stable_across_versions():
    """Seeds are sha256 of their names; these values were computed by earlier versions, so a
    change here changes every synthetic image and every learned token."""
    rows = variant_plan(
        pd.DataFrame({"key": ["digits-0001"]}), seed=7, num_synthetic=4, strengths=[1]
    )
    assert rows["variant_seed"].iloc[3] == derive_seed(7, "digits-0001", 3)
    assert derive_seed(7, "digits-0001", 3) == 6768512918821177212
    assert derive_seed(7, "digits-0001-003", "retry2", 0) == 6077551283208162459
    assert derive_seed("inversion", 4, "<zero>") == 5641030481512868692


def test_fewer_synthetic_images_are_a_prefix(components, manifest):
    small = variant_plan(manifest, seed=3, num_synthetic=5, strengths=[0.25, 0.5, 0.75, 1.0])
    large = variant_plan(manifest, seed=3, num_synthetic=10, strengths=[0.25, 0.5, 0.75, 1.0])
    merged = large.merge(small, on="key", suffixes=("", "_small"))
    assert len(merged) == len(small) == 15
    assert (merged["variant_seed"] == merged["variant_seed_small"]).all()
    assert (merged["strength"] == merged["strength_small"]).all()
    two = _run(components, manifest.iloc[:1], batch_size=4, num_synthetic=2)
    three = _run(components, manifest.iloc[:1], batch_size=4, num_synthetic=3)
    for key, (strength, image) in two.items():
        assert three[key][0] == strength
        assert np.abs(three[key][1] - image).max() <= 1


def test_strengths_are_drawn_uniformly():
    manifest = pd.DataFrame({"key": [f"img-{i}" for i in range(1000)]})
    strengths = variant_plan(manifest, seed=0, num_synthetic=4, strengths=[0.25, 0.5, 0.75, 1.0])[
        "strength"
    ]
    counts = Counter(strengths)
    assert set(counts) == {0.25, 0.5, 0.75, 1.0}
    expected = len(strengths) / 4
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 16.3  # p = 0.001 with 3 degrees of freedom


def _assert_matches_img2img(components, model_dir, manifest, stochastic):
    """One batched engine call equals diffusers' img2img called per image, within float
    tolerance (well under one uint8 level).

    The batch mixes strengths (in no particular order), as the engine's batches do. With a
    stochastic scheduler each image's step noise comes from its own generator, as in
    diffusers with one generator per image.
    """
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(model_dir, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    scheduler = components.scheduler
    if stochastic:
        scheduler = _euler_ancestral(components)
        pipe.scheduler = _euler_ancestral(components)
    images = [load_image(r) for r in manifest.to_dict("records")]
    prompts = [f"a photo of a {n}" for n in manifest["class_name"]]
    seeds = [11, 22, 33]
    S, t0s, scale = 10, [0.5, 0.3, 1.0], 7.5
    expected = np.stack(
        [
            pipe(
                prompt=p,
                image=im,
                strength=t0,
                guidance_scale=scale,
                num_inference_steps=S,
                generator=torch.Generator().manual_seed(s),
                output_type="np",
            ).images[0]
            for p, im, s, t0 in zip(prompts, images, seeds, t0s, strict=True)
        ]
    )
    means, stds = encode_images(components, images, 32, 8)
    for rows in (None, 5):  # the UNet on the samples started, or on 5 rows at every step
        out = sdedit(
            components,
            scheduler,
            means,
            stds,
            components.encode(prompts),
            components.encode([""]).expand(3),
            [torch.Generator().manual_seed(s) for s in seeds],
            t0s,
            GenerationSettings(num_inference_steps=S, guidance_scale=scale),
            rows=rows,
        )
        ours = ((out.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(ours, expected, atol=1e-4)


@pytest.mark.parametrize("stochastic", [False, True])
def test_matches_diffusers_img2img(components, tiny_dir, manifest, stochastic):
    """Faithfulness: the engine is diffusers' img2img, batched (Stable Diffusion 1.x)."""
    _assert_matches_img2img(components, tiny_dir, manifest, stochastic)


@pytest.mark.parametrize("stochastic", [False, True])
def test_a_v_prediction_model_matches_diffusers_img2img(tiny_dir, manifest, tmp_path, stochastic):
    """Stable Diffusion 2.x at 768 px predicts v (its scheduler's `prediction_type`): the
    engine follows the scheduler, as diffusers' pipeline does."""
    from dafusion.stages.models import load_components

    folder = relabelled_model(tiny_dir, tmp_path / "v-prediction", prediction_type="v_prediction")
    components = load_components(str(folder), torch.device("cpu"), torch.float32)
    assert components.scheduler.config.prediction_type == "v_prediction"
    _assert_matches_img2img(components, str(folder), manifest, stochastic)


def test_resizes_back_to_the_source_size(components):
    source = Image.new("RGB", (48, 40), (120, 30, 200))
    manifest = pd.DataFrame({"key": ["x"], "image": [encode_png(source)], "label": [0]})
    settings = GenerationSettings(num_synthetic=1, num_inference_steps=2, guidance_scale=1.0)
    for resize, size in ((True, (48, 40)), (False, (32, 32))):
        [(_, image)] = _generate(
            components, manifest, settings.replace(resize_to_source=resize), [1.0]
        )
        assert image.size == size


@pytest.mark.parametrize("t0", [0.5, 1.0])
def test_masked_generation_matches_diffusers_inpainting(
    components, tiny_dir, manifest, tmp_path, t0
):
    """Masked mode follows StableDiffusionInpaintPipeline with a 4-channel UNet."""
    from diffusers import StableDiffusionInpaintPipeline

    from dafusion.stages.generation import load_mask

    image = load_image(manifest.iloc[0].to_dict())
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 4:20] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    pipe = StableDiffusionInpaintPipeline.from_pretrained(tiny_dir, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        prompt="a photo of a zero",
        image=image,
        mask_image=Image.fromarray(mask),
        strength=t0,
        guidance_scale=7.5,
        num_inference_steps=10,
        generator=torch.Generator().manual_seed(5),
        output_type="np",
        height=32,
        width=32,
    ).images
    means, stds = encode_images(components, [image], 32, 1)
    masks = load_mask(str(tmp_path / "mask.png"), "object", 32, 16, dilation=1)[None]
    for rows in (None, 3):
        out = sdedit(
            components,
            components.scheduler,
            means,
            stds,
            components.encode(["a photo of a zero"]),
            components.encode([""]),
            [torch.Generator().manual_seed(5)],
            t0,
            GenerationSettings(num_inference_steps=10, guidance_scale=7.5),
            masks,
            rows=rows,
        )
        ours = ((out.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_mask_dilation_and_background(tmp_path):
    from dafusion.stages.generation import load_mask

    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[30:34, 30:34] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    plain = load_mask(str(tmp_path / "m.png"), "object", 64, 64, dilation=1)
    grown = load_mask(str(tmp_path / "m.png"), "object", 64, 64, dilation=16)
    back = load_mask(str(tmp_path / "m.png"), "background", 64, 64, dilation=16)
    assert plain.sum() == 16
    assert grown.sum() == (4 + 15) ** 2  # a 16-pixel maximum filter grows each side
    assert torch.equal(back, 1 - grown)
    small = load_mask(str(tmp_path / "m.png"), "object", 64, 8, dilation=16)
    assert small.shape == (1, 8, 8) and set(small.unique().tolist()) <= {0.0, 1.0}


def test_unseedable_stochastic_scheduler_is_refused(components):
    """DPM-Solver SDE draws batch-wide noise that no per-image generator controls."""
    with pytest.raises(ValueError, match="'generation.scheduler'.*EulerAncestralDiscreteScheduler"):
        scheduler_from_name("DPMSolverSDEScheduler", components.scheduler)
    checkpoints_own = type("DPMSolverSDEScheduler", (), {})()  # a checkpoint that ships one
    with pytest.raises(ValueError, match="'generation.scheduler': 'default'"):
        scheduler_from_name("default", checkpoints_own)
    assert type(scheduler_from_name("fast", components.scheduler)).__name__ == (
        "DPMSolverMultistepScheduler"
    )


@pytest.mark.parametrize("stochastic", [False, True])
def test_a_masked_batch_of_mixed_strengths_equals_each_sample_alone(
    components, manifest, stochastic
):
    """Masked samples of t0 = 1 (pure noise start) and t0 < 1 share one batch exactly, also
    one padded to fixed shapes (`rows`)."""
    scheduler = _euler_ancestral(components) if stochastic else components.scheduler
    images = [load_image(r) for r in manifest.to_dict("records")]
    means, stds = encode_images(components, images, 32, 8)
    cond = components.encode([f"a photo of a {n}" for n in manifest["class_name"]])
    uncond = components.encode([""]).expand(3)
    masks = torch.zeros(3, 1, 16, 16)
    masks[:, :, 4:12, 2:10] = 1
    t0s, seeds = [0.5, 1.0, 0.25], [7, 8, 9]
    settings = GenerationSettings(num_inference_steps=8, guidance_scale=7.5)
    batches = [
        sdedit(
            components,
            scheduler,
            means,
            stds,
            cond,
            uncond,
            [torch.Generator().manual_seed(s) for s in seeds],
            t0s,
            settings,
            masks,
            rows=rows,
        )  # fmt: skip
        for rows in (None, 5)
    ]
    for i in range(3):
        alone = sdedit(
            components, scheduler, means[i : i + 1], stds[i : i + 1], cond[i : i + 1],
            uncond[i : i + 1], [torch.Generator().manual_seed(seeds[i])], t0s[i], settings,
            masks[i : i + 1],
        )  # fmt: skip
        for batch in batches:
            torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-4, rtol=0)


def _fixed_shape_run(components, manifest, scheduler, compile_, mask="none"):
    """(key -> image) of 3 images x 3 variants in batches of 4: chunks of 1.0, 1.0, 0.75,
    0.75 / 0.5, 0.25, 0.25, 0.25 / 0.25 (a last smaller chunk)."""
    settings = GenerationSettings(
        num_synthetic=3, guidance_scale=7.5, num_inference_steps=8, batch_size=4, compile=compile_
    )
    prompts = {c: f"a photo of a {c}" for c in manifest["label"].unique()}
    engine = Engine(
        components, scheduler, manifest, prompts, 32, settings, mask=mask, mask_dilation=1
    )
    work = variant_plan(manifest, 0, 3, [0.25, 0.5, 0.75, 1.0]).to_dict("records")
    assert sorted(w["strength"] for w in work) == [0.25] * 4 + [0.5, 0.75, 0.75, 1.0, 1.0]
    return {rec["key"]: np.asarray(image, dtype=np.int16) for rec, image in engine.run(work, 0)}


@pytest.mark.parametrize("stochastic", [False, True])
def test_fixed_shapes_equal_the_eager_engine(components, manifest, tmp_path, stochastic):
    """With `compile` every chunk, the last smaller one too, is padded to the batch size and
    the UNet runs on all of it at every step; the images equal the eager engine's (the UNet
    on the samples started only) within the batch-size tolerance, masked generation with
    t0 = 1 (pure noise, the kept region reset every step) included."""
    scheduler = _euler_ancestral(components) if stochastic else components.scheduler
    paths = []
    for i in range(len(manifest)):
        mask = np.zeros((32, 32), dtype=np.uint8)
        mask[4 + 2 * i : 20 + 2 * i, 6:22] = 255
        paths.append(tmp_path / f"mask{i}.png")
        Image.fromarray(mask).save(paths[-1])
    masked = manifest.assign(mask_path=[str(p) for p in paths])
    eager = _fixed_shape_run(components, masked, scheduler, False, mask="object")
    fixed = _fixed_shape_run(components, masked, scheduler, True, mask="object")
    assert eager.keys() == fixed.keys() and len(eager) == 9
    for key in eager:
        assert np.abs(eager[key] - fixed[key]).max() <= 1


def test_a_compiled_unet_sees_one_shape(components, manifest):
    """With `compile`, every UNet call of a run of several chunks (strengths starting at
    different steps, a last smaller chunk) gets the same input shapes: it compiles once."""
    shapes = []
    components.unet.register_forward_pre_hook(
        lambda _, args, kwargs: shapes.append(
            (args[0].shape, args[1].shape, kwargs["encoder_hidden_states"].shape)
        ),
        with_kwargs=True,
    )
    _fixed_shape_run(components, manifest, components.scheduler, True)
    # Each chunk costs the calls of its largest t0 (1.0, 0.5, 0.25): PNDM makes floor(S t0) + 1.
    assert len(shapes) == 9 + 5 + 3
    assert len(set(shapes)) == 1 and shapes[0][0][0] == 8  # 4 rows, doubled by guidance


class _HostToDevice(TorchDispatchMode):
    """Logs every copy from the host to the meta device (a blocking one on CUDA)."""

    def __init__(self, events: list[str]):
        super().__init__()
        self.events = events

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten._to_copy, torch.ops.aten.copy_):
            source = args[1] if func.overloadpacket is torch.ops.aten.copy_ else args[0]
            if source.device.type == "cpu" and out.device.type == "meta":
                self.events.append("copy")
        return out


@pytest.mark.parametrize(
    "name, copies",
    [("default", 0), ("fast", 0), ("DDIMScheduler", 0), ("EulerAncestralDiscreteScheduler", 7)],
)
def test_the_denoising_loop_never_waits_for_the_device(components, name, copies):
    """The loop of a masked batch of three strengths, eager and padded, on the meta device,
    where any read of a device value on the host (`.item()`, `bool`, `.cpu()`, `nonzero`)
    raises and every host-to-device copy is logged: between the first UNet call and the VAE
    decode there is none, but with a stochastic scheduler, which draws each step's noise per
    image on the host as diffusers does: one copy per strength and step (4 + 2 + 1)."""
    scheduler = scheduler_from_name(name, components.scheduler)
    components.unet.to("meta")
    components.vae.to("meta")
    events: list[str] = []
    components.unet.register_forward_pre_hook(lambda *_: events.append("unet"))
    components.vae.decoder.register_forward_pre_hook(lambda *_: events.append("decode"))
    means = torch.empty(3, 4, 16, 16, device="meta")
    masks = torch.empty(3, 1, 16, 16, device="meta")
    text = Conditioning(
        torch.empty(3, 77, components.unet.config.cross_attention_dim, device="meta")
    )
    settings = GenerationSettings(num_inference_steps=4, guidance_scale=7.5)
    for rows in (None, 5):
        events.clear()
        with _HostToDevice(events):
            sdedit(
                components, scheduler, means, means, text, text,
                [torch.Generator().manual_seed(i) for i in range(3)], [1.0, 0.5, 0.25],
                settings, masks, rows=rows,
            )  # fmt: skip
        loop = events[events.index("unet") : events.index("decode")]
        assert loop.count("unet") >= 4 and loop.count("copy") == copies


# SDXL ---------------------------------------------------------------------------------------

# Sources of three sizes (height, width): SDXL conditions each image on its own.
SDXL_SOURCES = [(40, 48), (32, 32), (24, 60)]


@pytest.fixture
def sdxl(tiny_sdxl_dir):
    from dafusion.stages.models import load_components

    return load_components(tiny_sdxl_dir, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def sdxl_manifest():
    """Three classes, one image each, of the sizes of SDXL_SOURCES."""
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in SDXL_SOURCES
    ]
    return pd.DataFrame(
        {
            "key": ["a", "b", "c"],
            "image": [encode_png(im) for im in images],
            "label": [0, 1, 2],
            "class_name": ["zero", "one", "two"],
        }
    )


def _sdxl_engine_run(components, manifest, scheduler, seeds, t0s, compile_=False, on_class=None):
    """The engine's images (uint8, [N, H, W, 3]) of one mixed-strength batch: row i of
    `manifest` with seed i and t0 i."""
    settings = GenerationSettings(
        num_inference_steps=10, guidance_scale=7.5, resize_to_source=False, compile=compile_
    )
    names = zip(manifest["label"], manifest["class_name"], strict=True)
    prompts = {c: f"a photo of a {n}" for c, n in names}
    engine = Engine(
        components, scheduler, manifest, prompts, 32, settings, on_class=on_class
    )  # fmt: skip
    work = [
        {"row": i, "j": 0, "key": f"{k}-000", "variant_seed": s, "strength": t0}
        for i, (k, s, t0) in enumerate(zip(manifest["key"], seeds, t0s, strict=True))
    ]
    out = {item["row"]: np.asarray(image) for item, image in engine.run(work, 0)}
    return np.stack([out[i] for i in range(len(work))]).astype(np.int16)


@pytest.mark.parametrize("stochastic", [False, True])
def test_sdxl_matches_diffusers_img2img(sdxl, tiny_sdxl_dir, sdxl_manifest, stochastic):
    """Faithfulness on SDXL: the engine's batch of three sources of different sizes and
    strengths equals `StableDiffusionXLImg2ImgPipeline` called per image with that source's
    `original_size` (pooled embeddings, add_time_ids, zeros for the unconditional half as
    `force_zeros_for_empty_prompt` makes them, SDXL's Euler scheduler with leading spacing),
    within one uint8 level, also padded to fixed shapes (`compile`)."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        tiny_sdxl_dir, use_safetensors=True, add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.force_zeros_for_empty_prompt and not pipe.config.requires_aesthetics_score
    scheduler = sdxl.scheduler
    if stochastic:
        scheduler = EulerAncestralDiscreteScheduler.from_config(sdxl.scheduler.config)
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(sdxl.scheduler.config)
    assert scheduler.config.timestep_spacing == "leading"
    seeds, t0s = [11, 22, 33], [0.5, 0.3, 1.0]
    expected = np.stack(
        [
            pipe(
                prompt=f"a photo of a {row['class_name']}",
                # The engine's input: the source resized to the model's side (bilinear).
                image=load_image(row).convert("RGB").resize((32, 32), Image.BILINEAR),
                strength=t0,
                guidance_scale=7.5,
                num_inference_steps=10,
                original_size=size,
                target_size=(32, 32),
                generator=torch.Generator().manual_seed(seed),
                output_type="pil",
            ).images[0]
            for row, size, seed, t0 in zip(
                sdxl_manifest.to_dict("records"), SDXL_SOURCES, seeds, t0s, strict=True
            )
        ]
    ).astype(np.int16)
    for compile_ in (False, True):
        ours = _sdxl_engine_run(sdxl, sdxl_manifest, scheduler, seeds, t0s, compile_)
        assert np.abs(ours - expected).max() <= 1


def test_sdxl_size_conditioning_is_each_sources_own(sdxl, sdxl_manifest):
    """The UNet sees each row's (original height, width, 0, 0, 32, 32), in both halves of
    guidance, and zeros for the unconditional pooled embedding and hidden states."""
    seen = []
    sdxl.unet.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs), with_kwargs=True
    )
    _sdxl_engine_run(sdxl, sdxl_manifest, sdxl.scheduler, [1, 2, 3], [1.0, 1.0, 1.0])
    first = seen[0]
    ids = first["added_cond_kwargs"]["time_ids"]
    expected = torch.tensor([[h, w, 0, 0, 32, 32] for h, w in SDXL_SOURCES], dtype=ids.dtype)
    torch.testing.assert_close(ids, torch.cat([expected, expected]))
    pooled, hidden = first["added_cond_kwargs"]["text_embeds"], first["encoder_hidden_states"]
    assert not pooled[:3].any() and not hidden[:3].any()  # the unconditional half
    assert pooled[3:].abs().sum() > 0 and hidden[3:].abs().sum() > 0


@pytest.mark.parametrize("t0", [0.5, 1.0])
def test_sdxl_masked_generation_matches_diffusers_inpainting(sdxl, tiny_sdxl_dir, tmp_path, t0):
    """Masked mode on SDXL follows StableDiffusionXLInpaintPipeline with a 4-channel UNet
    (t0 = 1: pure noise times the Euler scheduler's init_noise_sigma)."""
    from diffusers import StableDiffusionXLInpaintPipeline

    from dafusion.stages.generation import load_mask

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), np.uint8))
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 4:20] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(
        tiny_sdxl_dir, use_safetensors=True, add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    size, prompt = (40, 48), "a photo of a zero"
    expected = pipe(
        prompt=prompt, image=image, mask_image=Image.fromarray(mask), strength=t0,
        guidance_scale=7.5, num_inference_steps=10, generator=torch.Generator().manual_seed(5),
        output_type="np", height=32, width=32, original_size=size, target_size=(32, 32),
    ).images  # fmt: skip
    means, stds = encode_images(sdxl, [image], 32, 1)
    masks = load_mask(str(tmp_path / "mask.png"), "object", 32, 16, dilation=1)[None]
    cond, uncond = (
        sdxl.conditioner.sized(c, [size], (32, 32))
        for c in (sdxl.encode([prompt]), sdxl.conditioner.unconditional(sdxl))
    )
    out = sdedit(
        sdxl, sdxl.scheduler, means, stds, cond, uncond, [torch.Generator().manual_seed(5)], t0,
        GenerationSettings(num_inference_steps=10, guidance_scale=7.5), masks,
    )  # fmt: skip
    ours = ((out.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_sdxl_erasure_deltas_switch_per_class(sdxl, sdxl_manifest, tmp_path):
    """An erased method on SDXL: each class's images come from the UNet with that class's
    delta applied (`DeltaSwitch`, as `set_job` wires it), the same as from a UNet edited
    once; the base UNet comes back bit for bit."""
    from dafusion.stages.deltas import DeltaSwitch, save_delta

    names = [n for n, _ in sdxl.unet.named_parameters() if "attn2.to_k" in n or "attn2.to_v" in n]
    assert names  # SDXL's cross-attention projections (ESD-x and UCE's parameters)
    params = dict(sdxl.unet.named_parameters())
    base = {n: params[n].detach().clone() for n in params}
    deltas = {}
    for label in (0, 1, 2):
        deltas[label] = tmp_path / f"{label}.safetensors"
        edited = {n: params[n] * (1.5 + label) for n in names}
        save_delta(deltas[label], edited, torch.float32, {"label": label})
    seeds, t0s = [1, 2, 3], [0.5, 0.5, 0.5]
    switch = DeltaSwitch(sdxl.unet)
    erased = _sdxl_engine_run(
        sdxl, sdxl_manifest, sdxl.scheduler, seeds, t0s,
        on_class=lambda label: switch.use_file(deltas[label]),
    )  # fmt: skip
    switch.restore()
    assert all(torch.equal(p, base[n]) for n, p in sdxl.unet.named_parameters())
    plain = _sdxl_engine_run(sdxl, sdxl_manifest, sdxl.scheduler, seeds, t0s)
    for label in (0, 1, 2):
        switch.use_file(deltas[label])
        alone = _sdxl_engine_run(sdxl, sdxl_manifest, sdxl.scheduler, seeds, t0s)
        assert np.abs(erased[label] - alone[label]).max() <= 1
        assert np.abs(erased[label] - plain[label]).max() > 1
    switch.restore()


def test_sdxl_in_float16_decodes_with_a_float32_vae(tiny_sdxl_dir, sdxl_manifest):
    """Under float16 SDXL's VAE is float32 (`force_upcast`, `models.load_vae`): the UNet
    takes float16 inputs, the latents stay float32, and the images are the float32 run's
    within float16's rounding (CPUs compute float16 too)."""
    from dafusion.stages.models import load_components

    runs = {}
    for dtype in (torch.float32, torch.float16):
        c = load_components(tiny_sdxl_dir, torch.device("cpu"), dtype)
        assert c.vae.dtype == torch.float32 and c.unet.dtype == dtype
        runs[dtype] = _sdxl_engine_run(c, sdxl_manifest, c.scheduler, [1, 2, 3], [0.5, 1.0, 0.3])
    assert np.abs(runs[torch.float32] - runs[torch.float16]).max() <= 3


def test_vae_slicing_changes_no_image(components, manifest):
    """`generation.vae_slicing` (an execution knob) encodes and decodes one image at a time:
    the same images as whole batches, within the batch-size tolerance."""
    settings = GenerationSettings(num_synthetic=2, num_inference_steps=4, batch_size=4)
    runs = [
        {
            rec["key"]: np.asarray(image, dtype=np.int16)
            for rec, image in _generate(
                components, manifest, settings.replace(vae_slicing=sliced), [0.5, 1.0]
            )
        }
        for sliced in (False, True)
    ]
    assert runs[0].keys() == runs[1].keys() and len(runs[0]) == 6
    assert all(np.abs(runs[0][k] - runs[1][k]).max() <= 1 for k in runs[0])
