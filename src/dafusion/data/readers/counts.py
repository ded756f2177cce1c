"""How many images the smallest class of each of the paper's datasets has, with sources.

Few-shot subsets need `shots` training images in every class, and which images train depends
on the entry's settings (a dataset's own split, the 20% held out, the original code's per-seed
halves). These public figures let a config's (dataset, shots) cells be checked before any
data is on disk (`tests/unit/workflow/test_paper_cells.py`): a class is drawn at random
(`classes: 20`), so the figure is that of the dataset's smallest class. Where the data is on disk,
`few_shot_split` stops at a class with too few images, naming the dataset, the class and its
count.

Each figure says how it is known: `published` (the dataset's page or paper), `counted` (a
count of the published archive, with the published bound it refines), or `assumed` (no
public figure: the least the paper's grid needs, said so, for the few-shot check to confirm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...settings import DatasetSettings


@dataclass(frozen=True)
class Smallest:
    """The images of a kind's smallest class in one of its reader's splits."""

    images: int
    status: str  # "published", "counted" or "assumed"
    source: str


@dataclass(frozen=True)
class KindCounts:
    """A kind's smallest class: in the reader's `train` split, and among every image where
    `split_protocol: original-code` reads more than that (Flowers102's setid.mat is then
    ignored). `own_val`: the reader gives an evaluation split, so nothing is held out of
    `train` under the default protocol."""

    train: Smallest
    own_val: bool
    every_image: Smallest | None = None


# The number of images whose largest object is of a class is not published for PASCAL or
# COCO: it is known only once every mask is read.
_LARGEST_OBJECT = (
    "not published: an image's class is its largest object's, known only once its masks are "
    "read. Assumed: 16, the most the paper's figures ask for; few_shot_split checks it"
)

COUNTS: dict[str, KindCounts] = {
    "flowers102": KindCounts(
        # setid.mat: trnid and valid hold 10 images of each class (1,020 each), tstid the
        # other 6,149 (Nilsback & Zisserman 2008; robots.ox.ac.uk/~vgg/data/flowers/102/).
        train=Smallest(10, "published", "setid.mat's trnid: 10 images of each of 102 classes"),
        own_val=True,
        # "Each class consists of between 40 and 258 images", 8,189 in all (the same page).
        every_image=Smallest(40, "published", "8,189 images, 40 to 258 per class"),
    ),
    "caltech101": KindCounts(
        # 9,146 images in 101 classes and BACKGROUND_Google (left out here). The dataset page
        # (vision.caltech.edu/Image_Datasets/Caltech101/) says "about 40 to 800 images per
        # category"; the archive's smallest folder, inline_skate, holds 31 ("31 to 800 per
        # category", as papers using it report). At least 30 is certain: TensorFlow
        # Datasets' caltech101 puts 30 images of each of the 102 classes in its train split.
        train=Smallest(31, "counted", "inline_skate, 101_ObjectCategories' smallest folder"),
        own_val=False,
    ),
    "pascal": KindCounts(
        # VOC2012 ImageSets/Segmentation: train.txt 1,464 images, val.txt 1,449
        # (host.robots.ox.ac.uk/pascal/VOC/voc2012/); 20 classes.
        train=Smallest(16, "assumed", f"1,464 images in train.txt; per class {_LARGEST_OBJECT}"),
        own_val=True,
    ),
    "coco": KindCounts(
        # train2017: 118,287 images, 117,266 with an annotation (cocodataset.org); 80 classes.
        # Its rarest categories (hair drier, toaster) may be the largest object of fewer than
        # 16 images; `classes: 20` with this workflow's seed draws neither (where every
        # category is some image's largest object).
        train=Smallest(16, "assumed", f"117,266 annotated train2017 images; {_LARGEST_OBJECT}"),
        own_val=True,
    ),
    "leafy_spurge": KindCounts(
        # The paper (Appendix H): 39 sites x 9 plots x 4 crops, some spurge crops removed;
        # the Hugging Face copy's `crop` train split holds 800 images (the
        # leafy-spurge-dataset package's README). Neither gives the split per class.
        train=Smallest(
            20,
            "assumed",
            "800 training images (Hugging Face `crop`) in 2 classes, split per class not "
            "published. Assumed: 20, which leaves 16 after the 20% held out",
        ),
        own_val=False,
    ),
    "fgvc_aircraft": KindCounts(
        # 100 images of each of 100 variants in three equal subsets, train 3,334, val and test
        # 3,333 (Maji et al. 2013; robots.ox.ac.uk/~vgg/data/fgvc-aircraft/). A family or
        # manufacturer (label_level) joins variants, so it has more.
        train=Smallest(33, "published", "100 images per variant, a third in train"),
        own_val=True,
    ),
    "stanford_cars": KindCounts(
        # 16,185 images of 196 classes: 8,144 train, 8,041 test, "each class has been split
        # roughly in a 50-50 split" (ai.stanford.edu/~jkrause/cars/car_dataset.html); the
        # smallest class is not given there.
        train=Smallest(
            20,
            "assumed",
            "8,144 training images in 196 classes (41.6 on average), smallest not published. "
            "Assumed: 20, which leaves 16 after the 20% held out",
        ),
        own_val=False,
    ),
    "imagenet": KindCounts(
        # ILSVRC 2012 CLS-LOC: 732 to 1,300 training images per class, 50 val (Russakovsky et
        # al., IJCV 2015, Table 2).
        train=Smallest(732, "published", "ILSVRC 2012: 732 to 1,300 training images per class"),
        own_val=True,
    ),
}


def pool_images(images: int, spec: DatasetSettings, own_val: bool) -> int:
    """The training images a class of `images` keeps in its few-shot pool (each seed's, for
    `split_protocol: original-code`): `datasets.halve_per_seed` trains on the first half,
    rounded up; `datasets.hold_out` holds out max(1, ceil(val_fraction x n)) where the
    dataset has no evaluation split of its own."""
    if spec.split_protocol == "original-code":
        return math.ceil(images / 2)
    if own_val or spec.val_fraction == 0:
        return images
    return images - max(1, math.ceil(spec.val_fraction * images))


def smallest_pool(spec: DatasetSettings) -> tuple[int, Smallest]:
    """The few-shot pool of the kind's smallest class under `spec`, and the figure it comes
    from; a KeyError for a kind without published figures."""
    counts = COUNTS[spec.kind]
    smallest = counts.train
    if spec.split_protocol == "original-code" and counts.every_image is not None:
        smallest = counts.every_image
    return pool_images(smallest.images, spec, counts.own_val), smallest
