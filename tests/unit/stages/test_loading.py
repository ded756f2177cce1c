"""The real loading paths, on fixtures in the exact on-disk formats, offline."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dafusion.stages.models import load_components


def _hub_cache(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """A Hugging Face hub cache entry as `huggingface_hub` lays it out."""
    root = cache / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(revision)
    snapshot = root / "snapshots" / revision
    for name, source in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)


def test_hub_id_loads_from_the_local_cache(tiny_dir, tmp_path, monkeypatch):
    """`model.pretrained: org/name` reads the Hugging Face cache, as for SD v1-4."""
    files = {str(p.relative_to(tiny_dir)): p for p in Path(tiny_dir).rglob("*") if p.is_file()}
    _hub_cache(tmp_path / "hub", "CompVis/stable-diffusion-v1-4", files)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    import transformers.utils.hub as th

    if hasattr(th, "TRANSFORMERS_CACHE"):
        monkeypatch.setattr(th, "TRANSFORMERS_CACHE", str(tmp_path / "hub"))
    comp = load_components("CompVis/stable-diffusion-v1-4", torch.device("cpu"), torch.float32)
    local = load_components(tiny_dir, torch.device("cpu"), torch.float32)
    for a, b in zip(comp.unet.parameters(), local.unet.parameters(), strict=True):
        assert torch.equal(a, b)
    assert type(comp.scheduler).__name__ == "PNDMScheduler"


def test_resnet50_weights_from_a_file_and_from_the_cache(tmp_path, monkeypatch):
    from torchvision.models import resnet50

    from dafusion.stages.backbones import RESNET50_HUB, build_backbone

    torch.manual_seed(3)
    state = {k: v.contiguous() for k, v in resnet50().state_dict().items()}
    path = tmp_path / "resnet50.safetensors"
    save_file(state, str(path))
    backbone = build_backbone("resnet50", weights=str(path))
    assert backbone.frozen and backbone.dim == 2048
    loaded = backbone.module.state_dict()
    assert torch.equal(loaded["layer4.2.conv3.weight"], state["layer4.2.conv3.weight"])
    assert torch.equal(loaded["bn1.running_var"], state["bn1.running_var"])

    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="classifier.weights.*hf download timm/resnet50.tv2_in1k"):
        build_backbone("resnet50")
    _hub_cache(tmp_path / "hub", RESNET50_HUB, {"model.safetensors": path})
    cached = build_backbone("resnet50").module.state_dict()
    assert "fc.weight" not in cached  # the ImageNet head is dropped
    assert torch.equal(cached["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_deit_from_a_directory_takes_any_image_size(tmp_path):
    from transformers import DeiTConfig, DeiTModel

    from dafusion.stages.backbones import build_backbone

    config = DeiTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=64,
        patch_size=16,
    )
    DeiTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "deit")
    backbone = build_backbone("deit", weights=str(tmp_path / "deit"))
    assert backbone.dim == 32
    with torch.no_grad():
        assert backbone.module(torch.zeros(2, 3, 96, 96)).shape == (2, 32)
