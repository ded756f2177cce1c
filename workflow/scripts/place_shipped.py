"""Copy a shipped asset (the miniature, the reference classifier) under the results."""

from dafusion import pipeline
from dafusion.jobs.integrity import job

with job(snakemake):
    pipeline.place_shipped(snakemake.wildcards.asset, snakemake.output[0])
