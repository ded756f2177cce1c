"""One digits dataset's synthetic images scored by the reference digit classifier."""

from dafusion import pipeline
from dafusion.jobs.integrity import job

with job(snakemake):
    pipeline.recognition(
        snakemake.input.splits,
        snakemake.input.indices,
        methods=snakemake.params.methods,
        table=snakemake.output.table,
        figure=snakemake.output.png,
        reference_dir=snakemake.input.reference,
    )
