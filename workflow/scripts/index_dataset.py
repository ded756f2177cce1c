"""Read a dataset once: training pool and evaluation manifests."""

from dafusion import pipeline
from dafusion.io import setup_job_log

setup_job_log(snakemake.log[0])
pipeline.index_dataset(snakemake.params.spec, snakemake.output.pool, snakemake.output.val)
