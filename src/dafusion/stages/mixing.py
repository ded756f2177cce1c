"""Real images mixed with synthetic ones as the paper trains on them (eq. 6-7), for any code.

The classifier stage draws its examples with `draw_batch` from here, and `MixingDataset`
draws with the same function, the same generator seeding and the same batches, so that
one's training loop sees the examples the other's would. Both take the same filter
(`filtering.FilterSettings`, `select_variants`): the set's images it drops are never drawn.
Importing this module needs no Snakemake: only torch, pandas, Pillow and (for the shards)
webdataset.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image

from ..data.images import load_image
from ..data.manifest import read_manifest
from ..data.shards import read_images
from .filtering import FilterSettings, Selection, as_filter, select
from .scoring import read_scores, scores_path


def synthetic_lookup(real_keys: Sequence[str], index: pd.DataFrame) -> list[torch.Tensor]:
    """For each real image, the positions (in `index`) of its synthetic variants."""
    position = {key: i for i, key in enumerate(real_keys)}
    lookup: list[list[int]] = [[] for _ in real_keys]
    for pos, source in enumerate(index["source_key"]):
        if source not in position:
            raise ValueError(f"synthetic image of unknown real image '{source}'")
        lookup[position[source]].append(pos)
    return [torch.as_tensor(v, dtype=torch.long) for v in lookup]


def kept_variants(index: pd.DataFrame, num_synthetic: int | None = None) -> pd.DataFrame:
    """The rows of a set's index that a run of M = `num_synthetic` reads (all M when None):
    the first M variants of each image, less the safety checker's drops (they have no
    shard), renumbered from 0 as `draw_batch`'s positions count them."""
    kept = ~index["dropped"]
    if num_synthetic is not None:
        kept &= index["j"] < num_synthetic
    return index[kept].reset_index(drop=True)


def select_variants(
    index: pd.DataFrame | str | Path,
    num_synthetic: int | None = None,
    filter: FilterSettings | Mapping[str, Any] | None = None,
    scores: pd.DataFrame | str | Path | None = None,
) -> Selection:
    """The rows a run of M = `num_synthetic` draws from a set (`kept_variants`), less those
    `filter` drops (`filtering.select`). `index`: the set's `index.parquet` or that frame;
    `scores`: the set's scores of `filter.by`, a table or its file (default: the file
    beside `index`, `scoring.scores_path`). Without a filter, `rows` is `kept_variants`'s
    frame and no scores are read."""
    path = None if isinstance(index, pd.DataFrame) else Path(index)
    frame = index if isinstance(index, pd.DataFrame) else pd.read_parquet(index)
    candidates = kept_variants(frame, num_synthetic)
    spec = as_filter(filter)
    if spec is None:
        return Selection(candidates, candidates, None)
    if scores is None:
        if path is None:
            raise ValueError(f"a filter by {spec.by} of an index frame needs its scores")
        scores = scores_path(path, spec.by)
    where = "the scores"
    if not isinstance(scores, pd.DataFrame):
        where, scores = str(scores), read_scores(scores, spec.by)
    return select(candidates, scores, spec, where)


class VariantTable:
    """Per real image, its synthetic positions padded with -1 to [N, max M], and their count."""

    def __init__(self, variants: Sequence[torch.Tensor]):
        self.counts = torch.tensor([len(v) for v in variants], dtype=torch.long)
        width = max([len(v) for v in variants] + [1])
        self.positions = torch.full((len(variants), width), -1, dtype=torch.long)
        for i, v in enumerate(variants):
            self.positions[i, : len(v)] = v

    def __len__(self) -> int:
        return len(self.counts)


def draw_batch(
    generator: torch.Generator,
    variants: Sequence[torch.Tensor] | VariantTable,
    alpha: float,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6-7: real indices i ~ U{1..N}; with prob. alpha, a synthetic variant j of i.

    Returns (real index, synthetic position or -1) per batch element. Pass a VariantTable
    built once to draw without any per-element Python work.
    """
    table = variants if isinstance(variants, VariantTable) else VariantTable(variants)
    real = torch.randint(len(table), (batch_size,), generator=generator)
    swap = torch.rand(batch_size, generator=generator) < alpha
    pick = torch.rand(batch_size, generator=generator)
    count = table.counts[real]
    j = (pick * count.to(pick.dtype)).long()  # the same float32 product as pick[b] * M
    chosen = table.positions[real, j.clamp(max=table.positions.shape[1] - 1)]
    synthetic = torch.where(swap & (count > 0), chosen, torch.full_like(chosen, -1))
    return real, synthetic


class MixingDataset(torch.utils.data.IterableDataset):
    """Real images of a split manifest, each replaced with probability `alpha` by one of its
    synthetic variants: (image, label, is_synthetic) examples, drawn `batch_size` at a time.

    `manifest`: a split manifest, its parquet file (such as
    `results/{dataset}/splits/seed{seed}-shots{shots}.parquet`, read with
    `manifest.read_manifest`: its image paths join the dataset root the config names, so
    work in the directory the workflow ran in) or that DataFrame; `index`: the synthetic set's
    `index.parquet` from the same seed and shots, whose shards lie beside it; `num_synthetic`:
    M, the variants per image to read (None: all the set holds). The label is the real
    image's; the image is RGB PIL, or what `transform` makes of it. The set's encoded
    images are held in memory, and each one decoded when drawn.

    `filter`: a method's filter (`filtering.FilterSettings`, or its `filter:` mapping such
    as `{"by": "classifier", "min_confidence": 0.5}`), read against the set's scores
    (`scores`, default the `scores-{by}.parquet` beside `index`): the images it drops are
    never drawn, and a real image that keeps none is drawn as real (`selection` says
    which, `Selection.emptied`). The draws of the classifier stage given the same selection
    (`select_variants(...).rows`) are this dataset's draws.

    Equal draws: an epoch is `steps` steps of `batch_size` examples, and the steps of epoch
    `e` (`set_epoch`, 0 by default) are steps e*steps .. (e+1)*steps - 1 of the classifier
    stage's draws for `seed` with `classifier.batch_size` = `batch_size` and
    `synthetic_probability` = `alpha` (exactly its draws with `augmentation: none`; its
    other augmentations draw from the same generator between steps, which shifts its later
    draws). This holds for any number of DataLoader workers, given
    `DataLoader(dataset, batch_size=dataset.batch_size)` and its default in-order delivery:
    every worker replays the draws (index draws only, microseconds per step) and loads the
    examples of every `num_workers`-th step, which the DataLoader hands out round-robin. Call
    `set_epoch` before each epoch's iteration without persistent workers (which keep the
    epoch they started with), as with DistributedSampler. Random transforms draw from the
    process's global generators, which the DataLoader seeds per worker: they are not part
    of the guarantee.
    """

    def __init__(
        self,
        manifest: pd.DataFrame | str | Path,
        index: str | Path,
        alpha: float,
        batch_size: int,
        steps: int,
        seed: int = 0,
        num_synthetic: int | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
        filter: FilterSettings | Mapping[str, Any] | None = None,
        scores: pd.DataFrame | str | Path | None = None,
    ):
        if not isinstance(manifest, pd.DataFrame):
            manifest = read_manifest(manifest)
        self.real = manifest.to_dict("records")
        self.selection = select_variants(index, num_synthetic, filter, scores)
        variants = self.selection.rows
        self.table = VariantTable(synthetic_lookup(manifest["key"].tolist(), variants))
        images = read_images(index)
        self.synthetic = [images[key][0] for key in variants["key"]]
        self.alpha = alpha
        self.batch_size = batch_size
        self.steps = steps
        self.seed = seed
        self.transform = transform
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Which `steps` steps of the one stream of draws the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps * self.batch_size

    def draws(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's steps: per step, `draw_batch`'s (real index, synthetic position or
        -1), from a generator seeded as the classifier stage's, earlier epochs replayed."""
        generator = torch.Generator().manual_seed(self.seed)
        start = self.epoch * self.steps
        for step in range(start + self.steps):
            drawn = draw_batch(generator, self.table, self.alpha, self.batch_size)
            if step >= start:
                yield drawn

    def __iter__(self) -> Iterator[tuple[Any, int, bool]]:
        worker = torch.utils.data.get_worker_info()
        rank, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for step, (real, synthetic) in enumerate(self.draws()):
            if step % workers != rank:
                continue
            for i, s in zip(real.tolist(), synthetic.tolist(), strict=True):
                if s >= 0:
                    image = Image.open(io.BytesIO(self.synthetic[s])).convert("RGB")
                else:
                    image = load_image(self.real[i])
                label = int(self.real[i]["label"])
                yield (self.transform(image) if self.transform else image), label, s >= 0
