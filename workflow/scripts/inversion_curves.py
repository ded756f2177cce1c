"""One dataset's textual-inversion loss curves."""

from dafusion.warmstart import hand_over

hand_over(snakemake)  # in a fork of a process with the libraries loaded (README, Warm start)

from dafusion import pipeline
from dafusion.io import setup_job

setup_job(snakemake.log[0], snakemake.threads)
pipeline.inversion_curves(snakemake.input.losses, output=snakemake.output.png)
