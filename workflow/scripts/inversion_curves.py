"""One dataset's textual-inversion loss curves."""

from dafusion import pipeline
from dafusion.io import setup_job

setup_job(snakemake.log[0], snakemake.threads)
pipeline.inversion_curves(snakemake.input.losses, output=snakemake.output.png)
