import numpy as np
import pandas as pd
import pytest
import torch

from dafusion.backbones import Backbone, SmallCNN
from dafusion.classifier import augment, draw_batch, evaluate, synthetic_lookup, train_classifier
from dafusion.datasets import few_shot
from dafusion.settings import ClassifierSettings

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
    from dafusion.classifier import VariantTable

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

    from dafusion.backbones import build_backbone
    from dafusion.classifier import Classifier

    torch.manual_seed(0)
    model = Classifier(build_backbone("small-cnn"), 10).eval()
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


@pytest.mark.parametrize(("bn_mode", "changes"), [("eval", False), ("train", True)])
def test_frozen_backbone_batchnorm(digits, monkeypatch, bn_mode, changes):
    """bn_mode eval keeps a frozen backbone's statistics; train lets them drift (original)."""
    import dafusion.classifier as clf

    seen = {}

    def build(*args, **kwargs):
        backbone = _frozen_small_cnn()
        seen["backbone"] = backbone
        seen["before"] = _running_means(backbone.module)
        return backbone

    monkeypatch.setattr(clf, "build_backbone", build)
    pool, val = digits
    settings = SMALL.replace(steps=5, eval_interval=5, bn_mode=bn_mode, feature_cache=False)
    clf.train_classifier(
        few_shot(pool, 0, 2),
        val.iloc[:20],
        [str(i) for i in range(10)],
        None,
        None,
        settings,
        seed=0,
        device=torch.device("cpu"),
        progress=False,
    )
    after = _running_means(seen["backbone"].module)
    same = all(torch.equal(a, b) for a, b in zip(seen["before"], after, strict=True))
    assert same != changes


def _frozen_pixels(*args, **kwargs):
    """A frozen feature extractor a linear head can classify digits with: 8x8 pixels."""
    net = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Flatten())
    return Backbone(net, 3 * 8 * 8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), frozen=True)


def test_feature_cache_matches_step_by_step_accuracy(digits, monkeypatch):
    import dafusion.classifier as clf

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
    import dafusion.classifier as clf

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


def test_cutmix_without_its_dependency_is_an_error(monkeypatch):
    from torchvision.transforms import v2

    from dafusion.classifier import cutmix_transform

    assert cutmix_transform(3) is not None
    monkeypatch.delattr(v2, "CutMix")
    with pytest.raises(ImportError, match="classifier.augmentation.*cutmix"):
        cutmix_transform(3)


def test_cutmix_and_randaugment_baselines_produce_valid_batches():
    from dafusion.classifier import Augmenter

    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(16) % 4
    for name in ("randaugment", "cutmix"):
        settings = SMALL.replace(augmentation=name)
        augmenter = Augmenter(settings, 4, torch.Generator().manual_seed(1))
        outs = [augmenter(x, labels) for _ in range(6)]
        for images, targets in outs:
            assert images.shape == (16, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
            assert torch.allclose(targets.sum(dim=1), torch.ones(16))
    assert any((t.max(dim=1).values < 1).any() for _, t in outs)  # some batches are mixed


def test_original_evaluation_protocol():
    """6,400 draws with replacement; classes absent from the draw count as 0 (original)."""
    from dafusion.classifier import metrics_from_logits

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
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
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

    from dafusion.backbones import IMAGENET_MEAN, IMAGENET_STD
    from dafusion.classifier import Normalize, to_uint8
    from dafusion.images import load_image

    bench = _benchmark(monkeypatch)
    _, val = digits
    pil = [load_image(r) for r in val.iloc[:8].to_dict("records")]
    pil[0] = pil[0].resize((20, 20), Image.NEAREST)  # a resize in the decode, too
    val_tf = bench.transforms.Compose(
        [bench.transforms.ToTensor(), bench.transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    theirs = torch.stack([val_tf(im) for im in bench.decoded(pil, 32)])
    ours = Normalize(IMAGENET_MEAN, IMAGENET_STD)(to_uint8(pil, 32).float() / 255.0)
    assert theirs.shape == (8, 3, 32, 32)
    assert torch.allclose(theirs, ours, atol=1e-5)
