"""Figure and summary table over every classifier run."""

from dafusion import pipeline
from dafusion.io import setup_job

setup_job(snakemake.log[0], snakemake.threads)
pipeline.aggregate(
    snakemake.input.runs,
    methods=snakemake.params.methods,
    figure=snakemake.output.figure,
    table=snakemake.output.table,
    report_split=snakemake.params.report_split,
)
