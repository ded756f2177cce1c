"""Real images mixed with synthetic ones as the paper trains on them (eq. 6-7).

The classifier stage draws its examples with `draw_batch` from here. Importing this module
needs no Snakemake: only torch and pandas.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch


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
