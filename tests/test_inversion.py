import torch

from dafusion.datasets import class_names, few_shot, load_image
from dafusion.inversion import InversionSettings, invert
from dafusion.tokens import class_token, load_into, save_tokens


def _split(digits, classes):
    pool = digits[0]
    subset = few_shot(pool[pool["label"].isin(classes)], seed=0, shots=2)
    remap = {c: i for i, c in enumerate(sorted(classes))}
    subset = subset.assign(label=subset["label"].map(remap))
    return (
        [load_image(r) for r in subset.to_dict("records")],
        subset["label"].tolist(),
        class_names(subset),
    )


def test_only_new_rows_are_learned(components, digits):
    images, labels, names = _split(digits, [0, 1])
    before = components.text_encoder.get_input_embeddings().weight.clone()
    settings = InversionSettings(steps=3, batch_size=2, learning_rate=1e-2)
    tokens = invert(
        components, images, labels, names, settings, seed=0, resolution=32, progress=False
    )
    assert list(tokens) == ["<zero>", "<one>"]
    the = components.tokenizer("the", add_special_tokens=False).input_ids
    assert len(the) == 1
    after = components.text_encoder.get_input_embeddings().weight
    assert torch.equal(before, after)  # every existing row is bit-identical
    for rows in tokens.values():
        assert rows.shape == (1, 32)
        assert not torch.allclose(rows[0], before[the[0]])  # moved away from the initializer


def test_joint_run_equals_separate_runs(tiny_dir, digits):
    """The sum of per-class mean losses gives each class exactly its separate-run gradient."""
    from dafusion.models import load_components

    def fresh():
        return load_components(tiny_dir, torch.device("cpu"), torch.float32)

    settings = InversionSettings(steps=3, batch_size=2, learning_rate=5e-3)
    images, labels, names = _split(digits, [2, 5, 7])
    joint = invert(fresh(), images, labels, names, settings, seed=4, resolution=32, progress=False)
    for c, name in enumerate(names):
        own = [im for im, lab in zip(images, labels, strict=True) if lab == c]
        alone = invert(
            fresh(), own, [0] * len(own), [name], settings, seed=4, resolution=32, progress=False
        )
        token = class_token(name)
        torch.testing.assert_close(joint[token], alone[token], atol=1e-5, rtol=0)


def test_multi_vector_tokens_and_class_name_initializer(components, digits):
    images, labels, names = _split(digits, [3, 4])
    settings = InversionSettings(steps=1, batch_size=1, num_vectors=3, initializer="class_name")
    tokens = invert(
        components, images, labels, names, settings, seed=0, resolution=32, progress=False
    )
    assert tokens["<three>"].shape == (3, 32)


def test_tokens_load_into_a_diffusers_pipeline(tiny_dir, tmp_path, components):
    from diffusers import StableDiffusionPipeline

    rows = {"<zero>": torch.randn(1, 32), "<seven>": torch.randn(2, 32)}
    path = tmp_path / "tokens.safetensors"
    save_tokens(path, rows, {"classes": ["zero", "seven"]})
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, use_safetensors=True)
    from safetensors.torch import load_file

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
