"""Halve a dataset per seed, as the original DA-Fusion code did (split_protocol: original-code)."""

from dafusion import pipeline
from dafusion.jobs.integrity import job

with job(snakemake):
    pipeline.seed_split(
        snakemake.input.pool,
        seed=int(snakemake.wildcards.seed),
        pool_output=snakemake.output.pool,
        val_output=snakemake.output.val,
    )
