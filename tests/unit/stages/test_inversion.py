import pandas as pd
import pytest
import torch
from helpers import relabelled_model
from safetensors.torch import load_file

from dafusion.data.datasets import few_shot
from dafusion.data.images import load_image
from dafusion.data.manifest import class_names, class_token
from dafusion.jobs.checkpoint import Checkpoint
from dafusion.settings import InversionSettings
from dafusion.stages import inversion
from dafusion.stages.inversion import learn_tokens, template_list
from dafusion.stages.tokens import load_into, save_tokens


def _split(digits, classes):
    pool = digits[0]
    subset = few_shot(pool[pool["label"].isin(classes)], seed=0, shots=2)
    remap = {c: i for i, c in enumerate(sorted(classes))}
    subset = subset.assign(label=subset["label"].map(remap))
    images = [load_image(r) for r in subset.to_dict("records")]
    return images, subset["label"].tolist(), class_names(subset)


def _fresh(tiny_dir):
    from dafusion.stages.models import load_components

    return load_components(tiny_dir, torch.device("cpu"), torch.float32)


def test_only_new_rows_are_learned(components, digits):
    images, labels, names = _split(digits, [0, 1])
    before = components.text_encoder.get_input_embeddings().weight.clone()
    settings = InversionSettings(steps=3, batch_size=2, learning_rate=1e-2)
    result = learn_tokens(
        components, images, labels, names, settings, seed=0, resolution=32, progress=False
    )
    tokens = result.tokens
    assert result.losses.shape == (3, 2) and (result.losses > 0).all()
    assert list(tokens) == ["<zero>", "<one>"]
    the = components.tokenizer("the", add_special_tokens=False).input_ids
    assert len(the) == 1
    after = components.text_encoder.get_input_embeddings().weight
    assert torch.equal(before, after)  # every existing row is bit-identical
    for rows in tokens.values():
        assert rows.shape == (1, 32)
        assert not torch.allclose(rows[0], before[the[0]])  # moved away from the initializer


@pytest.mark.workflow  # whole inversion runs
@pytest.mark.parametrize("chunk", [0, 2])
def test_joint_run_equals_separate_runs(tiny_dir, digits, chunk):
    """The sum of per-class mean losses gives each class exactly its separate-run gradient."""
    settings = InversionSettings(steps=3, batch_size=2, learning_rate=5e-3, classes_per_chunk=chunk)
    images, labels, names = _split(digits, [2, 5, 7])
    joint = learn_tokens(
        _fresh(tiny_dir), images, labels, names, settings, seed=4, resolution=32, progress=False
    )
    for c, name in enumerate(names):
        own = [im for im, lab in zip(images, labels, strict=True) if lab == c]
        alone = learn_tokens(
            _fresh(tiny_dir),
            own,
            [0] * len(own),
            [name],
            settings,
            seed=4,
            resolution=32,
            progress=False,
        )
        token = class_token(name)
        torch.testing.assert_close(joint.tokens[token], alone.tokens[token], atol=1e-5, rtol=0)
        torch.testing.assert_close(joint.losses[:, c], alone.losses[:, 0], atol=1e-5, rtol=0)


@pytest.mark.workflow  # a whole job, killed and resumed
def test_killed_job_resumes_to_the_same_tokens(tiny_dir, digits, tmp_path, monkeypatch):
    images, labels, names = _split(digits, [1, 8])
    settings = InversionSettings(steps=5, batch_size=2, learning_rate=1e-2, checkpoint_every=2)

    def run(checkpoint=None):
        return learn_tokens(
            _fresh(tiny_dir), images, labels, names, settings, seed=2, resolution=32,
            progress=False, checkpoint=checkpoint,
        )  # fmt: skip

    whole = run()

    class Killed(Exception):
        pass

    saves, steps = [], []
    save, step = Checkpoint.save, inversion._Trainer.step

    def save_once_then_die(self, done, *args):
        saves.append(done)
        if len(saves) == 2:  # the job is killed while writing its second checkpoint
            raise Killed
        save(self, done, *args)

    def counted(self, draws):
        steps.append(len(steps))
        return step(self, draws)

    monkeypatch.setattr(Checkpoint, "save", save_once_then_die)
    monkeypatch.setattr(inversion._Trainer, "step", counted)
    checkpoint = Checkpoint(tmp_path / "ckpt.safetensors", fingerprint="job")
    with pytest.raises(Killed):
        run(checkpoint)
    assert saves == [2, 4] and len(steps) == 4 and checkpoint.path.exists()
    steps.clear()
    resumed = run(checkpoint)
    assert len(steps) == 3  # steps 3 to 5: restarted after the checkpoint at step 2
    for token in whole.tokens:
        torch.testing.assert_close(resumed.tokens[token], whole.tokens[token], atol=1e-6, rtol=0)
    torch.testing.assert_close(resumed.losses, whole.losses, atol=1e-6, rtol=0)
    # A checkpoint of other inputs is ignored, not resumed.
    steps.clear()
    run(Checkpoint(checkpoint.path, fingerprint="another job"))
    assert len(steps) == 5


def test_class_streams_are_seeded_by_seed_and_token(components, digits, monkeypatch):
    """Each class draws from derive_seed('inversion', seed, token), stable across versions."""
    images, labels, names = _split(digits, [0, 1])
    seeds, run = [], inversion._Trainer.run

    def record(self, *args):
        seeds.extend(g.initial_seed() for g in self.generators)
        return run(self, *args)

    monkeypatch.setattr(inversion._Trainer, "run", record)
    settings = InversionSettings(steps=1, batch_size=1)
    learn_tokens(components, images, labels, names, settings, seed=4, resolution=32, progress=False)
    assert seeds[0] == 5641030481512868692  # '<zero>', as computed by earlier versions


def test_multi_vector_tokens_and_class_name_initializer(components, digits):
    images, labels, names = _split(digits, [3, 4])
    settings = InversionSettings(steps=1, batch_size=1, num_vectors=3, initializer="class_name")
    result = learn_tokens(
        components, images, labels, names, settings, seed=0, resolution=32, progress=False
    )
    assert result.tokens["<three>"].shape == (3, 32)


def test_template_set_and_scaled_lr():
    """The default set is the original's: fine_tune.py lines 276-304 (imagenet_templates_small)
    of brandontrabucco/da-fusion, transcribed here in its order."""
    original = [
        "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}",
        "the photo of a {}", "a photo of a clean {}", "a photo of a dirty {}",
        "a dark photo of the {}", "a photo of my {}", "a photo of the cool {}",
        "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
        "a photo of the {}", "a good photo of the {}", "a photo of one {}",
        "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}",
        "a rendition of a {}", "a photo of a nice {}", "a good photo of a {}",
        "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
        "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
    ]  # fmt: skip
    assert template_list(InversionSettings()) == original
    settings = InversionSettings(templates="imagenet_small", batch_size=8, scale_lr=True)
    assert settings.effective_lr == pytest.approx(8 * 5e-4)


def test_each_example_draws_its_own_template_reproducibly(components, digits):
    """fine_tune.py line 380 (TextualInversionDataset.__getitem__): every training example
    draws its prompt with `random.choice(self.templates)`, independently of the others in its
    batch. Here each class's draws come from its own seeded stream, so a rerun draws the same."""
    from dafusion.stages.inversion import SplicedEmbedding, _Trainer

    images, labels, names = _split(digits, [3])
    settings = InversionSettings(batch_size=16)
    base = components.text_encoder.get_input_embeddings()

    def prompts(seed: int) -> list[list[str]]:
        spliced = SplicedEmbedding(base, [torch.zeros(1, base.weight.shape[1])])
        trainer = _Trainer(components, spliced, images, labels, ["<three>"], settings, seed, 32)
        return [trainer.draw(0)["prompts"] for _ in range(4)]

    drawn = prompts(seed=0)
    assert drawn == prompts(seed=0)
    assert drawn != prompts(seed=1)
    assert all(len(set(batch)) > 4 for batch in drawn)  # per example, not one per batch
    allowed = {t.format("<three>") for t in template_list(settings)}
    assert {p for batch in drawn for p in batch} <= allowed


def test_tokens_load_into_a_diffusers_pipeline(tiny_dir, tmp_path, components):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    rows = {"<zero>": torch.randn(1, 32), "<seven>": torch.randn(2, 32)}
    path = tmp_path / "tokens.safetensors"
    save_tokens(path, rows, {"classes": ["zero", "seven"]})
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, use_safetensors=True)
    for token, tensor in load_file(str(path)).items():
        pipe.load_textual_inversion(
            {token: tensor}, token=token, tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder
        )
    table = pipe.text_encoder.get_input_embeddings().weight
    for token, tensor in rows.items():
        names = [token] + [f"{token}_{i}" for i in range(1, tensor.shape[0])]
        ids = pipe.tokenizer.convert_tokens_to_ids(names)
        torch.testing.assert_close(table[ids], tensor)
    # Our loader puts the same rows at the same ids.
    load_into(components, path)
    ours = components.text_encoder.get_input_embeddings().weight
    for token, tensor in rows.items():
        ids = components.tokenizer.convert_tokens_to_ids(
            [token] + [f"{token}_{i}" for i in range(1, tensor.shape[0])]
        )
        torch.testing.assert_close(ours[ids], tensor)


def test_pipeline_step_exports_per_class_files_and_loss_curves(tiny_dir, digits, tmp_path):
    """The per-class export loads with diffusers' load_textual_inversion(path)."""
    from diffusers import StableDiffusionPipeline

    from dafusion import pipeline

    split = few_shot(digits[0][digits[0]["label"] < 2], seed=0, shots=1)
    split.to_parquet(tmp_path / "split.parquet")
    from dafusion.settings import InversionSettings, ModelSettings

    model = ModelSettings(pretrained="tiny", resolution=32, device="cpu")
    inversion = InversionSettings(steps=2, batch_size=1, checkpoint_every=1)
    pipeline.invert(
        str(tmp_path / "split.parquet"),
        model,
        inversion,
        seed=0,
        output=str(tmp_path / "tokens.safetensors"),
        model_dir=tiny_dir,
        export_dir=str(tmp_path / "export"),
        loss_path=str(tmp_path / "loss.parquet"),
    )
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "one.safetensors",
        "zero.safetensors",
    ]
    assert not list(tmp_path.glob(".*checkpoint*"))  # removed once the job is done
    curves = pd.read_parquet(tmp_path / "loss.parquet")
    assert curves.shape[0] == 2 * 2 and set(curves["token"]) == {"<zero>", "<one>"}
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, use_safetensors=True)
    pipe.load_textual_inversion(str(tmp_path / "export/one.safetensors"))
    from safetensors.torch import load_file

    expected = load_file(str(tmp_path / "tokens.safetensors"))["<one>"]
    row = pipe.text_encoder.get_input_embeddings().weight[
        pipe.tokenizer.convert_tokens_to_ids("<one>")
    ]
    torch.testing.assert_close(row, expected[0])


def test_a_tokens_file_is_the_same_bytes_wherever_the_results_are(tiny_dir, digits, tmp_path):
    """Portability: the token file records the configured model name, not the folder the
    model or the results live in, so the same run elsewhere writes the same bytes (and the
    synthetic images that record its hash stay the same)."""
    import shutil

    from dafusion import pipeline
    from dafusion.settings import ModelSettings

    split = few_shot(digits[0][digits[0]["label"] < 2], seed=0, shots=1)
    model = ModelSettings(pretrained="tiny", resolution=32, device="cpu")
    written = []
    for place in ("here", "there/deeper"):
        folder = tmp_path / place
        folder.mkdir(parents=True)
        split.to_parquet(folder / "split.parquet")
        shutil.copytree(tiny_dir, folder / "model")
        pipeline.invert(
            str(folder / "split.parquet"), model, InversionSettings(steps=2, batch_size=1),
            seed=0, output=str(folder / "tokens.safetensors"), model_dir=str(folder / "model"),
        )  # fmt: skip
        written.append((folder / "tokens.safetensors").read_bytes())
    assert written[0] == written[1]
    assert str(tmp_path).encode() not in written[0]


def test_mixed_precision_is_the_original_scripts():
    """The original's launch scripts run fine_tune.py with `--mixed_precision=fp16`
    (brandontrabucco/da-fusion scripts/fine_tuning/fine_tune_*.sh l. 22, with
    `--train_batch_size=4` l. 19 and `--gradient_accumulation_steps=1` l. 20); fine_tune.py
    casts the UNet and VAE to that weight dtype (l. 588-596) and accelerate autocasts the
    prepared text encoder (l. 425-430, 582-584). fp32 is accelerate's "no"."""
    assert InversionSettings().mixed_precision == "fp16"
    assert InversionSettings().batch_size == 4
    assert InversionSettings().weight_dtype == "float16"
    assert InversionSettings(mixed_precision="bf16").weight_dtype == "bfloat16"
    assert InversionSettings(mixed_precision="fp32").weight_dtype == "float32"
    assert "mixed_precision" in InversionSettings().result_params()


def test_bf16_mixed_precision_learns_tokens_near_float32(tiny_dir, digits):
    """A bfloat16 UNet and VAE with the text encoder under autocast (CPUs autocast bf16):
    the token rows stay float32 and end near the float32 run's."""
    from dafusion.stages.models import load_components

    images, labels, names = _split(digits, [1, 2])
    settings = InversionSettings(steps=3, batch_size=2)
    tokens = {}
    for dtype in (torch.float32, torch.bfloat16):
        parts = load_components(tiny_dir, torch.device("cpu"), dtype)
        parts.text_encoder.to(torch.float32)
        result = learn_tokens(parts, images, labels, names, settings, 0, 32, progress=False)
        tokens[dtype] = result.tokens
    for token, rows in tokens[torch.float32].items():
        assert tokens[torch.bfloat16][token].dtype == torch.float32
        torch.testing.assert_close(tokens[torch.bfloat16][token], rows, atol=2e-3, rtol=0)


def test_half_mixed_precision_computes_in_float32_on_a_cpu(tiny_dir, digits, tmp_path, caplog):
    """inversion.mixed_precision applies on CUDA; a CPU job says so and runs float32: the
    same tokens as fp32."""
    from dafusion import pipeline
    from dafusion.settings import ModelSettings

    split = few_shot(digits[0][digits[0]["label"] < 2], seed=0, shots=1)
    split.to_parquet(tmp_path / "split.parquet")
    model = ModelSettings(pretrained="tiny", resolution=32, device="cpu")
    written = {}
    for precision in ("fp16", "fp32"):
        output = tmp_path / f"{precision}.safetensors"
        settings = InversionSettings(steps=2, batch_size=1, mixed_precision=precision)
        with caplog.at_level("INFO", logger="dafusion"):
            pipeline.invert(
                str(tmp_path / "split.parquet"), model, settings, seed=0, output=str(output),
                model_dir=tiny_dir,
            )  # fmt: skip
        written[precision] = load_file(str(output))
    assert "inversion.mixed_precision fp16 applies on CUDA: float32 on cpu" in caplog.text
    for token, rows in written["fp32"].items():
        torch.testing.assert_close(written["fp16"][token], rows, atol=0, rtol=0)


def test_inversion_resizes_bicubic_and_generation_bilinear_as_the_original(components, monkeypatch):
    """The original's TextualInversionDataset resizes with `interpolation="bicubic"`
    (brandontrabucco/da-fusion fine_tune.py l. 337, used at l. 402); its generation resizes
    bilinearly (semantic_aug/augmentations/textual_inversion.py l. 121, real_guidance.py
    l. 67). Each stage here resizes as its original counterpart."""
    import numpy as np
    from PIL import Image

    from dafusion.data.images import to_model_tensor

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8))
    seen, encode = [], components.vae.encode

    def record(x, *args, **kwargs):
        seen.append(x.detach().clone())
        return encode(x, *args, **kwargs)

    monkeypatch.setattr(components.vae, "encode", record)
    inversion.latent_distributions(components, [image], 32, flip=False)

    def resized(resample):
        array = np.asarray(image.resize((32, 32), resample), dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1)

    torch.testing.assert_close(seen[0][0], resized(Image.Resampling.BICUBIC), atol=0, rtol=0)
    assert not torch.equal(seen[0][0], resized(Image.Resampling.BILINEAR))
    assert torch.equal(to_model_tensor(image, 32), resized(Image.Resampling.BILINEAR))


def _trainer(components, digits, classes, settings, seed=0):
    from dafusion.stages.inversion import SplicedEmbedding, _Trainer

    images, labels, names = _split(digits, classes)
    tokens = [class_token(name) for name in names]
    base = components.text_encoder.get_input_embeddings()
    rows = [torch.zeros(1, base.weight.shape[1]) for _ in tokens]
    spliced = SplicedEmbedding(base, rows)
    return _Trainer(components, spliced, images, labels, tokens, settings, seed, 32)


def test_images_are_drawn_in_shuffled_epochs_of_repeats(components, digits):
    """fine_tune.py of the original: TextualInversionDataset has num_images x repeats
    examples (l. 336, 357; `--repeats` default 100, l. 120), example i is image
    i % num_images (l. 374), and a DataLoader with shuffle=True draws them (l. 565): in
    every epoch each image appears `repeats` times, in a shuffled order. `repeats: null` draws
    each example independently from the class's stream, as earlier versions did."""
    from dafusion.jobs.seeds import derive_seed

    settings = InversionSettings(batch_size=4, repeats=3)  # 2 images: epochs of 6 examples

    def picks(seed: int) -> list[int]:
        trainer = _trainer(components, digits, [3], settings, seed)
        return torch.cat([trainer.next_images(0) for _ in range(6)]).tolist()  # 4 epochs

    drawn = picks(seed=0)
    for epoch in range(4):
        assert sorted(drawn[6 * epoch : 6 * epoch + 6]) == [0, 0, 0, 1, 1, 1]
    assert drawn == picks(seed=0)  # each epoch's order from (seed, token, epoch)
    assert drawn != picks(seed=1)
    iid = _trainer(components, digits, [3], settings.replace(repeats=None), seed=0)
    stream = torch.Generator().manual_seed(derive_seed("inversion", 0, "<three>"))
    assert torch.equal(iid.next_images(0), torch.randint(2, (4,), generator=stream))


def test_an_fp16_overflow_skips_only_its_own_class_step(components, digits, monkeypatch):
    """The original learns each class in its own process (scripts/fine_tuning/*.sh run
    fine_tune.py per class, accelerate with --mixed_precision=fp16), each with its own
    GradScaler: an overflow skips that class's step only. Here each class has its own scale,
    and a skipped class keeps its rows, its AdamW moments and its step count."""
    from dafusion.stages.inversion import ClassScaler
    from dafusion.stages.tokens import add_to_tokenizer

    settings = InversionSettings(batch_size=1, learning_rate=1e-2)
    trainer = _trainer(components, digits, [0, 1], settings)
    add_to_tokenizer(components.tokenizer, trainer.tokens, 1)
    components.text_encoder.set_input_embeddings(trainer.spliced)  # as learn_tokens does
    trainer.scaler = ClassScaler(2, enabled=True, device=torch.device("cpu"))  # CUDA's fp16
    rows = list(trainer.spliced.rows)
    before = [r.detach().clone() for r in rows]
    class_losses = trainer.class_losses
    overflow = torch.tensor([float("inf"), 1.0])
    monkeypatch.setattr(trainer, "class_losses", lambda draws: class_losses(draws) * overflow)
    trainer.step([trainer.draw(0), trainer.draw(1)])
    assert torch.equal(rows[0].detach(), before[0]) and not trainer.optimizer.state[rows[0]]
    assert not torch.equal(rows[1].detach(), before[1])
    assert trainer.scaler.scale.tolist() == [2.0**15, 2.0**16]
    monkeypatch.setattr(trainer, "class_losses", class_losses)
    trainer.step([trainer.draw(0), trainer.draw(1)])
    assert all(r.detach().isfinite().all() for r in rows)
    assert not torch.equal(rows[0].detach(), before[0])
    steps = [int(trainer.optimizer.state[r]["step"]) for r in rows]
    assert steps == [1, 2]


def test_a_v_prediction_model_learns_against_the_velocity(tiny_dir, digits, tmp_path):
    """Stable Diffusion 2.x at 768 px predicts v: each class's loss is the MSE between the
    UNet's prediction and `get_velocity(latents, noise, t)`, as in diffusers'
    examples/textual_inversion/textual_inversion.py ("Get the target for loss depending on
    the prediction type"), written out here independently of the trainer."""
    import torch.nn.functional as F

    from dafusion.stages.models import load_components

    folder = relabelled_model(tiny_dir, tmp_path / "v-prediction", prediction_type="v_prediction")
    components = load_components(str(folder), torch.device("cpu"), torch.float32)
    trainer = _trainer(components, digits, [3, 7], InversionSettings(batch_size=2))
    draws = [trainer.draw(0), trainer.draw(1)]
    with torch.no_grad():
        losses = trainer.class_losses(draws)
        scheduler = trainer.noise_scheduler
        assert scheduler.config.prediction_type == "v_prediction"
        expected = []
        for d in draws:
            noisy = scheduler.add_noise(d["latents"], d["noise"], d["t"])
            hidden = components.encode(d["prompts"]).hidden
            pred = components.unet(noisy, d["t"], hidden).sample
            velocity = scheduler.get_velocity(d["latents"], d["noise"], d["t"])
            expected.append(F.mse_loss(pred.float(), velocity.float()))
            assert not torch.allclose(velocity, d["noise"])  # the two targets differ
    torch.testing.assert_close(losses, torch.stack(expected), rtol=1e-5, atol=1e-6)


# SDXL: each class token is learned in both text encoders.


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    from dafusion.stages.tiny import save_tiny_model

    path = tmp_path_factory.mktemp("sdxl") / "tiny-sdxl"
    save_tiny_model(path, resolution=32, family="sdxl")
    return str(path)


def _sized_split(digits, classes):
    """`_split` with images of different sizes, so each has its own SDXL size ids."""
    images, labels, names = _split(digits, classes)
    sized = [im.resize((32 + 8 * (i % 3), 32 + 4 * (i % 2))) for i, im in enumerate(images)]
    return sized, labels, names


def _diffusers_sdxl_inversion(folder, placeholder_token, initializer_token, num_vectors, draws,
                              learning_rate, weight_decay, resolution):  # fmt: skip
    """One class's textual inversion as diffusers' SDXL example runs it, transcribed from
    huggingface/diffusers examples/textual_inversion/textual_inversion_sdxl.py (commit
    58eb52c0803e), on `draws`: the trainer's per-step random draws of this class (latents,
    noise, timesteps, prompts, each image's original size), the part its DataLoader, VAE
    and `torch.randn_like` make. Returns both encoders' learned rows and the losses."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    # l. 646-662: tokenizers, scheduler and models.
    tokenizer_1 = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2")
    noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    text_encoder_1 = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    # l. 665-687: the placeholder and its multi-vector dummies, added to both tokenizers.
    placeholder_tokens = [placeholder_token]
    placeholder_tokens += [f"{placeholder_token}_{i}" for i in range(1, num_vectors)]
    assert tokenizer_1.add_tokens(placeholder_tokens) == num_vectors
    assert tokenizer_2.add_tokens(placeholder_tokens) == num_vectors
    # l. 690-700: the initializer token's ids in both tokenizers (a single token).
    token_ids = tokenizer_1.encode(initializer_token, add_special_tokens=False)
    token_ids_2 = tokenizer_2.encode(initializer_token, add_special_tokens=False)
    assert len(token_ids) == 1 and len(token_ids_2) == 1
    initializer_token_id, initializer_token_id_2 = token_ids[0], token_ids_2[0]
    placeholder_token_ids = tokenizer_1.convert_tokens_to_ids(placeholder_tokens)
    placeholder_token_ids_2 = tokenizer_2.convert_tokens_to_ids(placeholder_tokens)
    # l. 703-713: both tables resized, the new rows initialized from the initializer's.
    text_encoder_1.resize_token_embeddings(len(tokenizer_1))
    text_encoder_2.resize_token_embeddings(len(tokenizer_2))
    token_embeds = text_encoder_1.get_input_embeddings().weight.data
    token_embeds_2 = text_encoder_2.get_input_embeddings().weight.data
    with torch.no_grad():
        for token_id in placeholder_token_ids:
            token_embeds[token_id] = token_embeds[initializer_token_id].clone()
        for token_id in placeholder_token_ids_2:
            token_embeds_2[token_id] = token_embeds_2[initializer_token_id_2].clone()
    # l. 716-727: everything frozen but the two token embedding tables.
    unet.requires_grad_(False)
    for text_encoder in (text_encoder_1, text_encoder_2):
        text_module = (
            text_encoder.text_model if hasattr(text_encoder, "text_model") else text_encoder
        )
        text_module.encoder.requires_grad_(False)
        text_module.final_layer_norm.requires_grad_(False)
        text_module.embeddings.position_embedding.requires_grad_(False)
    # l. 769-783: AdamW on both tables (betas, epsilon: its defaults, l. 329-332); the
    # default lr_scheduler "constant" (l. 303) keeps the learning rate.
    optimizer = torch.optim.AdamW(
        [
            text_encoder_1.get_input_embeddings().weight,
            text_encoder_2.get_input_embeddings().weight,
        ],
        lr=learning_rate, betas=(0.9, 0.999), weight_decay=weight_decay, eps=1e-08,
    )  # fmt: skip
    # l. 785: the prompt's placeholder, as the trainer's expanded prompts hold it.
    placeholder = " ".join(tokenizer_1.convert_ids_to_tokens(placeholder_token_ids))
    assert all(placeholder in p for d in draws for p in d["prompts"])
    # l. 909-910: the original tables, to restore every row but the new ones.
    orig_embeds_params = text_encoder_1.get_input_embeddings().weight.data.clone()
    orig_embeds_params_2 = text_encoder_2.get_input_embeddings().weight.data.clone()
    text_encoder_1.train()
    text_encoder_2.train()
    losses = []
    for batch in draws:
        # l. 563-577: both tokenizers, padded to their length.
        input_ids_1 = tokenizer_1(
            batch["prompts"], padding="max_length", truncation=True,
            max_length=tokenizer_1.model_max_length, return_tensors="pt",
        ).input_ids  # fmt: skip
        input_ids_2 = tokenizer_2(
            batch["prompts"], padding="max_length", truncation=True,
            max_length=tokenizer_2.model_max_length, return_tensors="pt",
        ).input_ids  # fmt: skip
        # l. 918-930: latents (scaled), noise, timesteps, the noisy latents.
        latents, noise, timesteps = batch["latents"], batch["noise"], batch["t"]
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        # l. 933-939: the penultimate hidden states of both encoders.
        encoder_hidden_states_1 = text_encoder_1(input_ids_1, output_hidden_states=True)
        encoder_hidden_states_1 = encoder_hidden_states_1.hidden_states[-2]
        encoder_output_2 = text_encoder_2(input_ids_2, output_hidden_states=True)
        encoder_hidden_states_2 = encoder_output_2.hidden_states[-2]
        # l. 940-955: size ids (original size l. 549, crop (0, 0): the image is resized to
        # the resolution before its crop, l. 551-559), pooled text embeds of encoder 2.
        bsz = latents.shape[0]
        original_size = [tuple(batch["original"][i]) for i in range(bsz)]
        crop_top_left = [(0, 0)] * bsz
        target_size = (resolution, resolution)
        add_time_ids = torch.cat(
            [torch.tensor(original_size[i] + crop_top_left[i] + target_size) for i in range(bsz)]
        ).to(dtype=torch.float32)
        added_cond_kwargs = {"text_embeds": encoder_output_2[0], "time_ids": add_time_ids}
        encoder_hidden_states = torch.cat(
            [encoder_hidden_states_1, encoder_hidden_states_2], dim=-1
        )
        # l. 959-971: the prediction, its target by prediction type, the mean loss.
        model_pred = unet(
            noisy_latents, timesteps, encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
        ).sample
        if noise_scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        # l. 973-991: the step, then every row but the new ones restored.
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        index_no_updates = torch.ones((len(tokenizer_1),), dtype=torch.bool)
        index_no_updates[min(placeholder_token_ids) : max(placeholder_token_ids) + 1] = False
        index_no_updates_2 = torch.ones((len(tokenizer_2),), dtype=torch.bool)
        index_no_updates_2[min(placeholder_token_ids_2) : max(placeholder_token_ids_2) + 1] = False
        with torch.no_grad():
            text_encoder_1.get_input_embeddings().weight[index_no_updates] = orig_embeds_params[
                index_no_updates
            ]
            text_encoder_2.get_input_embeddings().weight[index_no_updates_2] = orig_embeds_params_2[
                index_no_updates_2
            ]
        losses.append(loss.item())
    # l. 181-186: the saved embeddings, the new rows of each table.
    rows_1 = text_encoder_1.get_input_embeddings().weight[
        min(placeholder_token_ids) : max(placeholder_token_ids) + 1
    ]
    rows_2 = text_encoder_2.get_input_embeddings().weight[
        min(placeholder_token_ids_2) : max(placeholder_token_ids_2) + 1
    ]
    return rows_1.detach(), rows_2.detach(), torch.tensor(losses)


def test_sdxl_joint_inversion_equals_diffusers_sdxl_example_per_class(
    sdxl_dir, digits, monkeypatch
):
    """Joint inversion of several classes on SDXL learns each token in both text encoders
    exactly as diffusers' SDXL textual-inversion example learns it alone (both encoders'
    penultimate hidden states, the second's pooled embedding, add_time_ids from each
    image's own size, the loss, AdamW on both tables), to float tolerance."""
    images, labels, names = _sized_split(digits, [2, 5, 7])
    assert len({im.size for im in images}) > 1
    settings = InversionSettings(steps=3, batch_size=2, learning_rate=5e-3, num_vectors=2)
    drawn: dict[str, list[dict]] = {}
    draw = inversion._Trainer.draw

    def record(self, c):
        d = draw(self, c)
        drawn.setdefault(self.tokens[c], []).append(dict(d))
        return d

    monkeypatch.setattr(inversion._Trainer, "draw", record)
    components = _fresh(sdxl_dir)
    joint = learn_tokens(components, images, labels, names, settings, 4, 32, progress=False)
    assert len(joint.encoders) == 2
    for c, name in enumerate(names):
        token = class_token(name)
        assert len(drawn[token]) == settings.steps
        rows_1, rows_2, losses = _diffusers_sdxl_inversion(
            sdxl_dir, token, settings.initializer, settings.num_vectors, drawn[token],
            settings.effective_lr, settings.weight_decay, resolution=32,
        )  # fmt: skip
        assert joint.tokens[token].shape == (2, 32) and joint.more_encoders[0][token].shape == (
            2,
            32,
        )
        torch.testing.assert_close(joint.tokens[token], rows_1, atol=1e-5, rtol=0)
        torch.testing.assert_close(joint.more_encoders[0][token], rows_2, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            torch.from_numpy(joint.losses[:, c]), losses.float(), atol=1e-5, rtol=0
        )
        assert not torch.allclose(joint.tokens[token], joint.more_encoders[0][token])
    # Both encoders' own tables are back, every row as it was.
    for _, encoder in components.text_encoders:
        assert isinstance(encoder.get_input_embeddings(), torch.nn.Embedding)


def test_sdxl_tokens_load_into_both_diffusers_text_encoders(sdxl_dir, digits, tmp_path):
    """An invert job on SDXL writes each encoder's rows in a layout diffusers'
    `load_textual_inversion` loads: the split's file as `clip_l/<token>` and
    `clip_g/<token>`, each class's export file as the common SDXL embedding
    `{"clip_l": rows, "clip_g": rows}`, loaded as diffusers' `unload_textual_inversion`
    docstring loads one (src/diffusers/loaders/textual_inversion.py l. 503-519)."""
    from diffusers import StableDiffusionXLPipeline

    from dafusion import pipeline
    from dafusion.settings import ModelSettings

    split = few_shot(digits[0][digits[0]["label"] < 2], seed=0, shots=1)
    split.to_parquet(tmp_path / "split.parquet")
    pipeline.invert(
        str(tmp_path / "split.parquet"),
        ModelSettings(pretrained="tiny", resolution=32, device="cpu"),
        InversionSettings(steps=2, batch_size=1, num_vectors=2), seed=0,
        output=str(tmp_path / "tokens.safetensors"), model_dir=sdxl_dir,
        export_dir=str(tmp_path / "export"), loss_path=str(tmp_path / "loss.parquet"),
    )  # fmt: skip
    tensors = load_file(str(tmp_path / "tokens.safetensors"))
    assert sorted(tensors) == ["clip_g/<one>", "clip_g/<zero>", "clip_l/<one>", "clip_l/<zero>"]
    assert sorted(pd.read_parquet(tmp_path / "loss.parquet")["token"].unique()) == [
        "<one>",
        "<zero>",
    ]
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_dir, use_safetensors=True)
    encoders = {
        "clip_l": (pipe.text_encoder, pipe.tokenizer),
        "clip_g": (pipe.text_encoder_2, pipe.tokenizer_2),
    }
    for key, rows in tensors.items():
        name, token = key.split("/")
        encoder, tokenizer = encoders[name]
        pipe.load_textual_inversion(rows, token=token, text_encoder=encoder, tokenizer=tokenizer)
    for key, rows in tensors.items():
        name, token = key.split("/")
        encoder, tokenizer = encoders[name]
        ids = tokenizer.convert_tokens_to_ids([token, f"{token}_1"])
        torch.testing.assert_close(encoder.get_input_embeddings().weight[ids], rows, atol=0, rtol=0)
    assert not torch.equal(tensors["clip_l/<one>"], tensors["clip_g/<one>"])
    # The per-class export: the same rows, loaded as diffusers' docstring loads SDXL embeddings.
    export = load_file(str(tmp_path / "export/one.safetensors"))
    assert sorted(export) == ["clip_g", "clip_l"]
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_dir, use_safetensors=True)
    pipe.load_textual_inversion(
        export["clip_l"], token="<one>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
    )
    pipe.load_textual_inversion(
        export["clip_g"],
        token="<one>",
        text_encoder=pipe.text_encoder_2,
        tokenizer=pipe.tokenizer_2,
    )
    for name in encoders:
        assert torch.equal(export[name], tensors[f"{name}/<one>"])
    for name, encoder, tokenizer in (
        ("clip_l", pipe.text_encoder, pipe.tokenizer),
        ("clip_g", pipe.text_encoder_2, pipe.tokenizer_2),
    ):
        ids = tokenizer.convert_tokens_to_ids(["<one>", "<one>_1"])
        torch.testing.assert_close(
            encoder.get_input_embeddings().weight[ids], export[name], atol=0, rtol=0
        )


def test_sdxl_load_into_puts_both_rows_where_encode_reads_them(sdxl_dir, tmp_path, components):
    """`tokens.load_into` (the generate job's) adds each token to both tokenizers and its
    rows to both tables: the embeddings that reach each encoder for a prompt holding the
    token are the file's rows. A file learned on another family is refused."""
    from dafusion.stages.tokens import file_tensors

    g = torch.Generator().manual_seed(0)
    clip_l = {"<zero>": torch.randn(1, 32, generator=g), "<seven>": torch.randn(2, 32, generator=g)}
    clip_g = {"<zero>": torch.randn(1, 32, generator=g), "<seven>": torch.randn(2, 32, generator=g)}
    path = tmp_path / "tokens.safetensors"
    save_tokens(path, file_tensors([clip_l, clip_g]), {"classes": ["zero", "seven"]})
    sdxl = _fresh(sdxl_dir)
    assert load_into(sdxl, path) == {"<zero>": 1, "<seven>": 2}
    seen = []  # (ids, embeddings) that reach each encoder's embedding table
    hooks = [
        encoder.get_input_embeddings().register_forward_hook(
            lambda module, args, out: seen.append((args[0], out))
        )
        for _, encoder in sdxl.text_encoders
    ]
    with torch.no_grad():
        sdxl.encode(["a photo of <seven> <seven>_1"])
    for hook in hooks:
        hook.remove()
    assert len(seen) == 2
    for (tokenizer, encoder), (ids, embedded), rows in zip(
        sdxl.text_encoders, seen, (clip_l, clip_g), strict=True
    ):
        for token, tensor in rows.items():
            names = [token] + [f"{token}_{i}" for i in range(1, tensor.shape[0])]
            table = encoder.get_input_embeddings().weight
            assert torch.equal(table[tokenizer.convert_tokens_to_ids(names)], tensor)
        seven = tokenizer.convert_tokens_to_ids(["<seven>", "<seven>_1"])
        at = [ids[0].tolist().index(i) for i in seven]
        assert torch.equal(embedded[0, at], rows["<seven>"])
    with pytest.raises(ValueError, match="two text encoders' rows"):
        load_into(components, path)  # a v1 model
    v1_file = tmp_path / "v1.safetensors"
    save_tokens(v1_file, clip_l, {"classes": ["zero", "seven"]})
    with pytest.raises(ValueError, match="one text encoder's rows"):
        load_into(_fresh(sdxl_dir), v1_file)


def test_sdxl_resume_from_a_checkpoint_equals_an_uninterrupted_run(sdxl_dir, digits, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    """A checkpoint holds both encoders' rows (`rows/{c}`, `rows_2/{c}`) with their AdamW
    state: a job killed after it resumes to the tokens of one that never stopped."""
    from safetensors import safe_open

    images, labels, names = _sized_split(digits, [1, 8])
    settings = InversionSettings(steps=4, batch_size=1, learning_rate=1e-2, checkpoint_every=2)

    def run(checkpoint=None):
        return learn_tokens(
            _fresh(sdxl_dir), images, labels, names, settings, seed=2, resolution=32,
            progress=False, checkpoint=checkpoint,
        )  # fmt: skip

    whole = run()

    class Killed(Exception):
        pass

    step = inversion._Trainer.step
    steps: list[int] = []

    def killed_after_two(self, draws):
        if len(steps) == 3:  # killed during step 3, after the checkpoint at step 2
            raise Killed
        steps.append(len(steps))
        return step(self, draws)

    monkeypatch.setattr(inversion._Trainer, "step", killed_after_two)
    checkpoint = Checkpoint(tmp_path / "ckpt.safetensors", fingerprint="job")
    with pytest.raises(Killed):
        run(checkpoint)
    with safe_open(str(checkpoint.path), framework="pt") as f:
        assert f.metadata()["step"] == "2"
        params = {k.split("/", 1)[1] for k in f.keys() if k.startswith("param/")}  # noqa: SIM118
    assert params == {"rows/0", "rows/1", "rows_2/0", "rows_2/1"}
    steps.clear()

    def counted(self, draws):
        steps.append(len(steps))
        return step(self, draws)

    monkeypatch.setattr(inversion._Trainer, "step", counted)
    resumed = run(checkpoint)
    assert len(steps) == 2  # steps 3 and 4: restarted after the checkpoint at step 2
    for whole_rows, resumed_rows in zip(whole.encoders, resumed.encoders, strict=True):
        for token, rows in whole_rows.items():
            torch.testing.assert_close(resumed_rows[token], rows, atol=1e-6, rtol=0)
    torch.testing.assert_close(resumed.losses, whole.losses, atol=1e-6, rtol=0)


def test_sdxl_per_class_erasure_learns_each_class_in_both_encoders(sdxl_dir, digits, tmp_path):
    """With one erasure delta per class, `learn_split` learns each class alone, on its own
    copy of both tokenizers; with the erasure left out (the same UNet for every class) that
    gives the joint run's rows in both encoders."""
    from dafusion.settings import ModelSettings
    from dafusion.stages.inversion import learn_split

    split = few_shot(digits[0][digits[0]["label"] < 2], seed=0, shots=1)
    images = [load_image(r) for r in split.to_dict("records")]
    model = ModelSettings(pretrained="tiny", resolution=32, device="cpu")
    settings = InversionSettings(steps=2, batch_size=1, learning_rate=1e-2)
    names = class_names(split)
    deltas = {name: (tmp_path / f"{name}.safetensors", name) for name in names}
    erased: list[str] = []
    components = _fresh(sdxl_dir)
    vocabularies = [len(tokenizer) for tokenizer, _ in components.text_encoders]
    per_class = learn_split(
        components, split, images, model, settings, 0, tmp_path / "tokens.safetensors", deltas,
        erase=erased.append,
    )  # fmt: skip
    assert erased == names
    assert [len(tokenizer) for tokenizer, _ in components.text_encoders] == vocabularies
    joint = learn_tokens(
        _fresh(sdxl_dir), images, split["label"].tolist(), names, settings, 0, 32, progress=False
    )
    assert len(per_class.encoders) == 2
    for mine, theirs in zip(per_class.encoders, joint.encoders, strict=True):
        assert list(mine) == list(theirs)
        for token, rows in theirs.items():
            torch.testing.assert_close(mine[token], rows, atol=1e-5, rtol=0)
    torch.testing.assert_close(per_class.losses, joint.losses, atol=1e-5, rtol=0)


def test_an_overflow_in_either_encoder_skips_its_class_in_both():
    """SDXL: one fp16 scale per class, as each class's own process would have; a gradient
    that is not finite in one encoder's rows skips that class's rows in both encoders (and
    halves its scale), the other classes unscaled and stepped."""
    from dafusion.stages.inversion import ClassScaler

    rows = [torch.nn.Parameter(torch.zeros(1, 4)) for _ in range(2)]  # text_encoder's
    rows_2 = [torch.nn.Parameter(torch.zeros(1, 8)) for _ in range(2)]  # text_encoder_2's
    for p in (*rows, *rows_2):
        p.grad = torch.full_like(p, 2.0**16)
    rows_2[0].grad[0, 3] = float("inf")
    scaler = ClassScaler(2, enabled=True, device=torch.device("cpu"))
    scaler.unscale(rows, rows_2)
    assert rows[0].grad is None and rows_2[0].grad is None
    assert torch.equal(rows[1].grad, torch.ones(1, 4)) and torch.equal(
        rows_2[1].grad, torch.ones(1, 8)
    )
    assert scaler.scale.tolist() == [2.0**15, 2.0**16]
