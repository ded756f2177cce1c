"""Figure and summary table over every classifier run."""

from dafusion import pipeline
from dafusion.io import setup_job_log

setup_job_log(snakemake.log[0])
pipeline.aggregate(
    snakemake.input.runs,
    methods=snakemake.params.methods,
    figure=snakemake.output.figure,
    table=snakemake.output.table,
)
