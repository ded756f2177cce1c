"""A synthetic set folder says what it holds: classes.json and a card `datasets` reads."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from PIL import Image

from dafusion.data.card import CARD, CLASSES, JSON_FIELDS, write_card
from dafusion.data.shards import encode_image, write_shard
from dafusion.stages.synthetic import INDEX_SCHEMA

NAMES = ["zero", "giant white arum lily"]
IDENTITY = {"method": {"kind": "sdedit", "prompt": "a photo of a {token}"}, "model": {}}


def _set(folder, names=NAMES):
    """A one-shard set of three images (the last dropped by the safety checker)."""
    samples, rows = [], []
    for i in range(3):
        meta = {field: 0 if dtype == "int64" else 0.5 if dtype == "float64" else "x"
                for field, dtype in JSON_FIELDS.items()}  # fmt: skip
        meta |= {"source_key": f"s{i}", "label": i % 2, "class_name": names[i % 2]}
        image = encode_image(Image.new("RGB", (8, 8), (60 * i, 0, 0)), "png")
        samples.append({"key": f"s{i}-000", "image": image, "label": i % 2, "meta": meta})
    folder.mkdir(parents=True)
    rows = [
        {**r, "dropped": False} for r in write_shard(folder, "shard-000000.tar", samples, "png")
    ]
    rows[-1] |= {"dropped": True}
    return pd.DataFrame(rows)[INDEX_SCHEMA.names]


def test_classes_json_names_each_label_its_token_and_tokens_file(tmp_path):
    folder = tmp_path / "digits/synthetic/abc/seed0-shots1"
    index = _set(folder)
    tokens = tmp_path / "digits/tokens/seed0-shots1.safetensors"
    write_card(folder, index, NAMES, IDENTITY, {"generate": "1"}, "png", "t", str(tokens))
    assert json.loads((folder / CLASSES).read_text()) == {
        "0": {"class_name": "zero", "token": "<zero>",
              "tokens_file": "../../../tokens/seed0-shots1.safetensors"},
        "1": {"class_name": "giant white arum lily", "token": "<giant-white-arum-lily>",
              "tokens_file": "../../../tokens/seed0-shots1.safetensors"},
    }  # fmt: skip
    write_card(folder, index, NAMES, IDENTITY, {"generate": "1"}, "png", "t", None)
    assert json.loads((folder / CLASSES).read_text())["0"] == {
        "class_name": "zero", "token": None, "tokens_file": None,
    }  # fmt: skip


def test_the_card_counts_the_set_and_is_the_same_bytes_anywhere(tmp_path):
    cards = []
    for where in ("a", "b/deeper"):
        folder = tmp_path / where / "set"
        index = _set(folder)
        write_card(folder, index, NAMES, IDENTITY, {"generate": "1"}, "png", "Synthetic set", None)
        cards.append((folder / CARD).read_bytes())
    assert cards[0] == cards[1]
    text = " ".join(cards[0].decode().split())
    assert "2 images in WebDataset shards" in text
    assert "M = 1 per source image for 3 source images, 1 dropped" in text
    assert "| 1 | giant white arum lily | 1 |" in text
    assert "prompt: a photo of a {token}" in text


def test_datasets_reads_cls_as_class_labels_with_the_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "set"
    index = _set(folder)
    write_card(folder, index, NAMES, IDENTITY, {}, "png", "Synthetic set", None)
    (folder / "index.parquet").write_bytes(b"")  # beside the shards, as in a set: not read
    train = datasets.load_dataset(str(folder), split="train")
    assert train.features["cls"].names == NAMES
    assert [row["cls"] for row in train] == [0, 1, 0]
    assert train[1]["json"]["class_name"] == "giant white arum lily"
    assert train[0]["png"].size == (8, 8)
