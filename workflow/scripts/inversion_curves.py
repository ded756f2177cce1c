"""One dataset's textual-inversion loss curves."""

from dafusion import pipeline
from dafusion.jobs.integrity import job

with job(snakemake):
    pipeline.inversion_curves(snakemake.input.losses, output=snakemake.output.png)
