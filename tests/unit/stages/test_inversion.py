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
