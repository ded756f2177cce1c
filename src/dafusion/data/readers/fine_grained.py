"""Fine-grained datasets with their own split files: Flowers102, FGVC Aircraft, Stanford Cars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...settings import DatasetSettings
from ..manifest import manifest, sanitize_key
from .common import dataset_root, locate, read_lines

# The standard Oxford 102 category names, in label order (label 1 first).
FLOWERS102_CLASSES = [
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea",
    "english marigold", "tiger lily", "moon orchid", "bird of paradise", "monkshood",
    "globe thistle", "snapdragon", "colt's foot", "king protea", "spear thistle", "yellow iris",
    "globe-flower", "purple coneflower", "peruvian lily", "balloon flower",
    "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger",
    "grape hyacinth", "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke",
    "sweet william", "carnation", "garden phlox", "love in the mist", "mexican aster",
    "alpine sea holly", "ruby-lipped cattleya", "cape flower", "great masterwort", "siam tulip",
    "lenten rose", "barbeton daisy", "daffodil", "sword lily", "poinsettia", "bolero deep blue",
    "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion", "petunia",
    "wild pansy", "primula", "sunflower", "pelargonium", "bishop of llandaff", "gaura",
    "geranium", "orange dahlia", "pink-yellow dahlia", "cautleya spicata", "japanese anemone",
    "black-eyed susan", "silverbush", "californian poppy", "osteospermum", "spring crocus",
    "bearded iris", "windflower", "tree poppy", "gazania", "azalea", "water lily", "rose",
    "thorn apple", "morning glory", "passion flower", "lotus", "toad lily", "anthurium",
    "frangipani", "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia",
    "cyclamen", "watercress", "canna lily", "hippeastrum", "bee balm", "ball moss", "foxglove",
    "bougainvillea", "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower",
    "trumpet creeper", "blackberry lily",
]  # fmt: skip
AIRCRAFT_NAME_FILES = {
    "variant": "variants.txt",
    "family": "families.txt",
    "manufacturer": "manufacturers.txt",
}


def _loadmat(path: Path) -> dict:
    from scipy.io import loadmat

    if not path.is_file():
        raise FileNotFoundError(f"missing file '{path}'; the dataset on disk is incomplete")
    return loadmat(path, squeeze_me=True)


def read_flowers102(spec: DatasetSettings, base_dir: Path) -> pd.DataFrame:
    """Oxford Flowers102: `jpg/image_NNNNN.jpg`, `imagelabels.mat` and `setid.mat`.

    setid's trnid/valid/tstid give the train, evaluation and test splits; with
    `split_protocol: original-code` every image goes to the pool, to be halved per seed.
    """
    root = locate(dataset_root(spec, base_dir), "imagelabels.mat", ["flowers-102"], "flowers102")
    labels = np.atleast_1d(_loadmat(root / "imagelabels.mat")["labels"]).astype(int)
    if spec.split_protocol == "original-code":
        split_of = dict.fromkeys(range(1, len(labels) + 1), "train")
    else:
        setid = _loadmat(root / "setid.mat")
        split_of = {
            int(index): split
            for split, field in (("train", "trnid"), ("val", "valid"), ("test", "tstid"))
            for index in np.atleast_1d(setid[field])
        }
    rows = []
    for index, label in enumerate(labels, start=1):
        if index not in split_of:
            continue
        if not 1 <= label <= len(FLOWERS102_CLASSES):
            raise ValueError(f"'{root / 'imagelabels.mat'}': image {index} has label {label}")
        rows.append(
            {
                "key": f"image_{index:05d}",
                "path": str(root / "jpg" / f"image_{index:05d}.jpg"),
                "label": label - 1,
                "class_name": FLOWERS102_CLASSES[label - 1],
                "split": split_of[index],
            }
        )
    return manifest(rows)


def read_fgvc_aircraft(spec: DatasetSettings, base_dir: Path) -> pd.DataFrame:
    """FGVC Aircraft 2013b: `data/images/`, `images_{level}_{train,val,test}.txt`.

    `label_level` picks variant (100 classes, the default), family (70) or manufacturer (30);
    the class order is that of variants.txt / families.txt / manufacturers.txt.
    """
    level = spec.label_level
    root = locate(
        dataset_root(spec, base_dir),
        "images_variant_train.txt",
        ["data", "fgvc-aircraft-2013b/data"],
        "fgvc_aircraft",
    )
    names = read_lines(root / AIRCRAFT_NAME_FILES[level])
    label_of = {name: i for i, name in enumerate(names)}
    rows = []
    for split in ("train", "val", "test"):
        listing = root / f"images_{level}_{split}.txt"
        for line in read_lines(listing):
            image_id, _, name = line.partition(" ")
            if name not in label_of:
                raise ValueError(
                    f"'{listing}': '{name}' is not in {AIRCRAFT_NAME_FILES[level]}; the dataset "
                    "files do not match"
                )
            rows.append(
                {
                    "key": sanitize_key(image_id),
                    "path": str(root / "images" / f"{image_id}.jpg"),
                    "label": label_of[name],
                    "class_name": name,
                    "split": split,
                }
            )
    return manifest(rows)


def read_stanford_cars(spec: DatasetSettings, base_dir: Path) -> pd.DataFrame:
    """Stanford Cars in the layout torchvision's StanfordCars reads.

    `devkit/cars_meta.mat` (class names: make, model, year), `devkit/cars_train_annos.mat`
    with `cars_train/`, and `cars_test_annos_withlabels.mat` with `cars_test/` (the test
    split). Evaluation images are held out of the training images.
    """
    root = locate(
        dataset_root(spec, base_dir), "devkit/cars_meta.mat", ["stanford_cars"], "stanford_cars"
    )
    names = [str(name).strip() for name in _loadmat(root / "devkit/cars_meta.mat")["class_names"]]
    rows = []
    for split, folder, annotation_file in (
        ("train", "cars_train", root / "devkit/cars_train_annos.mat"),
        ("test", "cars_test", root / "cars_test_annos_withlabels.mat"),
    ):
        for record in np.atleast_1d(_loadmat(annotation_file)["annotations"]):
            fname, label = str(record["fname"]), int(record["class"]) - 1
            if not 0 <= label < len(names):
                raise ValueError(f"'{annotation_file}': {fname} has class {label + 1}")
            rows.append(
                {
                    "key": sanitize_key(f"{folder}-{Path(fname).stem}"),
                    "path": str(root / folder / fname),
                    "label": label,
                    "class_name": names[label],
                    "split": split,
                }
            )
    return manifest(rows)
