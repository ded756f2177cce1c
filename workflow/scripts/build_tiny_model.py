"""Build the embedded tiny Stable Diffusion (random weights) as a diffusers directory."""

from dafusion.warmstart import hand_over

hand_over(snakemake)  # in a fork of a process with the libraries loaded (README, Warm start)

from dafusion import pipeline
from dafusion.io import setup_job

setup_job(snakemake.log[0], snakemake.threads)
pipeline.build_tiny_model(snakemake.output[0], resolution=snakemake.params.resolution)
