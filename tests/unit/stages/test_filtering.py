"""Filters over a set's scores (dafusion.stages.filtering), in MixingDataset and the
classifier stage's draws."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import dafusion.stages.classifier as clf
from dafusion.data.images import encode_png
from dafusion.data.manifest import manifest
from dafusion.data.shards import read_images, write_shard
from dafusion.jobs.io import write_parquet
from dafusion.settings import ClassifierSettings
from dafusion.stages.filtering import FilterSettings, as_filter, select
from dafusion.stages.mixing import MixingDataset, kept_variants, select_variants
from dafusion.stages.scoring import scores_path, write_scores
from dafusion.stages.synthetic import INDEX_SCHEMA


def _candidates(per_source: dict[str, tuple[int, int]]) -> pd.DataFrame:
    """Index rows: source -> (label, number of variants); class names 'c{label}'."""
    rows = [
        {"key": f"{source}-{j:03d}", "source_key": source, "j": j, "label": label,
         "class_name": f"c{label}"}
        for source, (label, m) in per_source.items()
        for j in range(m)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_filter_settings_are_checked():
    assert FilterSettings(by="classifier", min_confidence=0.5).criteria() == {"min_confidence": 0.5}
    assert as_filter(None) is None
    spec = as_filter({"by": "clip", "keep_top": 0.7})
    assert spec == FilterSettings(by="clip", keep_top=0.7)
    assert spec.describe() == "clip: top 70% per class"
    described = FilterSettings(by="classifier", min_confidence=0.5, require_top1=True).describe()
    assert described == "classifier: confidence >= 0.5, top-1 is the label"
    bad = [
        ({"by": "pixels", "keep_top": 0.5}, "filter by 'pixels': the scorers are"),
        ({"by": "classifier"}, "needs a criterion"),
        ({"by": "clip", "min_confidence": 0.5}, "min_confidence reads the classifier scores"),
        ({"by": "change", "require_top1": True}, "require_top1 reads the classifier scores"),
        ({"by": "classifier", "min_confidence": 1.5}, r"must lie in \[0.0, 1.0\]"),
        ({"by": "clip", "keep_top": 0}, r"keep_top is a fraction in \(0, 1\]"),
        ({"by": "change", "min_change": 0.5, "max_change": 0.2}, "min_change 0.5 is above"),
        ({"by": "change", "most": 1}, "unknown key most"),
        ({"min_change": 0.1}, "no key by"),
    ]
    for value, message in bad:
        with pytest.raises(ValueError, match=message):
            as_filter(value)


def test_no_filter_keeps_every_candidate_unchanged():
    candidates = _candidates({"a": (0, 2)})
    selection = select(candidates, None, None)
    assert selection.rows is candidates and selection.emptied == []


def test_thresholds_keep_what_passes_every_one_bounds_included():
    candidates = _candidates({"a": (0, 3), "b": (1, 3)})
    scores = pd.DataFrame(
        {
            "key": candidates["key"],
            "confidence": [0.5, 0.49, 0.9, 0.7, 0.6, float("nan")],
            "top1": [0, 0, 1, 1, 0, 1],
        }
    )
    kept = select(candidates, scores, FilterSettings(by="classifier", min_confidence=0.5))
    assert kept.rows["key"].tolist() == ["a-000", "a-002", "b-000", "b-001"]
    assert kept.rows.index.tolist() == [0, 1, 2, 3]  # renumbered as draw_batch counts
    top1 = select(candidates, scores, {"by": "classifier", "require_top1": True})
    assert top1.rows["key"].tolist() == ["a-000", "a-001", "b-000", "b-002"]
    both = select(
        candidates, scores, {"by": "classifier", "min_confidence": 0.5, "require_top1": True}
    )
    assert both.rows["key"].tolist() == ["a-000", "b-000"]
    band = select(
        candidates, scores, {"by": "classifier", "min_confidence": 0.6, "max_confidence": 0.7}
    )
    assert band.rows["key"].tolist() == ["b-000", "b-001"]
    change = scores.assign(change=[0.0, 0.05, 0.1, 0.3, 0.5, 0.2])[["key", "change"]]
    assert select(candidates, change, {"by": "change", "min_change": 0.1}).rows["key"].tolist() == [
        "a-002",
        "b-000",
        "b-001",
        "b-002",
    ]
    assert select(candidates, change, {"by": "change", "max_change": 0.2}).rows["key"].tolist() == [
        "a-000",
        "a-001",
        "a-002",
        "b-002",
    ]
    clip = pd.DataFrame({"key": candidates["key"], "clip_score": [-0.1, 0.2, 0.3, 0.25, 0, 1]})
    assert select(candidates, clip, {"by": "clip", "min_clip_score": 0.25}).rows[
        "key"
    ].tolist() == ["a-002", "b-000", "b-002"]


def test_keep_top_is_a_fraction_of_each_class_highest_first_ties_by_key():
    """Class 0: 10 candidates (two sources), 0.7 keeps 7 (not 8, whatever 0.7 * 10 rounds
    to); class 1: 3 candidates, ceil(2.1) = 3; class 2: 1 candidate, ceil(0.7) = 1. With a
    threshold, keep_top counts the class's candidates, not what the threshold leaves."""
    candidates = _candidates({"a": (0, 5), "b": (0, 5), "c": (1, 3), "d": (2, 1)})
    values = [0.1, 0.9, 0.8, 0.5, 0.5, 0.2, 0.3, 0.7, 0.6, 0.4, 0.0, 0.0, 0.0, 0.0]
    scores = pd.DataFrame({"key": candidates["key"], "clip_score": values})
    kept = select(candidates, scores, FilterSettings(by="clip", keep_top=0.7)).rows
    class0 = ["a-001", "a-002", "b-002", "b-003", "a-003", "a-004", "b-004"]  # a-003 = a-004
    assert sorted(kept[kept["label"] == 0]["key"]) == sorted(class0)
    assert kept[kept["label"] > 0]["key"].tolist() == ["c-000", "c-001", "c-002", "d-000"]
    assert kept["key"].tolist() == sorted(kept["key"])  # the index's order
    tied = select(candidates, scores, FilterSettings(by="clip", keep_top=0.5)).rows
    assert "a-003" in tied["key"].tolist() and "a-004" not in tied["key"].tolist()
    # class 0: the top ceil(0.3 * 10) = 3 of its candidates, not 0.3 of the 6 above 0.45
    both = select(candidates, scores, {"by": "clip", "keep_top": 0.3, "min_clip_score": 0.45})
    assert both.rows["key"].tolist() == ["a-001", "a-002", "b-002"]


def test_a_real_image_whose_variants_are_all_filtered_is_counted():
    candidates = _candidates({"a": (0, 2), "b": (0, 2), "c": (1, 1), "d": (1, 2)})
    scores = pd.DataFrame({"key": candidates["key"], "change": [0.0, 0.0, 0.4, 0.0, 0.0, 0.3, 0.3]})
    selection = select(candidates, scores, {"by": "change", "min_change": 0.1})
    assert selection.emptied == ["a", "c"]
    per_class = selection.per_class()
    assert per_class.to_dict("records") == [
        {"label": 0, "class_name": "c0", "candidates": 4, "kept": 1, "keep_rate": 0.25,
         "emptied": 1},
        {"label": 1, "class_name": "c1", "candidates": 3, "kept": 2, "keep_rate": 2 / 3,
         "emptied": 1},
    ]  # fmt: skip


def test_scores_must_cover_every_candidate():
    candidates = _candidates({"a": (0, 3)})
    scores = pd.DataFrame({"key": ["a-000", "a-001", "z-000"], "change": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match="hold no score for 1 of the set's images \\('a-002'"):
        select(candidates, scores, {"by": "change", "min_change": 0.1}, "scores.parquet")
    with pytest.raises(ValueError, match="no column confidence, top1"):
        select(candidates, scores, {"by": "classifier", "min_confidence": 0.1})
    with pytest.raises(ValueError, match="needs the set's change scores"):
        select(candidates, None, {"by": "change", "min_change": 0.1})


# MixingDataset and the classifier stage ------------------------------------------------

REAL = 6
M = 2  # the run reads j < 2 of the 3 variants written


def _colour(i: int, j: int | None = None) -> tuple[int, int, int]:
    return (10 * i, 0 if j is None else 50 + 50 * j, 0)


@pytest.fixture
def scored(tmp_path):
    """A split of 6 real images of 2 classes with 3 variants each (image 5: none), and their
    change scores beside the set: variant (i, j) scores i/10 + j/10 (image 2's variant 1,
    dropped by the safety checker, has none)."""
    split = manifest(
        {"key": f"r{i}", "label": i % 2, "class_name": "ab"[i % 2], "split": "train",
         "image": encode_png(Image.new("RGB", (5, 3), _colour(i)))}
        for i in range(REAL)
    )  # fmt: skip
    meta = {
        "label": 0, "class_name": "a", "set": "s", "strength": 0.5, "prompt": "p",
        "guidance_scale": 7.5, "scheduler": "ddim", "steps": 5, "seed": 0, "model_id": "tiny",
        "token_hash": "", "erasure": "",
    }  # fmt: skip
    written = [(i, j) for i in range(REAL - 1) for j in range(3) if (i, j) != (2, 1)]
    samples = [
        {
            "key": f"r{i}-{j:03d}",
            "image": encode_png(Image.new("RGB", (5, 3), _colour(i, j))),
            "label": i % 2,
            "meta": {**meta, "label": i % 2, "class_name": "ab"[i % 2], "source_key": f"r{i}",
                     "j": j},
        }
        for i, j in written
    ]  # fmt: skip
    rows = [
        {**r, "dropped": False} for r in write_shard(tmp_path, "shard-000000.tar", samples, "png")
    ]
    rows.append(
        {"key": "r2-001", **meta, "source_key": "r2", "j": 1, "shard": None, "dropped": True}
    )
    index = tmp_path / "index.parquet"
    write_parquet(pd.DataFrame(rows).sort_values("key"), index, INDEX_SCHEMA)
    scores = pd.DataFrame(
        {
            "key": [f"r{i}-{j:03d}" for i, j in written],
            "change": [i / 10 + j / 10 for i, j in written],
        }
    )
    write_scores(scores, scores_path(index, "change"), "change")
    return split, index


# With M = 2: every candidate of images 0, 1 and 2 filtered (drawn as real), and r3-000.
FILTER = {"by": "change", "min_change": 0.35}


def test_select_variants_reads_the_scores_beside_the_set(scored):
    split, index = scored
    selection = select_variants(index, M, FILTER)
    assert selection.rows["key"].tolist() == ["r3-001", "r4-000", "r4-001"]
    assert selection.emptied == ["r0", "r1", "r2"]
    assert len(selection.candidates) == len(kept_variants(pd.read_parquet(index), M)) == 9
    plain = select_variants(index, M)
    pd.testing.assert_frame_equal(plain.rows, kept_variants(pd.read_parquet(index), M))
    everything = select_variants(index, None, {"by": "change", "keep_top": 0.5})
    # class 0: 8 candidates (r2-001 dropped), 4 kept, r2-002 and r4-000 tied at 0.4;
    # class 1: 6 candidates, 3 kept
    assert everything.rows["key"].tolist() == [
        "r1-002", "r2-002", "r3-001", "r3-002", "r4-000", "r4-001", "r4-002"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="needs its scores"):
        select_variants(pd.read_parquet(index), M, FILTER)


def _pixel(image: Image.Image) -> torch.Tensor:
    return torch.as_tensor(np.asarray(image)[0, 0].astype(np.int64))


@pytest.mark.parametrize("workers", [0, 2])
def test_mixing_dataset_never_draws_a_filtered_variant(scored, workers):
    """Through a DataLoader: the drawn synthetic images are kept ones only; the real draws
    are those without the filter (the filter changes which variant, never which real image
    or whether it is swapped), and emptied real images come back as real."""
    split, index = scored
    kwargs = {"batch_size": 6, "steps": 24, "seed": 0, "num_synthetic": M, "transform": _pixel}
    data = MixingDataset(split, index, 0.9, filter=FilterSettings(**FILTER), **kwargs)
    plain = MixingDataset(split, index, 0.9, **kwargs)
    kept = {(3, 1), (4, 0), (4, 1)}
    seen = set()
    loader = torch.utils.data.DataLoader(data, batch_size=6, num_workers=workers)
    batches = list(loader)
    for (pixels, labels, synthetic), (real, _), (plain_real, plain_syn) in zip(
        batches, data.draws(), plain.draws(), strict=True
    ):
        assert torch.equal(real, plain_real)
        for b in range(6):
            i = real[b].item()
            colour = tuple(pixels[b].tolist())
            j = None if colour == _colour(i) else (colour[1] - 50) // 50
            assert colour == _colour(i, j) and labels[b] == i % 2
            assert synthetic[b].item() == (j is not None)
            if j is not None:
                assert (i, j) in kept
            elif plain_syn[b] >= 0:  # swapped without the filter: emptied, or i = 5
                assert i in (0, 1, 2)
            seen.add((i, j))
    assert kept <= seen and {(0, None), (1, None), (2, None)} <= seen
    assert data.selection.emptied == ["r0", "r1", "r2"]
    mapping = MixingDataset(split, index, 0.9, filter=FILTER, **kwargs)
    assert [
        torch.equal(a[1], b[1]) for a, b in zip(mapping.draws(), data.draws(), strict=True)
    ] == [True] * 24


def test_the_classifier_stage_draws_what_mixing_dataset_draws_with_a_filter(scored, monkeypatch):
    """Given the selection's rows (as the train job passes them), the stage's draws are the
    dataset's, index by index, and every synthetic position is a kept row."""
    split, index = scored
    drawn, draw = [], clf.draw_batch

    def spy(*args):
        drawn.append(draw(*args))
        return drawn[-1]

    monkeypatch.setattr(clf, "draw_batch", spy)
    settings = ClassifierSettings(
        backbone="small-cnn", image_size=8, steps=4, batch_size=5, eval_interval=4,
        augmentation="none", synthetic_probability=0.8,
    )  # fmt: skip
    selection = select_variants(index, M, FILTER)
    clf.train_classifier(
        split, split, ["a", "b"], selection.rows, read_images(index), settings, seed=1,
        device=torch.device("cpu"), progress=False,
    )  # fmt: skip
    data = MixingDataset(split, index, 0.8, batch_size=5, steps=4, seed=1, num_synthetic=M,
                         filter=FILTER)  # fmt: skip
    for (real, syn), (stage_real, stage_syn) in zip(data.draws(), drawn, strict=True):
        assert torch.equal(real, stage_real) and torch.equal(syn, stage_syn)
    positions = torch.cat([syn for _, syn in drawn])
    assert set(positions[positions >= 0].tolist()) <= {0, 1, 2}
