"""The image formats users have (phones' HEIC, browsers' JFIF and AVIF, `.JPE`), and folders
that hold no images: a class is read from them or indexing stops naming the folder, never a
class silently dropped."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import write_heic, write_image

from dafusion.data.datasets import read_dataset
from dafusion.data.images import load_image
from dafusion.data.manifest import class_names
from dafusion.settings import DatasetSettings


def _read(root, **spec):
    return read_dataset(DatasetSettings(kind="imagefolder", root="data", **spec), root)


def test_phone_and_browser_formats_are_indexed_with_their_class(tmp_path):
    data = tmp_path / "data"
    for i in range(2):
        write_image(data / f"bird/{i}.png", (0, 0, 200))
        write_image(data / f"cat/{i}.jfif", (200, 0, 0))
        write_heic(data / f"dog/{i}.heic", (0, 200, 0))  # a class of HEIC photos only
    write_image(data / "cat/2.JPE", (200, 0, 0), fmt="JPEG")
    write_heic(data / "bird/2.HEIF", (0, 0, 200))
    write_image(data / "bird/3.avif", (0, 0, 200))
    pool, val, _ = _read(tmp_path, val_fraction=0.34)
    both = [*pool.to_dict("records"), *val.to_dict("records")]
    assert class_names(pool) == ["bird", "cat", "dog"]
    assert sorted((r["class_name"], r["path"].rsplit("/", 1)[1]) for r in both) == [
        ("bird", "0.png"), ("bird", "1.png"), ("bird", "2.HEIF"), ("bird", "3.avif"),
        ("cat", "0.jfif"), ("cat", "1.jfif"), ("cat", "2.JPE"),
        ("dog", "0.heic"), ("dog", "1.heic"),
    ]  # fmt: skip
    colors = {"bird": (0, 0, 200), "cat": (200, 0, 0), "dog": (0, 200, 0)}
    for row in both:
        pixel = load_image(row).getpixel((8, 8))
        assert max(abs(a - b) for a, b in zip(pixel, colors[row["class_name"]], strict=True)) < 8


def test_a_fresh_process_reads_heic_and_importing_the_readers_loads_no_heic_reader(tmp_path):
    """Each job and DataLoader worker is its own process: the reader registers itself at the
    first image opened there, and a process that only imports the readers does without."""
    write_heic(tmp_path / "photo.heic", (10, 20, 30), size=(24, 12))
    code = (
        "import json, sys\n"
        "import dafusion.data.datasets, dafusion.pipeline\n"
        "before = 'pillow_heif' in sys.modules\n"
        "from dafusion.data.images import load_image\n"
        f"image = load_image({{'key': 'k', 'path': {str(tmp_path / 'photo.heic')!r}}})\n"
        "print(json.dumps([before, image.size, image.getpixel((3, 3))]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == [False, [24, 12], [10, 20, 30]]


def test_a_class_folder_without_images_is_an_error_naming_it(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"data/cat/{i}.jpg")
    (tmp_path / "data/dog").mkdir()
    for name in ("notes.txt", "scan.pdf", "raw.cr3"):
        (tmp_path / "data/dog" / name).write_bytes(b"not an image")
    with pytest.raises(ValueError) as error:
        _read(tmp_path)
    message = str(error.value)
    assert f"folder '{tmp_path / 'data/dog'}' holds 3 files but no image" in message
    assert "notes.txt, raw.cr3, scan.pdf" in message and ".heic" in message


def test_files_that_are_no_images_are_named_in_one_line_per_folder(tmp_path, caplog):
    for i in range(3):
        write_image(tmp_path / f"data/cat/{i}.jpg")
        write_image(tmp_path / f"data/dog/{i}.jpg")
    for i in range(7):
        (tmp_path / f"data/cat/notes-{i}.txt").write_text("")
    with caplog.at_level("WARNING"):
        _read(tmp_path, val_fraction=0.34)
    lines = [r.getMessage() for r in caplog.records if "not images" in r.getMessage()]
    assert lines == [
        f"skipped 7 files under '{tmp_path / 'data/cat'}' that are not images (by suffix): "
        "notes-0.txt, notes-1.txt, notes-2.txt, notes-3.txt, notes-4.txt and 2 more"
    ]


def test_an_unreadable_heic_is_named_and_a_class_left_empty_names_its_folder(tmp_path, caplog):
    (tmp_path / "data/dog").mkdir(parents=True)
    for i in range(3):
        write_image(tmp_path / f"data/cat/{i}.jpg")
        (tmp_path / f"data/dog/{i}.heic").write_bytes(b"\x00\x00\x00\x18ftypheic truncated")
    with pytest.raises(ValueError, match=r"cannot read image '.*/data/dog/0\.heic'.*skip_corrupt"):
        _read(tmp_path)
    with pytest.raises(ValueError) as error:
        _read(tmp_path, skip_corrupt=True)
    assert "skipped unreadable image" in caplog.text
    assert str(error.value).startswith(
        f"class 'dog' has no readable training images left (folder '{tmp_path / 'data/dog'}';"
    )
