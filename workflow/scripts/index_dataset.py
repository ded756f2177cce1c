"""Read a dataset once: training pool, evaluation and test manifests, object masks."""

from dafusion import pipeline
from dafusion.io import setup_job

setup_job(snakemake.log[0], snakemake.threads)
pipeline.index_dataset(
    snakemake.params.spec,
    snakemake.output.pool,
    snakemake.output.val,
    snakemake.output.test,
    snakemake.output.masks,
    threads=snakemake.threads,
)
