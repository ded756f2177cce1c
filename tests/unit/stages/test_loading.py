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


def _fp16_fix_like(sdxl_dir: str, folder: Path, **config) -> Path:
    """A VAE of its own in madebyollin/sdxl-vae-fp16-fix's layout (config.json and weights
    at the top), here SDXL's tiny VAE with `config` changed."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(sdxl_dir, subfolder="vae", use_safetensors=True)
    vae.register_to_config(**config)
    vae.save_pretrained(folder, safe_serialization=True)
    return folder


def test_the_vae_runs_in_the_dtype_of_its_setting(tiny_dir, tiny_sdxl_dir, tmp_path, monkeypatch):
    """`model.vae`: the checkpoint's VAE in the model's dtype (SD 1.x/2.x, as before), in
    float32 under float16 where diffusers' SDXL pipelines upcast it (`force_upcast`), in
    float32 always for `float32`; another VAE from its folder or the cache, in float16 when
    its config does not ask for an upcast (the fp16-fix's)."""
    cpu, half = torch.device("cpu"), torch.float16

    def dtypes(model, vae="checkpoint"):
        c = load_components(model, cpu, half, vae=vae)
        return c.vae.dtype, c.unet.dtype

    assert dtypes(tiny_dir) == (half, half)
    assert dtypes(tiny_dir, "float32") == (torch.float32, half)
    assert dtypes(tiny_sdxl_dir) == (torch.float32, half)  # SDXL base's VAE overflows
    assert load_components(tiny_sdxl_dir, cpu, torch.float32).vae.dtype == torch.float32
    fixed = _fp16_fix_like(tiny_sdxl_dir, tmp_path / "sdxl-vae-fp16-fix", force_upcast=False)
    assert dtypes(tiny_sdxl_dir, str(fixed)) == (half, half)
    loaded = load_components(tiny_sdxl_dir, cpu, torch.float32, vae=str(fixed)).vae
    own = load_components(tiny_sdxl_dir, cpu, torch.float32).vae
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), own.state_dict().values(), strict=True)
    )
    # A whole diffusers model's folder gives its vae/; a hub id is read from the cache.
    assert dtypes(tiny_sdxl_dir, tiny_sdxl_dir) == (torch.float32, half)
    files = {p.name: p for p in fixed.iterdir()}
    _hub_cache(tmp_path / "hub", "madebyollin/sdxl-vae-fp16-fix", files)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert dtypes(tiny_sdxl_dir, "madebyollin/sdxl-vae-fp16-fix") == (half, half)


def test_a_vae_that_is_not_there_or_does_not_fit_names_the_key(tiny_dir, tiny_sdxl_dir, tmp_path):
    cpu = torch.device("cpu")
    with pytest.raises(OSError, match="'model.vae'.*hf download org/missing-vae"):
        load_components(tiny_sdxl_dir, cpu, torch.float32, vae="org/missing-vae")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="'model.vae'.*holds no VAE"):
        load_components(tiny_sdxl_dir, cpu, torch.float32, vae=str(tmp_path / "empty"))
    from diffusers import AutoencoderKL

    blocks = {"block_out_channels": (32,), "norm_num_groups": 32, "latent_channels": 8}
    AutoencoderKL(**blocks).save_pretrained(tmp_path / "eight", safe_serialization=True)
    with pytest.raises(ValueError, match="'model.vae'.*8-channel latents.*takes 4"):
        load_components(tiny_dir, cpu, torch.float32, vae=str(tmp_path / "eight"))
