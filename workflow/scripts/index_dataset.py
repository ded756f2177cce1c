"""Read a dataset once: training pool, evaluation and test manifests, object masks."""

from dafusion import pipeline
from dafusion.io import setup_job
from dafusion.settings import DatasetSettings

setup_job(snakemake.log[0], snakemake.threads)
pipeline.index_dataset(
    DatasetSettings(**snakemake.params.spec),
    snakemake.output.pool,
    snakemake.output.val,
    snakemake.output.test,
    snakemake.output.masks,
    threads=snakemake.threads,
)
