"""Score a synthetic set's images by how far each moved from its source image."""

from dafusion import pipeline
from dafusion.jobs.integrity import job

with job(snakemake):
    pipeline.score_change(snakemake.input.index, snakemake.input.split, output=snakemake.output[0])
