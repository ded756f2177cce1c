"""Build the embedded tiny Stable Diffusion (random weights) as a diffusers directory."""

from dafusion import pipeline
from dafusion.io import setup_job

setup_job(snakemake.log[0], snakemake.threads)
pipeline.build_tiny_model(snakemake.output[0], resolution=snakemake.params.resolution)
