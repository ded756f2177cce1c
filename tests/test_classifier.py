import numpy as np
import pandas as pd
import pytest
import torch

from dafusion.classifier import (
    ClassifierSettings,
    SmallCNN,
    augment,
    draw_batch,
    evaluate,
    synthetic_lookup,
    train,
)
from dafusion.datasets import few_shot


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
    settings = ClassifierSettings(steps=60, eval_interval=30, lr=1e-3, augmentation="none")
    names = [f"c{i}" for i in range(10)]
    metrics = train(
        subset, val, names, None, None, settings, seed=0, device=torch.device("cpu"), progress=False
    )
    assert sorted(metrics["step"].unique()) == [30, 60]
    acc = metrics[(metrics["metric"] == "accuracy") & (metrics["step"] == 60)]["value"].item()
    assert acc > 0.5  # 10 classes: chance is 0.1
    assert {f"accuracy/c{i}" for i in range(10)} <= set(metrics["metric"])


def test_bn_free_model_shapes():
    assert SmallCNN(7)(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
