"""A dataset's erasure check as a heatmap."""

from dafusion import pipeline
from dafusion.jobs.integrity import job

with job(snakemake):
    pipeline.erasure_check(snakemake.input.check, snakemake.output.png)
