"""One digits dataset's synthetic images scored by the reference digit classifier."""

from dafusion import pipeline
from dafusion.io import setup_job

setup_job(snakemake.log[0], snakemake.threads)
pipeline.recognition(
    snakemake.input.splits,
    snakemake.input.indices,
    methods=snakemake.params.methods,
    table=snakemake.output.table,
    figure=snakemake.output.png,
)
