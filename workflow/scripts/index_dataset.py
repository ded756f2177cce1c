"""Read a dataset once: training pool, evaluation and test manifests, object masks."""

from dafusion import pipeline
from dafusion.jobs.integrity import job
from dafusion.settings import DatasetSettings

with job(snakemake):
    pipeline.index_dataset(
        DatasetSettings(**snakemake.params.spec),
        snakemake.output.pool,
        snakemake.output.val,
        snakemake.output.test,
        snakemake.output.masks,
        threads=snakemake.threads,
    )
