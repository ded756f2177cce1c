"""The index of a synthetic set, from the rows its generate parts wrote."""

from dafusion import pipeline
from dafusion.io import setup_job
from dafusion.settings import GenerationSettings, MethodSettings

setup_job(snakemake.log[0], snakemake.threads)
pipeline.gather_synthetic(
    snakemake.input.split,
    method=MethodSettings(**snakemake.params.method),
    settings=GenerationSettings.from_parts(
        snakemake.params.generation, snakemake.config["generation"]
    ),
    seed=int(snakemake.wildcards.seed),
    parts=list(snakemake.input.parts),
    output=snakemake.output[0],
)
