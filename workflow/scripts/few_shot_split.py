"""Draw the nested few-shot training manifest of one (seed, shots)."""

from dafusion import pipeline
from dafusion.io import setup_job

setup_job(snakemake.log[0], snakemake.threads)
pipeline.few_shot_split(
    snakemake.input.pool,
    seed=int(snakemake.wildcards.seed),
    shots=None if snakemake.wildcards.shots == "all" else int(snakemake.wildcards.shots),
    output=snakemake.output[0],
    allow_fewer=snakemake.params.allow_fewer,
)
