"""Halve a dataset per seed, as the original DA-Fusion code did (split_protocol: original-code)."""

import logging

import pandas as pd

from dafusion.datasets import seed_split
from dafusion.io import setup_job, write_parquet

setup_job(snakemake.log[0], snakemake.threads)
seed = int(snakemake.wildcards.seed)
pool, val = seed_split(pd.read_parquet(snakemake.input.pool), seed)
logging.getLogger("dafusion").info(
    "seed %d: %d training, %d evaluation images", seed, len(pool), len(val)
)
write_parquet(val, snakemake.output.val)
write_parquet(pool, snakemake.output.pool)
