"""Erasure: ESD and UCE move the erased class, deltas are exact and swap bit for bit, an
ESD job resumes, and erased inversion and generation use each class's own delta."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file as load_tokens

from dafusion import pipeline
from dafusion.checkpoint import Checkpoint
from dafusion.datasets import few_shot
from dafusion.deltas import DeltaSwitch, delta_path, load_delta, save_delta
from dafusion.erasure import (
    cross_attention_projections,
    erasure_scores,
    esd,
    trained_names,
    uce,
)
from dafusion.images import load_image
from dafusion.inversion import learn_tokens
from dafusion.io import write_parquet
from dafusion.manifest import class_names, class_token
from dafusion.models import load_components
from dafusion.settings import (
    ErasureSettings,
    GenerationSettings,
    InversionSettings,
    MethodSettings,
    ModelSettings,
)
from dafusion.shards import read_images

NAMES = ["zero", "one", "two", "three", "four"]


def _fresh(tiny_dir):
    return load_components(tiny_dir, torch.device("cpu"), torch.float32)


def _state(unet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def _scores(components, path, settings, erased="zero"):
    table = erasure_scores(
        components, DeltaSwitch(components.unet), {erased: path}, {erased: [erased]}, NAMES,
        settings, 32,
    )  # fmt: skip
    table = table.set_index("class_name")
    assert table.loc[erased, "erased"] and table["erased"].sum() == 1
    return table["erased_fraction"]


def _short_esd(**changes) -> ErasureSettings:
    settings = ErasureSettings(
        method="esd", iterations=10, lr=2e-3, train_method="xattn", ddim_steps=10,
        prompt="{name}", check_prompt="{name}",
    )  # fmt: skip
    return settings.replace(**changes)


def test_esd_erases_its_class_far_more_than_the_others(tiny_dir, tmp_path):
    components = _fresh(tiny_dir)
    base = _state(components.unet)
    settings = _short_esd()
    tensors, losses = esd(components, ["zero"], settings, 32, stream="zero", progress=False)
    assert torch.equal(torch.as_tensor(base["conv_in.weight"]), components.unet.conv_in.weight)
    assert sorted(tensors) == sorted(trained_names(components.unet, "xattn"))
    assert all(".attn2." in name for name in tensors)
    assert losses.shape == (10,) and (losses > 0).all()
    path = tmp_path / "zero.safetensors"
    save_delta(path, tensors, torch.float32, {})
    scores = _scores(components, path, settings)
    others = scores.drop("zero")
    assert scores["zero"] > 0.5, scores
    assert others.abs().max() < scores["zero"] / 3, scores


def test_uce_erases_its_class_and_preserves_the_others(tiny_dir, tmp_path):
    components = _fresh(tiny_dir)
    settings = ErasureSettings(method="uce", prompt="a photo of a {name}")
    prompts = [settings.prompt.format(name=n) for n in NAMES]
    tensors = uce(components, prompts[:1], prompts[1:], settings)
    assert sorted(tensors) == sorted(cross_attention_projections(components.unet, True))
    assert all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in tensors)
    path = tmp_path / "zero.safetensors"
    save_delta(path, tensors, torch.float32, {})
    scores = _scores(components, path, settings)
    assert scores["zero"] > 0.5, scores
    # The prompts differ in one token of a random text encoder, so some leakage is inherent:
    # on tiny models of seeds 0-3 zero's score was 2.0-11.6 times the largest other (2.4 at
    # the embedded default's seed 0, whose weights tests/test_tiny.py pins).
    assert scores.drop("zero").abs().max() < scores["zero"] / 2, scores
    # Without the preserve term's pull the other classes move more: preservation works.
    free = uce(components, prompts[:1], [], settings.replace(preserve_scale=0.0))
    save_delta(path, free, torch.float32, {})
    unpreserved = _scores(components, path, settings)
    assert unpreserved.drop("zero").abs().sum() > scores.drop("zero").abs().sum()


def test_the_trained_parameter_sets_follow_the_esd_code(components):
    unet = components.unet
    every = [n for n, _ in unet.named_parameters()]
    assert trained_names(unet, "full") == every
    noxattn = trained_names(unet, "noxattn")
    assert not any(".attn2." in n or n.startswith("time_embedding.") for n in noxattn)
    assert "conv_out.weight" not in noxattn and "conv_in.weight" in noxattn
    assert set(noxattn) | set(trained_names(unet, "xattn")) < set(every)


def test_base_plus_delta_is_the_edited_unet_and_swaps_restore_the_base(tiny_dir, tmp_path):
    components = _fresh(tiny_dir)
    settings = ErasureSettings(method="uce", prompt="a photo of a {name}")
    base = _state(components.unet)
    deltas = {}
    for name in ("zero", "one"):
        prompt = settings.prompt.format(name=name)
        deltas[name] = tmp_path / f"{name}.safetensors"
        save_delta(deltas[name], uce(components, [prompt], [], settings), torch.float32, {})
    # A partial delta (ESD xattn-like: one extra tensor) exercises restoring what it alone changed.
    extra = {"conv_in.weight": components.unet.conv_in.weight * 2}
    deltas["extra"] = tmp_path / "extra.safetensors"
    save_delta(deltas["extra"], extra, torch.float32, {})
    switch = DeltaSwitch(components.unet)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    hidden = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    for name in ("zero", "one", "extra", "zero"):
        switch.use_file(deltas[name])
        edited = _fresh(tiny_dir).unet
        edited.load_state_dict({**base, **load_delta(deltas[name])})
        for key, value in edited.state_dict().items():
            assert torch.equal(value, components.unet.state_dict()[key]), (name, key)
        with torch.no_grad():
            torch.testing.assert_close(
                components.unet(x, 10, hidden).sample, edited(x, 10, hidden).sample, rtol=0, atol=0
            )
    switch.restore()
    for key, value in components.unet.state_dict().items():
        assert torch.equal(value, base[key]), key


def test_a_float16_delta_is_stored_in_half_precision(tmp_path):
    path = tmp_path / "d.safetensors"
    save_delta(path, {"w": torch.ones(2, 2)}, torch.float16, {"erased": ["x"]})
    assert load_delta(path)["w"].dtype == torch.float16


def test_a_killed_esd_job_resumes_to_the_same_delta(tiny_dir, tmp_path, monkeypatch):
    settings = _short_esd(iterations=5, checkpoint_every=2)
    whole, whole_losses = esd(_fresh(tiny_dir), ["one"], settings, 32, "one", progress=False)
    save = Checkpoint.save

    def save_then_die(self, step, *args):
        save(self, step, *args)
        raise KeyboardInterrupt  # the job is killed right after its first checkpoint

    monkeypatch.setattr(Checkpoint, "save", save_then_die)
    checkpoint = Checkpoint(tmp_path / "ckpt.safetensors", fingerprint="job")
    with pytest.raises(KeyboardInterrupt):
        esd(_fresh(tiny_dir), ["one"], settings, 32, "one", checkpoint, progress=False)
    monkeypatch.setattr(Checkpoint, "save", save)
    resumed, losses = esd(_fresh(tiny_dir), ["one"], settings, 32, "one", checkpoint, False)
    for name, tensor in whole.items():
        assert torch.equal(tensor, resumed[name]), name
    assert (losses == whole_losses).all()


def _pool(digits, labels=(0, 1, 2)):
    pool = digits[0]
    subset = few_shot(pool[pool["label"].isin(labels)], seed=0, shots=1)
    return subset.assign(label=subset["label"].map({c: i for i, c in enumerate(labels)}))


def test_erase_job_writes_deltas_and_check_and_reuses_them(tiny_dir, digits, tmp_path, caplog):
    pool = tmp_path / "pool.parquet"
    write_parquet(_pool(digits), pool)
    model = ModelSettings(pretrained="tiny", resolution=32)
    settings = ErasureSettings(method="uce", prompt="a photo of a {name}", delta_dtype="float16")
    output = tmp_path / "erasure/uce/check.parquet"
    pipeline.erase(str(pool), model, settings, str(output), model_dir=tiny_dir)
    table = pd.read_parquet(output)
    names = class_names(_pool(digits))
    assert len(table) == len(names) ** 2
    assert sorted(p.name for p in output.parent.glob("*.safetensors")) == sorted(
        delta_path(output.parent, n).name for n in names
    )
    own = table[table["delta"] == table["class_name"]]
    assert own["erased"].all() and (own["erased_fraction"] > 0.3).all()
    stored = load_delta(delta_path(output.parent, names[0]))
    assert {t.dtype for t in stored.values()} == {torch.float16}
    first = {p.name: p.stat().st_mtime_ns for p in output.parent.glob("*.safetensors")}
    caplog.set_level("INFO", logger="dafusion")
    pipeline.erase(str(pool), model, settings, str(output), model_dir=tiny_dir)
    assert first == {p.name: p.stat().st_mtime_ns for p in output.parent.glob("*.safetensors")}
    assert caplog.text.count("reusing") == len(names)
    joint = tmp_path / "erasure/uce-joint/check.parquet"
    pipeline.erase(
        str(pool), model, settings.replace(scope="joint"), str(joint), model_dir=tiny_dir
    )
    assert [p.name for p in joint.parent.glob("*.safetensors")] == ["joint.safetensors"]
    assert pd.read_parquet(joint)["erased"].all()


def _erasure_folder(components, names, tmp_path, assign):
    """A check table whose class c uses the delta `assign[c]` (conv_in scaled per delta)."""
    folder = tmp_path / "erasure"
    rows = []
    for name in names:
        key = assign[name]
        path = folder / f"{key}.safetensors"
        if not path.exists():
            factor = 1.5 + names.index(key)
            save_delta(path, {"conv_in.weight": components.unet.conv_in.weight * factor},
                       torch.float32, {})  # fmt: skip
        rows.append(
            {"delta": key, "file": path.name, "fingerprint": f"fp-{key}", "class_name": name,
             "erased": True, "erased_fraction": 1.0}
        )  # fmt: skip
    write_parquet(pd.DataFrame(rows), folder / "check.parquet")
    return str(folder / "check.parquet")


def _split(digits, labels, tmp_path):
    """A one-shot split of the digits `labels`, written to disk: (manifest, path, names)."""
    split = _pool(digits, labels=labels)
    split_path = tmp_path / "split.parquet"
    write_parquet(split, split_path)
    return split, split_path, class_names(split)


def test_an_erased_generate_job_uses_each_class_own_delta(tiny_dir, digits, tmp_path):
    _, split_path, names = _split(digits, (0, 1), tmp_path)
    components = _fresh(tiny_dir)
    model = ModelSettings(pretrained="tiny", resolution=32)
    method = MethodSettings(
        kind="sdedit", prompt="a photo of a {name}", strengths=[0.75], erased=True
    )
    settings = GenerationSettings(num_synthetic=2, num_inference_steps=4, batch_size=4)

    def run(tag, assign):
        erasure = _erasure_folder(components, names, tmp_path / tag, assign) if assign else None
        out = tmp_path / tag / "synthetic/index.parquet"
        pipeline.generate(
            str(split_path), model, "m", method, settings, seed=0, output=str(out),
            model_dir=tiny_dir, erasure_path=erasure,
        )  # fmt: skip
        index = pd.read_parquet(out)
        return {k: v[0] for k, v in read_images(out).items()}, index

    own, index = run("own", {n: n for n in names})
    assert set(index["erasure"]) == {f"fp-{n}" for n in names}
    labels = dict(zip(index["key"], index["class_name"], strict=True))
    plain, _ = run("none", None)
    for name in names:
        every_one, _ = run(f"all-{name}", {n: name for n in names})
        for key, image in own.items():
            if labels[key] == name:
                assert image == every_one[key], key  # class c's images: class c's delta
                assert image != plain[key], key  # ... not the base UNet
            else:
                assert image != every_one[key], key  # ... and not another class's delta


def test_erased_inversion_learns_each_token_against_its_class_delta(tiny_dir, digits, tmp_path):
    split, split_path, names = _split(digits, (3, 6), tmp_path)
    components = _fresh(tiny_dir)
    erasure = _erasure_folder(components, names, tmp_path, {n: n for n in names})
    model = ModelSettings(pretrained="tiny", resolution=32)
    settings = InversionSettings(steps=3, batch_size=2, learning_rate=1e-2, checkpoint_every=1)
    out = tmp_path / "tokens.safetensors"
    pipeline.invert(str(split_path), model, settings, seed=1, output=str(out),
                    model_dir=tiny_dir, erasure_path=erasure)  # fmt: skip
    tokens = load_tokens(out)
    assert not list(tmp_path.glob(".*checkpoint*"))  # per-class checkpoints cleaned up
    images = [load_image(r) for r in split.to_dict("records")]
    for label, name in enumerate(names):
        alone = _fresh(tiny_dir)
        DeltaSwitch(alone.unet).use_file(tmp_path / "erasure" / f"{name}.safetensors")
        own = [im for im, y in zip(images, split["label"], strict=True) if y == label]
        expected = learn_tokens(
            alone, own, [0] * len(own), [name], settings, seed=1, resolution=32, progress=False
        )
        token = class_token(name)
        torch.testing.assert_close(tokens[token], expected.tokens[token], rtol=0, atol=1e-6)
        base = learn_tokens(
            _fresh(tiny_dir), own, [0] * len(own), [name], settings, seed=1, resolution=32,
            progress=False,
        )  # fmt: skip
        assert not torch.allclose(tokens[token], base.tokens[token])
