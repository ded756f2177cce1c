"""Build the embedded tiny Stable Diffusion (random weights) as a diffusers directory."""

from dafusion import pipeline
from dafusion.jobs.integrity import job

with job(snakemake):
    pipeline.build_tiny_model(
        snakemake.output[0], name=snakemake.params.name, resolution=snakemake.params.resolution
    )
