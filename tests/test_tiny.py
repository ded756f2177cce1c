import json
from pathlib import Path

import torch

from dafusion.tiny import CORPUS, learn_bpe


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
    from dafusion.tiny import save_tiny_model

    again = tmp_path / "again"
    save_tiny_model(again)
    for part in (
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ):
        assert (again / part).read_bytes() == (Path(tiny_dir) / part).read_bytes()
    assert type(components.scheduler).__name__ == "PNDMScheduler"
    assert components.vae_scale_factor == 2
    assert components.text_encoder.config.hidden_size == components.unet.config.cross_attention_dim
    assert not any(p.requires_grad for p in components.unet.parameters())
    assert components.unet.dtype == torch.float32


def test_missing_model_error_names_the_key(tmp_path):
    import pytest

    from dafusion.models import load_components

    with pytest.raises(OSError, match="model.pretrained"):
        load_components("nobody/no-such-model", torch.device("cpu"), torch.float32)
