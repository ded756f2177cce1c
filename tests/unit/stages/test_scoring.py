"""The scorers of synthetic sets (dafusion.stages.scoring), and the saved baseline head."""

import ast
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from helpers import REPO
from helpers import tiny_clip as make_tiny_clip
from PIL import Image
from safetensors.torch import load_file

import dafusion.data.images as images_module
import dafusion.stages.classifier as clf
from dafusion.data.datasets import few_shot
from dafusion.data.images import encode_png
from dafusion.data.manifest import class_names, manifest
from dafusion.data.shards import write_shard
from dafusion.jobs.io import write_parquet
from dafusion.settings import SCORER_NAMES, ClassifierSettings
from dafusion.stages.backbones import Backbone, SmallCNN
from dafusion.stages.scoring import (
    CHANGE_SIZE,
    SCORERS,
    SCORES_KEY,
    read_scores,
    scores_path,
    write_scores,
)
from dafusion.stages.scoring import change as change_scorer
from dafusion.stages.scoring import classifier as classifier_scorer
from dafusion.stages.scoring import clip as clip_scorer
from dafusion.stages.synthetic import INDEX_SCHEMA

META = {
    "set": "s", "strength": 0.5, "prompt": "p", "guidance_scale": 7.5, "scheduler": "ddim",
    "steps": 5, "seed": 0, "model_id": "tiny", "token_hash": "", "erasure": "",
}  # fmt: skip
CPU = torch.device("cpu")


def write_set(folder: Path, variants: list[dict]) -> Path:
    """A synthetic set of `variants` (key, source_key, j, label, class_name, image: a PIL
    image, or None for one the safety checker dropped): one shard and index.parquet."""
    folder.mkdir(parents=True, exist_ok=True)
    samples, dropped = [], []
    for v in variants:
        meta = {**META, **{k: v[k] for k in ("source_key", "j", "label", "class_name")}}
        if v["image"] is None:
            dropped.append({"key": v["key"], **meta, "shard": None, "dropped": True})
        else:
            image = encode_png(v["image"])
            samples.append({"key": v["key"], "image": image, "label": v["label"], "meta": meta})
    rows = [
        {**r, "dropped": False} for r in write_shard(folder, "shard-000000.tar", samples, "png")
    ]
    index = pd.DataFrame(rows + dropped).sort_values("key")
    for column in ("shard_sha256", "shard_bytes"):  # absent when every image was dropped
        if column not in index:
            index[column] = None
    write_parquet(index, folder / "index.parquet", INDEX_SCHEMA)
    return folder / "index.parquet"


def _variant(source: str, j: int, label: int, name: str, image) -> dict:
    return {
        "key": f"{source}-{j:03d}", "source_key": source, "j": j, "label": label,
        "class_name": name, "image": image,
    }  # fmt: skip


# change ----------------------------------------------------------------------------------


@pytest.fixture
def sources(tmp_path):
    """A split of two real images, one a file (20 x 10, not square) and one stored as bytes."""
    noise = np.random.default_rng(0).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    file_image = Image.fromarray(noise)
    file_image.save(tmp_path / "a.png")
    rows = [
        {"key": "a", "path": str(tmp_path / "a.png"), "label": 0, "class_name": "x"},
        {"key": "b", "image": encode_png(Image.new("RGB", (12, 12), (100, 100, 100))),
         "label": 1, "class_name": "y"},
    ]  # fmt: skip
    return manifest([{**row, "split": "train"} for row in rows]), file_image


def test_change_is_the_mean_pixel_difference_from_the_source(tmp_path, sources):
    """0 for a copy of the source (at any size: both are compared at CHANGE_SIZE), the
    difference of uniform colours as a fraction of 255, 1 for white against black; a
    dropped variant gets no row."""
    split, file_image = sources
    index = write_set(
        tmp_path / "set",
        [
            _variant("a", 0, 0, "x", file_image.copy()),
            _variant("a", 1, 0, "x", file_image.resize((32, 32), Image.Resampling.BILINEAR)),
            _variant("a", 2, 0, "x", None),
            _variant("b", 0, 1, "y", Image.new("RGB", (16, 16), (150, 100, 100))),
            _variant("b", 1, 1, "y", Image.new("RGB", (16, 16), (100, 100, 100))),
        ],
    )
    scores = change_scorer.score(index, split).set_index("key")["change"]
    assert list(scores.index) == ["a-000", "a-001", "b-000", "b-001"]
    assert scores["a-000"] == 0.0 and scores["b-001"] == 0.0
    assert scores["b-000"] == pytest.approx(50 / 255 / 3)  # one channel of three moved
    assert 0 < scores["a-001"] < 0.1  # resampled twice, not exactly the same pixels
    black, white = Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), (255, 255, 255))
    assert np.abs(change_scorer.pixels(black) - change_scorer.pixels(white)).mean() == 1.0
    assert change_scorer.pixels(black).shape == (CHANGE_SIZE, CHANGE_SIZE, 3)


def test_change_needs_the_split_the_set_was_made_from(tmp_path, sources):
    split, file_image = sources
    index = write_set(tmp_path / "set", [_variant("c", 0, 0, "x", file_image)])
    with pytest.raises(ValueError, match="not in its split \\('c'"):
        change_scorer.score(index, split)


def test_scores_are_written_atomically_in_their_schema(tmp_path, sources):
    split, file_image = sources
    index = write_set(tmp_path / "set", [_variant("a", 0, 0, "x", file_image)])
    output = scores_path(index, "change")
    assert output == tmp_path / "set/scores-change.parquet"
    change_scorer.write(index, split, output)
    table = pq.read_table(output)
    assert table.schema.names == ["key", "change"]
    assert json.loads(table.schema.metadata[SCORES_KEY.encode()]) == {
        "scorer": "change", "size": CHANGE_SIZE,
    }  # fmt: skip
    assert read_scores(output, "change")["change"].tolist() == [0.0]
    assert [p.name for p in output.parent.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(ValueError, match="not a table of clip scores"):
        read_scores(output, "clip")
    with pytest.raises(ValueError, match="unknown scorer 'nope'"):
        scores_path(index, "nope")
    with pytest.raises(ValueError, match="scored twice"):
        write_scores(pd.DataFrame({"key": ["k", "k"], "change": [0.0, 0.1]}), output, "change")
    assert set(SCORERS) == {"classifier", "clip", "change"}
    assert tuple(SCORERS) == SCORER_NAMES  # the names the settings (and schema) know


# classifier ------------------------------------------------------------------------------

SETTINGS = ClassifierSettings(
    backbone="small-cnn", image_size=8, steps=4, batch_size=8, eval_interval=2,
    augmentation="none", lr=1e-2,
)  # fmt: skip


def _train(split, val, tmp_path, monkeypatch, settings=SETTINGS, name="head.safetensors"):
    """A baseline run that saves its head; returns the head's path and the run's model as
    it ended."""
    built = []

    class Recorded(clf.Classifier):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    head = tmp_path / name
    with monkeypatch.context() as patch:
        patch.setattr(clf, "Classifier", Recorded)
        clf.train_classifier(
            split, val, class_names(split), None, None, settings, 0, CPU, False, head_path=head
        )
    return head, built[0]


@pytest.fixture
def few_digits(digits):
    pool, val = digits
    return few_shot(pool, seed=0, shots=2), val


def _digit_set(folder, pool_rows, names):
    """A set whose images are some digit images (any images do), labelled by their class."""
    return write_set(
        folder,
        [
            _variant(row["key"], 0, row["label"], names[row["label"]],
                     Image.open(io.BytesIO(row["image"])).convert("RGB"))
            for row in pool_rows
        ],
    )  # fmt: skip


def test_the_saved_head_is_the_final_step_and_scores_as_its_softmax(
    tmp_path, monkeypatch, few_digits
):
    """The file holds the run's final state (every parameter of small-cnn, trained end to
    end, and its buffers); the scorer's confidence is the softmax of that classifier's
    logits at the image's label, in eval mode, and top1 their argmax."""
    split, val = few_digits
    head, model = _train(split, val, tmp_path, monkeypatch)
    saved = load_file(head)
    assert saved.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(saved[key], value.contiguous()), key
    names = clf.load_classifier(head).class_names
    index = _digit_set(tmp_path / "set", split.to_dict("records"), names)
    scores = classifier_scorer.score(index, head, batch_size=7)
    rows = pd.read_parquet(index)  # in key order, as the scores
    assert scores["key"].tolist() == rows["key"].tolist()
    net = SmallCNN().eval()
    features = {k.removeprefix("features."): v for k, v in saved.items() if "features." in k}
    net.load_state_dict(features)
    by_key = {r["key"]: r["image"] for r in split.to_dict("records")}
    pixels = [
        np.asarray(Image.open(io.BytesIO(by_key[k])).convert("RGB").resize((8, 8), Image.BILINEAR))
        for k in rows["source_key"]
    ]
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        embedded = net((x - 0.5) / 0.5)
    logits = torch.nn.functional.linear(embedded, saved["head.weight"], saved["head.bias"])
    probabilities = logits.double().softmax(dim=1)
    labels = torch.tensor(rows["label"].to_numpy())
    expected = probabilities.gather(1, labels[:, None]).squeeze(1).numpy()
    np.testing.assert_allclose(scores["confidence"].to_numpy(), expected, rtol=1e-5)
    assert scores["top1"].tolist() == probabilities.argmax(dim=1).tolist()
    assert scores["top1"].dtype == "int64"


def test_the_saved_head_carries_nothing_of_validation(tmp_path, monkeypatch, few_digits):
    """Two baseline runs that differ only in their validation images save the same state."""
    split, val = few_digits
    first, _ = _train(split, val, tmp_path, monkeypatch, name="one.safetensors")
    second, _ = _train(
        split, val.iloc[::-1].head(50), tmp_path, monkeypatch, name="two.safetensors"
    )
    a, b = load_file(first), load_file(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_frozen_backbone_saves_its_head_and_statistics_only(tmp_path, monkeypatch, few_digits):
    """A frozen backbone's weights come back from its pretrained weights; the file holds the
    head, the normalization and the BatchNorm statistics that training mode updated."""

    def frozen(*args, **kwargs):
        torch.manual_seed(5)  # the same "pretrained" weights at every build
        net = SmallCNN()
        return Backbone(net, net.dim, (0.5,) * 3, (0.5,) * 3, frozen=True)

    monkeypatch.setattr(clf, "build_backbone", frozen)
    split, val = few_digits
    head, model = _train(split, val, tmp_path, monkeypatch)
    saved = load_file(head)
    buffers = {f"features.{n}" for n, _ in model.features.named_buffers()}
    assert set(saved) == {"head.weight", "head.bias", "normalize.mean", "normalize.std"} | buffers
    untrained = frozen().module.state_dict()
    assert not torch.equal(
        saved["features.features.0.1.running_mean"], untrained["features.0.1.running_mean"]
    )
    rebuilt = clf.load_classifier(head)
    model.eval()
    image = [Image.open(io.BytesIO(split["image"].iloc[0])).convert("RGB")]
    with torch.no_grad():
        x = clf.to_uint8(image, 8).float() / 255.0
        assert torch.allclose(rebuilt.logits(image), model(x), atol=1e-6)


def test_the_classifier_scorer_needs_the_sets_classes(tmp_path, monkeypatch, few_digits):
    split, val = few_digits
    head, _ = _train(split, val, tmp_path, monkeypatch)
    image = Image.new("RGB", (8, 8))
    index = write_set(tmp_path / "set", [_variant("k", 0, 1, "not-a-digit", image)])
    with pytest.raises(ValueError, match="does not know class 'not-a-digit' as label 1"):
        classifier_scorer.score(index, head)
    (tmp_path / "plain.safetensors").write_bytes(b"")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a classifier saved by a classifier run"):
        clf.load_classifier(tmp_path / "plain.safetensors")


# clip ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random CLIP saved as a local folder (helpers.tiny_clip)."""
    return make_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_clip_score_is_the_cosine_of_image_and_class_prompt(tmp_path, tiny_clip):
    """Equal to CLIPModel's own forward pass: its normalized image and text embeddings."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    rng = np.random.default_rng(1)
    pictures = [
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)) for _ in range(5)
    ]
    names = ["cat", "dog", "cat", "bird", "dog"]
    index = write_set(
        tmp_path / "set",
        [_variant(f"s{i}", 0, ["cat", "dog", "bird"].index(n), n, p)
         for i, (n, p) in enumerate(zip(names, pictures, strict=True))]
        + [_variant("s9", 0, 0, "cat", None)],
    )  # fmt: skip
    scores = clip_scorer.score(index, str(tiny_clip), batch_size=2)
    assert scores["key"].tolist() == [f"s{i}-000" for i in range(5)]
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    tokenizer = CLIPTokenizer.from_pretrained(tiny_clip)
    processor = CLIPImageProcessor.from_pretrained(tiny_clip)
    prompts = [f"a photo of a {n}" for n in ("bird", "cat", "dog")]
    tokens = tokenizer(prompts, padding=True, return_tensors="pt")
    pixel_values = processor(images=pictures, return_tensors="pt").pixel_values
    with torch.no_grad():
        out = model(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            pixel_values=pixel_values,
        )
    which = [["bird", "cat", "dog"].index(n) for n in names]
    expected = (out.image_embeds * out.text_embeds[which]).sum(dim=1).numpy()
    np.testing.assert_allclose(scores["clip_score"].to_numpy(), expected, atol=1e-5)
    other = clip_scorer.score(index, str(tiny_clip), prompt="{name}")
    assert not np.allclose(other["clip_score"], scores["clip_score"])


def test_a_set_whose_images_were_all_dropped_has_empty_scores(
    tmp_path, monkeypatch, tiny_clip, few_digits
):
    split, val = few_digits
    head, _ = _train(split, val, tmp_path, monkeypatch)
    index = write_set(tmp_path / "set", [_variant(split["key"].iloc[0], 0, 0, "zero", None)])
    for name, frame in [
        ("clip", clip_scorer.score(index, str(tiny_clip))),
        ("change", change_scorer.score(index, split)),
        ("classifier", classifier_scorer.score(index, head)),
    ]:
        assert frame.empty and list(frame.columns) == ["key", *SCORERS[name].columns]
        write_scores(frame, scores_path(index, name), name)
        assert read_scores(scores_path(index, name), name).empty


def test_clip_reads_safetensors_weights_only(tmp_path, tiny_clip):
    import shutil

    folder = tmp_path / "clip"
    shutil.copytree(tiny_clip, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(OSError, match="with safetensors weights"):
        clip_scorer.load_clip(str(folder))


# no leakage ------------------------------------------------------------------------------


def test_a_scorer_reads_no_real_image_outside_the_sets_split(
    tmp_path, monkeypatch, few_digits, tiny_clip
):
    """Given a manifest that also holds validation rows (whose files do not exist), the
    change scorer opens the set's source images only; the classifier and clip scorers open
    no real image at all (the baseline's head holds what it learned from the split)."""
    split, val = few_digits
    head, _ = _train(split, val, tmp_path, monkeypatch)
    names = clf.load_classifier(head).class_names
    index = _digit_set(tmp_path / "set", split.head(6).to_dict("records"), names)
    poisoned = val.assign(
        image=None, path=[str(tmp_path / f"missing-{i}.png") for i in range(len(val))]
    )
    everything = pd.concat([poisoned, split], ignore_index=True)
    opened, open_image = [], images_module.open_image

    def spy(row):
        opened.append(row["key"])
        return open_image(row)

    monkeypatch.setattr(images_module, "open_image", spy)
    change_scorer.score(index, everything)
    assert set(opened) == set(split.head(6)["key"])
    opened.clear()
    classifier_scorer.score(index, head)
    clip_scorer.score(index, str(tiny_clip))
    assert opened == []


def test_no_scorer_or_filter_imports_the_reference_classifier_or_a_trainer():
    """The reference digit classifier (reporting.reference) and the training tools are out
    of a scorer's reach: no module of the scorers or the filter imports them."""
    library = REPO / "src/dafusion/stages"
    for path in [*sorted((library / "scoring").glob("*.py")), library / "filtering.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [alias.name for alias in node.names]
                for name in names:
                    assert "reporting" not in name and "training" not in name, (path, name)
                    assert "reference" not in name, (path, name)
