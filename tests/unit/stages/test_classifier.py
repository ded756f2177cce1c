import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO

from dafusion.data.datasets import few_shot
from dafusion.settings import ClassifierSettings
from dafusion.stages.backbones import Backbone, SmallCNN
from dafusion.stages.classifier import (
    augment,
    draw_batch,
    evaluate,
    synthetic_lookup,
    train_classifier,
)

# The digits are 32 pixels: a small CNN at their size (the defaults are the paper's ResNet-50).
SMALL = ClassifierSettings(backbone="small-cnn", image_size=32)


def test_alpha_mixing_rate_and_variants():
    """Eq. 6-7: synthetic at rate alpha, always a variant of the drawn real image."""
    variants = [torch.arange(3 * i, 3 * i + 3) for i in range(10)]
    g = torch.Generator().manual_seed(0)
    real, syn = draw_batch(g, variants, alpha=0.3, batch_size=40000)
    rate = (syn >= 0).float().mean().item()
    assert abs(rate - 0.3) < 0.01
    chosen = syn >= 0
    assert torch.equal(syn[chosen] // 3, real[chosen])  # only variants of the drawn image
    counts = np.bincount(syn[chosen] % 3, minlength=3) / chosen.sum().item()
    assert np.allclose(counts, 1 / 3, atol=0.02)  # j uniform over the M variants
    assert np.allclose(np.bincount(real, minlength=10) / 40000, 0.1, atol=0.01)


def test_draw_batch_matches_per_element_definition():
    """The vectorized draw gives exactly what a loop over batch elements gives (same seed)."""
    from dafusion.stages.classifier import VariantTable

    variants = [torch.arange(10 * i, 10 * i + i % 4) for i in range(7)]  # M = 0..3 per image
    g = torch.Generator().manual_seed(3)
    real, syn = draw_batch(g, VariantTable(variants), alpha=0.6, batch_size=5000)
    g = torch.Generator().manual_seed(3)
    ref_real = torch.randint(len(variants), (5000,), generator=g)
    swap = torch.rand(5000, generator=g) < 0.6
    pick = torch.rand(5000, generator=g)
    ref_syn = torch.full((5000,), -1, dtype=torch.long)
    for b in torch.nonzero(swap).flatten().tolist():
        options = variants[ref_real[b]]
        if len(options):
            ref_syn[b] = options[int(pick[b] * len(options))]
    assert torch.equal(real, ref_real) and torch.equal(syn, ref_syn)
    assert (syn >= 0).any() and set((syn[syn >= 0] % 10).tolist()) == {0, 1, 2}


def test_real_images_without_variants_stay_real():
    variants = [torch.zeros(0, dtype=torch.long)] * 4
    _, syn = draw_batch(torch.Generator().manual_seed(0), variants, alpha=1.0, batch_size=100)
    assert (syn == -1).all()


def test_synthetic_lookup():
    index = pd.DataFrame({"source_key": ["b", "a", "b"]})
    lookup = synthetic_lookup(["a", "b", "c"], index)
    assert [v.tolist() for v in lookup] == [[1], [0, 2], []]


def test_evaluation_covers_every_image_once():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            # predicts class = mean red channel > 0
            red = x[:, 0].mean(dim=(1, 2))
            return torch.stack([-red, red], dim=1)

    images = torch.zeros(1001, 3, 4, 4, dtype=torch.uint8)
    images[:300, 0] = 255
    labels = torch.ones(1001, dtype=torch.long)
    metrics = evaluate(Fixed(), images, labels, num_classes=2, batch=64)
    assert metrics["accuracy"] == pytest.approx(300 / 1001)
    assert metrics["accuracy/1"] == pytest.approx(300 / 1001)
    assert np.isnan(metrics["accuracy/0"])


def test_augment_flips_and_rotates_per_sample():
    x = torch.zeros(64, 3, 9, 9)
    x[:, :, :, :3] = 1.0  # a bar on the left
    out = augment(x, torch.Generator().manual_seed(0), degrees=0.0)
    left = out[:, 0, 4, 0] > 0.5
    assert 0 < left.sum() < 64  # each sample flipped independently
    unrotated = augment(x, torch.Generator().manual_seed(1), degrees=0.0)
    assert set(unrotated.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.workflow  # a whole training run
def test_training_learns_digits_and_reports_per_class_metrics(digits):
    pool, val = digits
    subset = few_shot(pool, seed=0, shots=8)
    settings = SMALL.replace(steps=60, eval_interval=30, lr=1e-3, augmentation="none")
    names = [f"c{i}" for i in range(10)]
    metrics = train_classifier(
        subset, val, names, None, None, settings, seed=0, device=torch.device("cpu"), progress=False
    )
    assert sorted(metrics["step"].unique()) == [30, 60]
    acc = metrics[(metrics["metric"] == "accuracy") & (metrics["step"] == 60)]["value"].item()
    assert acc > 0.5  # 10 classes: chance is 0.1
    assert {f"accuracy/c{i}" for i in range(10)} <= set(metrics["metric"])


def test_small_cnn_features():
    assert SmallCNN()(torch.zeros(2, 3, 32, 32)).shape == (2, 64)  # 4 x its width of 16


def test_channels_last_features_equal_the_plain_layout():
    """The classifier runs its convolutions channels-last for speed: same features."""
    import copy

    from dafusion.stages.backbones import build_backbone
    from dafusion.stages.classifier import Classifier

    torch.manual_seed(0)
    model = Classifier(build_backbone("small-cnn"), 10, "original").eval()
    plain = copy.deepcopy(model.features).to(memory_format=torch.contiguous_format)
    x = torch.rand(4, 3, 32, 32)
    assert model.features.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model.embed(x), plain(model.normalize(x)), atol=1e-5, rtol=1e-5)


def _frozen_small_cnn(*args, **kwargs):
    torch.manual_seed(0)
    net = SmallCNN(width=16)
    return Backbone(net, net.dim, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), frozen=True)


def _running_means(model):
    return [m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize(("bn_mode", "changes"), [(None, True), ("eval", False)])
def test_frozen_backbone_batchnorm(digits, monkeypatch, bn_mode, changes):
    """The original calls model.train() before its training steps (train_classifier.py
    l. 171) and model.eval() before evaluating (l. 210): a frozen backbone's BatchNorm
    normalizes each training batch with the batch's own statistics and re-estimates its
    running statistics, which evaluation then uses. That is the default here (the paper
    path); bn_mode eval (protocol clean) keeps the running statistics fixed throughout."""
    import dafusion.stages.classifier as clf

    seen, modes = {}, []

    def build(*args, **kwargs):
        backbone = _frozen_small_cnn()
        seen["backbone"] = backbone
        seen["before"] = _running_means(backbone.module)
        return backbone

    original_init = clf.Classifier.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        norms = [m for m in self.features.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        # (batch size, BatchNorm in training mode) at every forward: training batches have
        # SMALL.batch_size (32) images, evaluation the 20 of the val split below
        norms[0].register_forward_pre_hook(lambda m, x: modes.append((len(x[0]), m.training)))

    monkeypatch.setattr(clf, "build_backbone", build)
    monkeypatch.setattr(clf.Classifier, "__init__", init)
    pool, val = digits
    settings = SMALL.replace(steps=5, eval_interval=5, feature_cache=False)
    if bn_mode is not None:
        settings = settings.replace(bn_mode=bn_mode)
    clf.train_classifier(
        few_shot(pool, 0, 2), val.iloc[:20], [str(i) for i in range(10)], None, None, settings,
        seed=0, device=torch.device("cpu"), progress=False,
    )  # fmt: skip
    after = _running_means(seen["backbone"].module)
    same = all(torch.equal(a, b) for a, b in zip(seen["before"], after, strict=True))
    assert same != changes
    steps = [norm for size, norm in modes if size == settings.batch_size]
    evaluations = [norm for size, norm in modes if size == 20]
    assert len(steps) == 5 and all(norm == changes for norm in steps)
    assert evaluations and not any(evaluations)  # evaluation in eval mode, as the original


def test_which_backbones_have_batchnorm():
    """BATCHNORM_BACKBONES (what start-up checks bn_mode against) are exactly the frozen
    backbones whose training mode changes their features; DeiT has none (no BatchNorm, its
    dropout 0), so its evaluation images are embedded once whatever bn_mode says."""
    from dafusion.settings import BATCHNORM_BACKBONES
    from dafusion.stages.backbones import build_backbone
    from dafusion.stages.classifier import changes_in_training

    for name in ("small-cnn", "resnet50", "deit"):
        backbone = build_backbone(name, pretrained=False)
        moving = backbone.frozen and changes_in_training(backbone.module)
        assert moving == (name in BATCHNORM_BACKBONES), name


def _frozen_pixels(*args, **kwargs):
    """A frozen feature extractor a linear head can classify digits with: 8x8 pixels."""
    net = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Flatten())
    return Backbone(net, 3 * 8 * 8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), frozen=True)


def test_feature_cache_matches_step_by_step_accuracy(digits, monkeypatch):
    import dafusion.stages.classifier as clf

    monkeypatch.setattr(clf, "build_backbone", _frozen_pixels)
    pool, val = digits
    accuracy = {}
    for cache in (True, False):
        settings = SMALL.replace(
            steps=300, eval_interval=100, lr=1e-2, feature_cache=cache, cache_views=8
        )
        metrics = clf.train_classifier(
            few_shot(pool, 0, 8),
            val,
            [str(i) for i in range(10)],
            None,
            None,
            settings,
            seed=0,
            device=torch.device("cpu"),
            progress=False,
        )
        val_acc = metrics[(metrics["split"] == "val") & (metrics["metric"] == "accuracy")]
        accuracy[cache] = val_acc["value"].max()
    assert accuracy[True] > 0.5 and accuracy[False] > 0.5  # chance is 0.1
    assert abs(accuracy[True] - accuracy[False]) < 0.1


def test_default_draws_a_fresh_augmentation_every_step(digits, monkeypatch):
    """As the paper: by default the head never trains on a fixed set of cached views."""
    import dafusion.stages.classifier as clf

    monkeypatch.setattr(clf, "build_backbone", _frozen_pixels)
    seen = []

    def record(module, args):
        if module.training:  # training steps only, not evaluation
            seen.append(args[0].detach().clone())

    original_init = clf.Classifier.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.head.register_forward_pre_hook(record)

    monkeypatch.setattr(clf.Classifier, "__init__", init)
    pool, val = digits
    subset = few_shot(pool, 0, 1)  # 10 images
    distinct = {}
    for name, settings in (
        ("default", SMALL),
        ("cache", SMALL.replace(feature_cache=True)),
    ):
        seen.clear()
        clf.train_classifier(
            subset,
            val.iloc[:20],
            [str(i) for i in range(10)],
            None,
            None,
            settings.replace(steps=20, eval_interval=20),
            seed=0,
            device=torch.device("cpu"),
            progress=False,
        )
        rows = torch.cat(seen)
        assert len(rows) == 20 * SMALL.batch_size
        distinct[name] = len(torch.unique(rows, dim=0))
    views = len(subset) * SMALL.cache_views
    assert distinct["cache"] <= views  # the cache: at most cache_views views per image
    assert distinct["default"] > 2 * views  # fresh views: (almost) every draw is new


def test_randaugment_and_batch_cutmix_produce_valid_batches():
    from dafusion.stages.classifier import Augmenter, BatchCutMix

    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(16) % 4
    images = Augmenter(SMALL.replace(augmentation="randaugment"), torch.Generator())(x)
    assert images.shape == (16, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    mix = BatchCutMix(4, torch.Generator().manual_seed(1))
    outs = [mix(x.float() / 255, labels) for _ in range(6)]
    for images, targets in outs:
        assert images.shape == (16, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
        assert torch.allclose(targets.sum(dim=1), torch.ones(16))
    assert any((t.max(dim=1).values < 1).any() for _, t in outs)  # some batches are mixed


def test_original_evaluation_protocol():
    """6,400 draws with replacement; classes absent from the draw count as 0 (original)."""
    from dafusion.stages.classifier import metrics_from_logits

    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    labels = torch.tensor([0, 1])
    skip = metrics_from_logits(logits, labels, 3, absent="skip")
    zero = metrics_from_logits(logits, labels, 3, absent="zero")
    assert skip["mean_class_accuracy"] == 1.0
    assert zero["mean_class_accuracy"] == pytest.approx(2 / 3)

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    images = torch.zeros(10, 3, 2, 2, dtype=torch.uint8)
    labels = torch.zeros(10, dtype=torch.long)
    drawn = evaluate(
        Identity(), images, labels, 3, samples=6400, generator=torch.Generator().manual_seed(0)
    )
    assert drawn["accuracy"] == 1.0


def _benchmark(monkeypatch):
    """benchmarks/classifier.py as a module (it imports its sibling `common`)."""
    import importlib.util

    folder = REPO / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))
    spec = importlib.util.spec_from_file_location("benchmark_classifier", folder / "classifier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_dataloader_baseline_draws_as_eq_6_7(monkeypatch):
    """The plain DataLoader baseline mixes at rate alpha, only variants of the drawn image."""
    bench = _benchmark(monkeypatch)
    variants = [["0a", "0b"], [], ["2a"], ["3a", "3b", "3c"]]
    data = bench.PlainTrainSet(["0", "1", "2", "3"], [0, 1, 2, 3], variants, 0.3, lambda x: x)
    torch.manual_seed(0)
    draws = [(i, *data[i]) for i in range(4) for _ in range(3000)]
    assert all(label == i and image[0] == str(i) for i, image, label in draws)
    assert all(image == "1" for i, image, _ in draws if i == 1)  # no variants: stays real
    swapped = [image for i, image, _ in draws if i != 1 and image != str(i)]
    assert abs(len(swapped) / 9000 - 0.3) < 0.02
    picks = [image for image in swapped if image[0] == "3"]
    assert np.allclose([picks.count(f"3{c}") / len(picks) for c in "abc"], 1 / 3, atol=0.04)


def test_benchmark_dataloader_baseline_sees_this_stages_pixels(monkeypatch, digits):
    """Its images decoded once and normalized per item equal this stage's network input."""
    from PIL import Image

    from dafusion.data.images import load_image
    from dafusion.stages.backbones import ORIGINAL_MEAN, ORIGINAL_STD
    from dafusion.stages.classifier import Normalize, to_uint8

    bench = _benchmark(monkeypatch)
    _, val = digits
    pil = [load_image(r) for r in val.iloc[:8].to_dict("records")]
    pil[0] = pil[0].resize((20, 20), Image.NEAREST)  # a resize in the decode, too
    val_tf = bench.transforms.Compose(
        [bench.transforms.ToTensor(), bench.transforms.Normalize(ORIGINAL_MEAN, ORIGINAL_STD)]
    )
    theirs = torch.stack([val_tf(im) for im in bench.decoded(pil, 32)])
    ours = Normalize(ORIGINAL_MEAN, ORIGINAL_STD)(to_uint8(pil, 32).float() / 255.0)
    assert theirs.shape == (8, 3, 32, 32)
    assert torch.allclose(theirs, ours, atol=1e-5)


# --- Faithfulness to the original code (train_classifier.py and semantic_aug/ of the
# DA-Fusion repository; the `cutmix` package 0.1 it imports, github.com/ildoonet/cutmix).


def test_default_resnet50_weights_are_torchvision_imagenet1k_v2(tmp_path, monkeypatch):
    """train_classifier.py:331 loads `resnet50(weights=ResNet50_Weights.DEFAULT)`, which is
    torchvision's IMAGENET1K_V2, republished as timm/resnet50.tv2_in1k; V1 is tv_in1k."""
    import huggingface_hub
    from safetensors.torch import save_file
    from torchvision.models import ResNet50_Weights, resnet50

    from dafusion.stages.backbones import build_backbone

    assert ResNet50_Weights.DEFAULT == ResNet50_Weights.IMAGENET1K_V2
    torch.manual_seed(0)
    # torchvision's key names, as timm's files have them; without BatchNorm's batch counters
    # (files written before they existed lack them), which load as zeros.
    state = {
        k: v.contiguous()
        for k, v in resnet50().state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    requested = []

    def download(repo, filename, **kwargs):
        requested.append((repo, filename, kwargs.get("local_files_only")))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    loaded = build_backbone("resnet50").module.state_dict()
    build_backbone("resnet50", weights="timm/resnet50.tv_in1k")
    assert requested == [
        ("timm/resnet50.tv2_in1k", "model.safetensors", True),
        ("timm/resnet50.tv_in1k", "model.safetensors", True),
    ]
    for key in ("conv1.weight", "layer3.0.downsample.0.weight", "layer4.2.bn3.running_var"):
        assert torch.equal(loaded[key], state[key])
    wrong = tmp_path / "wrong.safetensors"
    save_file({"stem.conv.weight": torch.zeros(1)}, str(wrong))
    with pytest.raises(ValueError, match="classifier.weights.*torchvision-layout"):
        build_backbone("resnet50", weights=str(wrong))


def test_deit_features_are_the_class_token():
    """train_classifier.py:365: `self.base_model(x)[0][:, 0, :]`, the class token of the last
    hidden state, not the distillation token."""
    from transformers import DeiTConfig, DeiTModel

    from dafusion.stages.backbones import _DeiTFeatures

    torch.manual_seed(0)
    config = DeiTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        image_size=32, patch_size=16,
    )  # fmt: skip
    model = DeiTModel(config, add_pooling_layer=False).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(_DeiTFeatures(model)(x), model(x)[0][:, 0, :])


@pytest.mark.parametrize(
    ("normalization", "mean", "std"),
    [("original", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ("backbone", None, None)],
)
def test_input_normalization(digits, monkeypatch, normalization, mean, std):
    """original: semantic_aug/few_shot_dataset.py:34-39 (and every dataset's transforms, e.g.
    pascal.py:124-128): ToTensor then Normalize(mean=0.5, std=0.5), whatever the backbone;
    backbone: the statistics the backbone's weights were trained with (ImageNet's here)."""
    from torchvision.transforms import Normalize

    import dafusion.stages.classifier as clf
    from dafusion.stages.backbones import IMAGENET_MEAN, IMAGENET_STD

    mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    assert ClassifierSettings().normalization == "original"

    def imagenet_pixels(*args, **kwargs):
        net = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Flatten())
        return Backbone(net, 3 * 8 * 8, IMAGENET_MEAN, IMAGENET_STD, frozen=True)

    built = []

    class Recorded(clf.Classifier):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(clf, "build_backbone", imagenet_pixels)
    monkeypatch.setattr(clf, "Classifier", Recorded)
    pool, val = digits
    settings = SMALL.replace(steps=1, eval_interval=1, normalization=normalization)
    names = [str(i) for i in range(10)]
    clf.train_classifier(
        few_shot(pool, 0, 1), val.iloc[:10], names, None, None, settings, seed=0,
        device=torch.device("cpu"), progress=False,
    )  # fmt: skip
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(built[0].normalize(x), Normalize(mean, std)(x))


def test_randaugment_replaces_flip_and_rotation():
    """pascal.py:110-118 (the same in coco.py, caltech101.py, flowers102.py, imagenet.py and
    spurge.py:62-70): with use_randaugment the training transform is Resize, RandAugment,
    ToTensor, Normalize; the flip and rotation are in the other branch only (pascal.py:120-129)."""
    from torchvision.transforms import v2

    from dafusion.stages.classifier import Augmenter

    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    settings = SMALL.replace(augmentation="randaugment", vertical_flip=True, rotation_degrees=45)
    torch.manual_seed(0)  # v2.RandAugment draws from torch's global generator
    ours = Augmenter(settings, torch.Generator().manual_seed(0))(x)
    torch.manual_seed(0)
    reference = torch.stack([v2.RandAugment()(image) for image in x]).float() / 255.0
    assert torch.equal(ours, reference)


def test_leafy_spurge_flips_both_ways_and_rotates_45_degrees():
    """spurge.py:72-81: RandomHorizontalFlip, RandomVerticalFlip, RandomRotation(45) for Leafy
    Spurge, against RandomHorizontalFlip and RandomRotation(15) elsewhere (pascal.py:120-123);
    config/paper.yaml sets its dataset entry so."""

    import yaml

    x = torch.zeros(400, 1, 9, 9)
    x[:, :, :3, :3] = 1.0  # a square in the top-left corner

    def corners(out):
        lit = out[:, 0, [1, 1, 7, 7], [1, 7, 1, 7]] > 0.5  # top-left, top-right, bottom-...
        return lit.float().mean(dim=0)

    both = corners(augment(x, torch.Generator().manual_seed(0), 0.0, vertical_flip=True))
    assert torch.allclose(both, torch.full((4,), 0.25), atol=0.07)  # independent flips
    horizontal = corners(augment(x, torch.Generator().manual_seed(0), 0.0))
    assert horizontal[2:].sum() == 0 and torch.allclose(horizontal[:2], torch.tensor(0.5), atol=0.1)

    from dafusion.workflow.config import SCHEMA, validate_config

    repo = REPO
    paper = yaml.safe_load((repo / "config/paper.yaml").read_text())
    paper = validate_config(paper, SCHEMA)  # as the workflow reads it
    entries = paper["datasets"]
    spurge = ClassifierSettings.resolve(paper["classifier"], entries["leafy_spurge"]["classifier"])
    pascal = ClassifierSettings.resolve(
        paper["classifier"], entries["pascal"].get("classifier", {})
    )
    assert (spurge.vertical_flip, spurge.rotation_degrees) == (True, 45)
    assert (pascal.vertical_flip, pascal.rotation_degrees) == (False, 15)


def test_flip_rotation_and_cutmix_settings_reach_only_runs_that_read_them():
    """RandAugment replaces flip and rotation, so their settings rerun no RandAugment run;
    cutmix_mode reruns only CutMix runs."""
    standard = ClassifierSettings().result_params()
    assert {"normalization", "rotation_degrees", "vertical_flip"} <= set(standard)
    assert "cutmix_mode" not in standard
    for augmentation in ("randaugment", "none"):
        params = ClassifierSettings(augmentation=augmentation).result_params()
        assert not {"rotation_degrees", "vertical_flip", "cutmix_mode"} & set(params)
    cutmix = ClassifierSettings(augmentation="cutmix").result_params()
    assert {"rotation_degrees", "vertical_flip", "cutmix_mode"} <= set(cutmix)


def _package_rand_bbox(size, lam, cx, cy):
    """cutmix/utils.py:48-71 (rand_bbox) with its two np.random.randint draws given: for a
    CHW image its W and H are size[1] and size[2], the rows and the columns."""
    w, h = size[1], size[2]
    cut_rat = math.sqrt(1.0 - lam)
    cut_w, cut_h = int(w * cut_rat), int(h * cut_rat)
    clip = lambda v, top: min(max(v, 0), top)  # noqa: E731 - np.clip(v, 0, top)
    return (
        clip(cx - cut_w // 2, w), clip(cy - cut_h // 2, h),
        clip(cx + cut_w // 2, w), clip(cy + cut_h // 2, h),
    )  # fmt: skip


def test_cutmix_boxes_are_the_packages():
    """The box geometry of cutmix/utils.py:48-71 on fixed draws, a non-square image."""
    from dafusion.stages.classifier import cutmix_boxes

    g = torch.Generator().manual_seed(0)
    rows, cols = 12, 20
    lam = torch.cat([torch.rand(500, generator=g, dtype=torch.float64), torch.tensor([0.0])])
    cx = torch.randint(rows, (len(lam),), generator=g)
    cy = torch.randint(cols, (len(lam),), generator=g)
    ours = cutmix_boxes(rows, cols, lam, cx, cy)
    for i in range(len(lam)):
        expected = _package_rand_bbox((3, rows, cols), lam[i].item(), cx[i].item(), cy[i].item())
        assert tuple(ours[i].tolist()) == expected


class _Partners:
    """A `draw` for SampleCutMix: random images and labels, each call recorded."""

    def __init__(self, shape, num_classes):
        self.generator = torch.Generator().manual_seed(99)
        self.shape, self.num_classes, self.calls = shape, num_classes, []

    def __call__(self, n):
        images = torch.rand(n, *self.shape, generator=self.generator)
        labels = torch.randint(self.num_classes, (n,), generator=self.generator)
        self.calls.append((images, labels))
        return images, labels


def test_sample_cutmix_is_the_packages_on_fixed_draws():
    """CutMix.__getitem__ (cutmix/cutmix.py:16-37) as train_classifier.py:134-136 builds it
    (beta 1, prob 0.5, num_mix 2), per example, replayed on the same draws: each round, r
    (skip when r > prob), lam ~ Beta(1, 1), a partner, rand_bbox's centre; the partner's box
    pasted; lam recomputed from the clipped box; the one-hot labels mixed by it."""
    from dafusion.stages.classifier import SampleCutMix

    n, shape, classes = 64, (3, 10, 14), 5
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(classes, (n,), generator=torch.Generator().manual_seed(2))
    partners = _Partners(shape, classes)
    ours, targets = SampleCutMix(partners, classes, torch.Generator().manual_seed(3))(x, labels)

    g = torch.Generator().manual_seed(3)  # replay the draws, per example as the package
    images = [x[i].clone() for i in range(n)]
    onehots = [F.one_hot(labels[i], classes).float() for i in range(n)]
    calls = iter(partners.calls)
    for _ in range(2):  # num_mix
        r = torch.rand(n, generator=g)
        chosen = [i for i in range(n) if not r[i] > 0.5]  # `if r > self.prob: continue`
        lam = torch.rand(len(chosen), generator=g, dtype=torch.float64)
        partner_images, partner_labels = next(calls)
        cx = torch.randint(shape[1], (len(chosen),), generator=g)
        cy = torch.randint(shape[2], (len(chosen),), generator=g)
        for k, i in enumerate(chosen):
            img, img2 = images[i], partner_images[k]
            x1, y1, x2, y2 = _package_rand_bbox(
                img.shape, lam[k].item(), cx[k].item(), cy[k].item()
            )
            img[:, x1:x2, y1:y2] = img2[:, x1:x2, y1:y2]
            mixed = 1 - ((x2 - x1) * (y2 - y1) / (img.shape[-1] * img.shape[-2]))
            lb2 = F.one_hot(partner_labels[k], classes).float()
            onehots[i] = onehots[i] * mixed + lb2 * (1.0 - mixed)
    assert torch.equal(ours, torch.stack(images))
    torch.testing.assert_close(targets, torch.stack(onehots))
    assert 0 < (targets.max(dim=1).values < 1).sum() < n  # some examples mixed, some not


def test_sample_cutmix_labels_sum_to_one_and_match_the_pasted_area():
    """cutmix/cutmix.py:34-35: the partner's label weight is the area of its pasted box."""
    from dafusion.stages.classifier import SampleCutMix

    n = 2000
    x = torch.zeros(n, 3, 16, 16)  # class 0, black; every partner class 1, white
    labels = torch.zeros(n, dtype=torch.long)

    def white(m):
        return torch.ones(m, 3, 16, 16), torch.ones(m, dtype=torch.long)

    g = torch.Generator().manual_seed(0)
    mixed, targets = SampleCutMix(white, 2, g, rounds=1, prob=1.0)(x, labels)
    pasted = mixed[:, 0].mean(dim=(1, 2))
    torch.testing.assert_close(targets[:, 1], pasted)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(n))
    # E[1 - lam] = 0.5 before the box is clipped at the image's edges; 0.277 after at 16 px
    # (the package's rand_bbox, Monte Carlo over 200,000 draws)
    assert abs(pasted.mean().item() - 0.277) < 0.02

    _, targets = SampleCutMix(white, 2, torch.Generator().manual_seed(1))(x, labels)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(n))
    untouched = (targets[:, 0] == 1).float().mean().item()
    assert abs(untouched - 0.25) < 0.04  # two rounds at probability 0.5 (and empty boxes)


def test_training_set_draws_as_eq_6_7_then_augments():
    """The partners of SampleCutMix come from here, as the original's CutMix calls the
    dataset's __getitem__ for them (cutmix/cutmix.py:29; few_shot_dataset.py:82-95)."""
    from dafusion.stages.classifier import Augmenter, TrainingSet, VariantTable

    real = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    synthetic = torch.full((4, 3, 8, 8), 255, dtype=torch.uint8)
    variants = VariantTable([torch.tensor([i]) for i in range(4)])
    labels = torch.tensor([3, 2, 1, 0])
    g = torch.Generator().manual_seed(0)
    augmenter = Augmenter(SMALL.replace(augmentation="none"), g)
    for alpha, value in ((1.0, 1.0), (0.0, 0.0)):
        data = TrainingSet(real, labels, synthetic, variants, alpha, augmenter, g)
        images, drawn = data(50)
        assert (images == value).all() and set(drawn.tolist()) <= {0, 1, 2, 3}


def _digits_run(digits, settings):
    import dafusion.stages.classifier as clf  # build_backbone as the test patched it

    pool, val = digits
    names = [str(i) for i in range(10)]
    return clf.train_classifier(
        few_shot(pool, 0, 2), val.iloc[:20], names, None, None, settings, seed=0,
        device=torch.device("cpu"), progress=False,
    )  # fmt: skip


def test_cutmix_runs_are_reproducible_and_run_the_backbone_every_step(digits, monkeypatch):
    """CutMix mixes pixels: even with feature_cache the frozen backbone runs every step; the
    job's generator draws everything, so a run repeats exactly."""
    import dafusion.stages.classifier as clf

    sample = SMALL.replace(steps=6, eval_interval=3, augmentation="cutmix")
    pd.testing.assert_frame_equal(_digits_run(digits, sample), _digits_run(digits, sample))
    calls = []

    def counted(*args, **kwargs):
        backbone = _frozen_pixels()
        backbone.module.register_forward_pre_hook(lambda _, inputs: calls.append(len(inputs[0])))
        return backbone

    monkeypatch.setattr(clf, "build_backbone", counted)
    for mode in ("sample", "batch"):
        calls.clear()
        _digits_run(digits, sample.replace(cutmix_mode=mode, feature_cache=True, batch_size=7))
        assert calls.count(7) == 6  # one backbone pass per training step, none cached


@pytest.mark.parametrize("precision", ["float32", "tf32", "bf16"])
def test_backbone_precision_keeps_features_within_bf16_rounding(precision):
    """classifier.precision changes the backbone's arithmetic only: bf16 autocast runs on a
    CPU too (tf32 is float32 there); the features stay float32 and near float32's."""
    from dafusion.stages.backbones import build_backbone
    from dafusion.stages.classifier import Classifier

    torch.manual_seed(0)
    reference = Classifier(build_backbone("small-cnn"), 10, "original").eval()
    model = Classifier(build_backbone("small-cnn"), 10, "original", precision).eval()
    model.load_state_dict(reference.state_dict())
    x = torch.rand(4, 3, 32, 32)
    features, expected = model.embed(x), reference.embed(x)
    assert features.dtype == torch.float32
    if precision == "bf16":
        assert not torch.equal(features, expected)  # bf16 changes the numerics
    torch.testing.assert_close(features, expected, atol=0.05, rtol=0.05)


def test_tf32_flags_restored():
    """float32 turns TF32 off (cuDNN's default is on) for the backbone's forward only."""
    from dafusion.stages.classifier import tf32

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with tf32(False):
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    with tf32(True):
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_frozen_backbone_embeds_evaluation_images_once(digits, monkeypatch):
    """With a frozen backbone in eval mode each evaluation runs the head only: the backbone
    sees the evaluation images once per run, not at every evaluation."""
    import dafusion.stages.classifier as clf

    seen = []

    def build(*args, **kwargs):
        backbone = _frozen_pixels()
        backbone.module.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
        return backbone

    monkeypatch.setattr(clf, "build_backbone", build)
    pool, val = digits
    train = few_shot(pool, 0, 2)
    settings = SMALL.replace(steps=6, eval_interval=2, batch_size=8)
    names = [str(i) for i in range(10)]
    clf.train_classifier(train, val.iloc[:30], names, None, None, settings, 0, torch.device("cpu"))
    assert seen == [30] + [8] * 6  # the 30 evaluation images once, then one batch per step
