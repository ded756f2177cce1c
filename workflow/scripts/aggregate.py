"""Figure and summary table over every classifier run."""

from dafusion import pipeline
from dafusion.io import setup_job
from dafusion.settings import AggregateSettings

setup_job(snakemake.log[0], snakemake.threads)
pipeline.aggregate(
    snakemake.input.runs,
    methods=snakemake.params.methods,
    figure=snakemake.output.figure,
    table=snakemake.output.table,
    settings=AggregateSettings(**snakemake.params.aggregate),
)
