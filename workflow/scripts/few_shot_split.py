"""Draw the nested few-shot training manifest of one (seed, shots)."""

from dafusion import pipeline
from dafusion.io import setup_job_log

setup_job_log(snakemake.log[0])
pipeline.few_shot_split(
    snakemake.input.pool,
    seed=int(snakemake.wildcards.seed),
    shots=int(snakemake.wildcards.shots),
    output=snakemake.output[0],
)
