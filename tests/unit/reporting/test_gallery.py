import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dafusion.data.images import encode_png
from dafusion.data.shards import encode_image, write_shard
from dafusion.jobs.io import write_parquet
from dafusion.reporting.gallery import CELL_INCHES, TITLE_INCHES, gallery_figure, read_synthetic
from dafusion.stages.synthetic import INDEX_SCHEMA

CLASSES = ("red", "green", "blue")
# key -> label; digits-0001 has no synthetic image in da-fusion.
SOURCES = {"digits-0000": 0, "digits-0001": 0, "digits-0002": 1, "digits-0003": 1, "digits-0004": 2}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _real_colour(key):
    return (int(key[-1]) * 40, 200, 10)


def _synthetic_colour(method, key, j):
    return (int(key[-1]) * 40, j * 60, 100 if method == "da-fusion" else 250)


def _image(colour, size=8):
    return Image.new("RGB", (size, size), colour)


@pytest.fixture
def split(tmp_path):
    """The few-shot manifest: even sources as files, odd ones as PNG bytes."""
    rows = []
    for key, label in SOURCES.items():
        path, data = None, None
        if int(key[-1]) % 2 == 0:
            path = str(tmp_path / f"{key}.png")
            _image(_real_colour(key)).save(path)
        else:
            data = encode_png(_image(_real_colour(key)))
        rows.append(
            {"key": key, "path": path, "image": data, "label": label,
             "class_name": CLASSES[label], "split": "train"}
        )  # fmt: skip
    return pd.DataFrame(rows)


def _meta(method, source, j, strength):
    label = SOURCES[source]
    return {
        "source_key": source, "j": j, "label": label, "class_name": CLASSES[label],
        "set": method, "strength": strength, "prompt": f"a photo of a {CLASSES[label]}",
        "guidance_scale": 7.5, "scheduler": "ddim", "steps": 5, "seed": 7 * j,
        "model_id": "tiny", "token_hash": "", "erasure": "",
    }  # fmt: skip


def _write_method(folder, method, images, strength, dropped=(), ext="png", per_shard=4):
    """Shards (by the project's writer) and index.parquet of `images`: (source, j) pairs;
    those in `dropped` get an index row without a shard, as the safety checker leaves.
    Returns the index, the folder and M (every variant written)."""
    samples = [
        {
            "key": f"{source}-{j:03d}",
            "image": encode_image(_image(_synthetic_colour(method, source, j)), ext),
            "label": SOURCES[source],
            "meta": _meta(method, source, j, strength),
        }
        for source, j in images
        if (source, j) not in dropped
    ]
    rows = []
    for n, start in enumerate(range(0, len(samples), per_shard)):
        part = samples[start : start + per_shard]
        rows += [
            {**r, "dropped": False} for r in write_shard(folder, f"shard-{n:06d}.tar", part, ext)
        ]
    rows += [
        {"key": f"{s}-{j:03d}", **_meta(method, s, j, strength), "shard": None, "dropped": True}
        for s, j in dropped
    ]
    index = pd.DataFrame(rows) if rows else pd.DataFrame(columns=INDEX_SCHEMA.names)
    write_parquet(index.sort_values("key"), folder / "index.parquet", INDEX_SCHEMA)
    return (
        pd.read_parquet(folder / "index.parquet"),
        folder,
        1 + max((j for _, j in images), default=0),
    )


@pytest.fixture
def synthetic(tmp_path):
    with_images = [k for k in SOURCES if k != "digits-0001"]
    da_fusion = [(k, j) for k in with_images for j in range(3)]
    return {
        "empty": _write_method(tmp_path / "empty", "empty", [], 0.5),
        "da-fusion": _write_method(
            tmp_path / "da-fusion", "da-fusion", da_fusion, 0.5, dropped={("digits-0002", 1)}
        ),
        "real-guidance": _write_method(
            tmp_path / "real-guidance", "real-guidance", [("digits-0000", 0)], 1.0, ext="webp"
        ),
    }


def test_read_synthetic_returns_the_pixels_written(synthetic):
    index, folder, _ = synthetic["da-fusion"]
    assert index["shard"].nunique() == 3
    keys = ["digits-0004-002", "digits-0000-001", "digits-0002-001", "digits-0002-002"]
    images = read_synthetic(index, folder, keys)
    assert list(images) == ["digits-0004-002", "digits-0000-001", "digits-0002-002"]  # dropped
    for key, image in images.items():
        source, j = key.rsplit("-", 1)
        expected = np.full((8, 8, 3), _synthetic_colour("da-fusion", source, int(j)), np.uint8)
        np.testing.assert_array_equal(np.asarray(image), expected)
    index, folder, _ = synthetic["real-guidance"]
    webp = read_synthetic(index, folder, ["digits-0000-000"])["digits-0000-000"]
    assert webp.getpixel((3, 3)) == _synthetic_colour("real-guidance", "digits-0000", 0)


def test_read_synthetic_names_the_shard_of_a_missing_key(synthetic):
    index, folder, _ = synthetic["da-fusion"]
    wrong = index.copy()
    wrong.loc[wrong["key"] == "digits-0000-000", "shard"] = "shard-000002.tar"
    with pytest.raises(
        ValueError, match=r"shard-000002\.tar' has no image of key 'digits-0000-000'"
    ):
        read_synthetic(wrong, folder, ["digits-0000-000"])
    with pytest.raises(ValueError, match="keys not in the index: digits-0009-000"):
        read_synthetic(index, folder, ["digits-0009-000"])


def _cells(fig, ncols):
    axes = fig.axes
    return [axes[r * ncols : (r + 1) * ncols] for r in range(len(axes) // ncols)]


def test_gallery_grid(split, synthetic):
    fig = gallery_figure(split, synthetic, images_per_class=1, max_classes=2, variants=2)
    # Columns per method: as many as it has variants to show (real-guidance has one), and one
    # for a method without images, which says so.
    ncols = 1 + 1 + 2 + 1
    rows = _cells(fig, ncols)
    assert len(fig.axes) == 2 * ncols
    assert sum(len(ax.images) for ax in fig.axes) == 4 + 3
    # Class 0: only digits-0000 has synthetic images in da-fusion (the first method with any).
    real, *_ = rows[0]
    assert real.get_title() == "real: red"
    np.testing.assert_array_equal(real.images[0].get_array(), np.full((8, 8, 3), (0, 200, 10)))
    assert real.images[0].get_interpolation() == "nearest"
    assert not real.get_xticks().size and not real.get_yticks().size
    titles = [ax.get_title() if ax.images else None for ax in rows[0]]
    assert titles == [
        "real: red", None, "da-fusion\nt0=0.5", "da-fusion\nt0=0.5", "real-guidance\nt0=1",
    ]  # fmt: skip
    np.testing.assert_array_equal(
        rows[0][3].images[0].get_array(), np.full((8, 8, 3), (0, 60, 100))
    )  # j = 1
    np.testing.assert_array_equal(rows[0][4].images[0].get_array(), np.full((8, 8, 3), (0, 0, 250)))
    assert [t.get_text() for t in rows[0][1].texts] == ["empty:\nno images"]
    blank = [ax for ax in fig.axes if not ax.images]
    assert len(blank) == 2 * ncols - 7 and not any(ax.axison for ax in blank)
    # Class 1: one of its two sources, the same for the same seed.
    key = f"digits-000{rows[1][0].images[0].get_array()[0, 0, 0] // 40}"
    assert rows[1][0].get_title() == "real: green" and key in ("digits-0002", "digits-0003")
    again = gallery_figure(split, synthetic, images_per_class=1, max_classes=2, variants=2)
    np.testing.assert_array_equal(
        _cells(again, ncols)[1][0].images[0].get_array(), rows[1][0].images[0].get_array()
    )
    # digits-0002's j = 1 was dropped: its variants are j = 0 and 2.
    green = [ax.images[0].get_array()[0, 0, 1] for ax in rows[1][2:4]]
    assert green == ([0, 120] if key == "digits-0002" else [0, 60])


def test_gallery_shows_only_the_variants_a_method_reads(split, synthetic):
    """A set shared with a method of larger M holds more variants than a method of M = 2
    reads: its gallery cells stop at j < 2, as its classifier does, even where variants = 3
    would fit more (digits-0002's j = 1 was dropped, so it shows j = 0 alone)."""
    index, folder, size = synthetic["da-fusion"]
    assert size == 3
    fig = gallery_figure(
        split, {"da-fusion": (index, folder, 2)}, images_per_class=2, max_classes=2, variants=3
    )
    ncols = 1 + 2
    shown = {
        row[0].get_title() + str(row[0].images[0].get_array()[0, 0, 0]): [
            ax.images[0].get_array()[0, 0, 1] // 60 for ax in row[1:] if ax.images
        ]
        for row in _cells(fig, ncols)
    }
    assert shown == {"real: red0": [0, 1], "real: green80": [0], "real: green120": [0, 1]}


def test_gallery_rows_cover_every_class_with_images(split, synthetic):
    fig = gallery_figure(split, synthetic, images_per_class=2, variants=1, seed=3)
    ncols = 1 + 3
    titles = [row[0].get_title() for row in _cells(fig, ncols)]
    assert titles == ["real: red", "real: green", "real: green", "real: blue"]
    reds = [row[0].images[0].get_array()[0, 0, 0] for row in _cells(fig, ncols)]
    assert reds == [0, 80, 120, 160]  # digits-0000, 0002, 0003, 0004 (0001 has no images)
    np.testing.assert_allclose(
        fig.get_size_inches(), (CELL_INCHES * ncols, (CELL_INCHES + TITLE_INCHES) * 4)
    )
    assert min(ax.title.get_fontsize() for ax in fig.axes if ax.images) >= 7


def test_gallery_without_images_names_the_methods(split, synthetic):
    empty = {"empty": synthetic["empty"], "none": synthetic["empty"]}
    with pytest.raises(ValueError, match=r"no image in any method given \('empty', 'none'\)"):
        gallery_figure(split, empty)
