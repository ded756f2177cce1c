"""A dataset's erasure check as a heatmap."""

from dafusion import pipeline
from dafusion.io import setup_job

setup_job(snakemake.log[0], snakemake.threads)
pipeline.erasure_check(snakemake.input.check, snakemake.output.png)
