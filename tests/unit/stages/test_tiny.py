import json
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dafusion.stages.tiny import CORPUS, canonical_name, learn_bpe, reinitialize, weights_digest

# The embedded default's weights at seed 0. They depend on (seed, component, parameter name,
# shape) only, so a library release must not change them: if this fails after an upgrade, the
# release renamed or reshaped a parameter (or torch changed its generator), and every result
# of the embedded default changes with it. Update the pins only on purpose, saying so.
TINY_DIGEST = "f3203a743dd92564d8b7483b6918f6a3e7d9a158b56d05fad22326eb0259ec33"
TINY_VALUES = {
    ("unet", "conv_in.weight"): [-0.0759548544883728, 0.058488331735134125],
    ("vae", "encoder.conv_in.weight"): [0.07341945171356201, -0.04713492467999458],
    ("text_encoder", "embeddings.token_embedding.weight"): [
        -0.03324373438954353,
        -0.015082813799381256,
    ],
}
FILES = {
    "unet": "unet/diffusion_pytorch_model.safetensors",
    "vae": "vae/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
}


def _versions() -> str:
    return ", ".join(f"{n} {version(n)}" for n in ("torch", "diffusers", "transformers"))


def test_bpe_learns_every_corpus_word_as_one_token(components):
    tokenizer = components.tokenizer
    for word in ("photo", "the", "seven", "rendering"):
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1
    # Any text still tokenizes, from the byte alphabet.
    ids = tokenizer("xylophone ünïcode", add_special_tokens=False).input_ids
    assert len(ids) > 2 and tokenizer.unk_token_id not in ids
    vocab, merges = learn_bpe(CORPUS)
    assert len(vocab) == 512 + len(merges) + 2
    assert json.loads(json.dumps(vocab)) == vocab


def test_tiny_model_is_reproducible_and_loads_like_a_checkpoint(tiny_dir, tmp_path, components):
    from dafusion.stages.tiny import save_tiny_model

    again = tmp_path / "again"
    torch.manual_seed(12345)  # the global generator plays no part in the weights
    save_tiny_model(again)
    for part in FILES.values():
        assert (again / part).read_bytes() == (Path(tiny_dir) / part).read_bytes()
    assert type(components.scheduler).__name__ == "PNDMScheduler"
    assert components.vae_scale_factor == 2
    assert components.text_encoder.config.hidden_size == components.unet.config.cross_attention_dim
    assert not any(p.requires_grad for p in components.unet.parameters())
    assert components.unet.dtype == torch.float32


def test_tiny_weights_do_not_depend_on_library_versions(tiny_dir):
    for (component, name), expected in TINY_VALUES.items():
        tensors = {
            canonical_name(component, key): value
            for key, value in load_file(Path(tiny_dir) / FILES[component]).items()
        }
        assert tensors[name].flatten()[:2].tolist() == expected, (
            f"the tiny model's {component} parameter {name} changed under {_versions()}"
        )
    assert weights_digest(tiny_dir) == TINY_DIGEST, (
        f"the tiny model's weights changed under {_versions()}: a parameter was renamed, "
        "added or reshaped, so every result of the embedded default changes; see TINY_DIGEST"
    )


def test_weights_depend_on_names_not_on_creation_order_or_global_seed():
    def model(order):
        torch.manual_seed(len(order))  # the library's init differs; the result must not
        parts = {
            "proj": lambda: nn.Linear(4, 3),
            "norm": lambda: nn.LayerNorm(3),
            "conv": lambda: nn.Conv2d(2, 5, 3),
            "embed": lambda: nn.Embedding(7, 3),
        }
        return nn.ModuleDict({name: parts[name]() for name in order})

    first, second = model(["proj", "norm", "conv", "embed"]), model(["embed", "conv", "proj"])
    reinitialize(first, "unet", seed=0)
    reinitialize(second, "unet", seed=0)
    for name, value in second.state_dict().items():
        assert torch.equal(value, first.state_dict()[name]), name
    assert torch.equal(first.norm.weight, torch.ones(3)) and not first.proj.bias.any()
    # fan-in bound 1/sqrt(18) for the convolution; CLIP's std 0.02 for embeddings
    assert first.conv.weight.abs().max() <= 18**-0.5 and first.embed.weight.std() < 0.03
    other = model(["proj"])
    reinitialize(other, "unet", seed=1)
    assert not torch.equal(other.proj.weight, first.proj.weight)
    reinitialize(other, "vae", seed=0)  # the component is part of the name
    assert not torch.equal(other.proj.weight, first.proj.weight)


def test_the_text_encoders_names_are_the_same_in_every_transformers_release():
    assert canonical_name("text_encoder", "text_model.embeddings.token_embedding.weight") == (
        "embeddings.token_embedding.weight"
    )
    assert canonical_name("unet", "text_model.x") == "text_model.x"


def test_parameters_and_buffers_without_an_init_family_are_errors():
    with pytest.raises(TypeError, match="BatchNorm1d"):
        reinitialize(nn.Sequential(nn.BatchNorm1d(3)), "unet", seed=0)
    with_buffer = nn.Linear(2, 2)
    with_buffer.register_buffer("noise", torch.randn(2))
    with pytest.raises(TypeError, match="noise"):
        reinitialize(with_buffer, "unet", seed=0)
    with_ids = nn.Linear(2, 2)
    with_ids.register_buffer("position_ids", torch.arange(4))  # kept as the library made it
    reinitialize(with_ids, "unet", seed=0)
    assert with_ids.position_ids.tolist() == [0, 1, 2, 3]


def test_missing_model_error_names_the_key(tmp_path):
    import pytest

    from dafusion.stages.models import load_components

    with pytest.raises(OSError, match="model.pretrained"):
        load_components("nobody/no-such-model", torch.device("cpu"), torch.float32)
