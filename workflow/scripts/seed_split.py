"""Halve a dataset per seed, as the original DA-Fusion code did (split_protocol: original-code)."""

from dafusion.warmstart import hand_over

hand_over(snakemake)  # in a fork of a process with the libraries loaded (README, Warm start)

from dafusion import pipeline
from dafusion.io import setup_job

setup_job(snakemake.log[0], snakemake.threads)
pipeline.seed_split(
    snakemake.input.pool,
    seed=int(snakemake.wildcards.seed),
    pool_output=snakemake.output.pool,
    val_output=snakemake.output.val,
)
