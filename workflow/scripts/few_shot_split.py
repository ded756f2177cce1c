"""Draw the nested few-shot training manifest of one (seed, shots)."""

from dafusion import pipeline
from dafusion.jobs.integrity import job

with job(snakemake):
    pipeline.few_shot_split(
        snakemake.input.pool,
        seed=int(snakemake.wildcards.seed),
        shots=None if snakemake.wildcards.shots == "all" else int(snakemake.wildcards.shots),
        output=snakemake.output[0],
        allow_fewer=snakemake.params.allow_fewer,
        dataset=snakemake.wildcards.dataset,
    )
