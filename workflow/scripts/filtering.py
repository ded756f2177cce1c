"""One dataset's filters: what each keeps of every method's images, and what it drops."""

from dafusion import pipeline
from dafusion.jobs.integrity import job

with job(snakemake):
    pipeline.filtering(
        snakemake.input.indices,
        snakemake.input.scores,
        **snakemake.params.filtering,
        table=snakemake.output.table,
        figure=snakemake.output.png,
        dataset=snakemake.wildcards.dataset,
        classes=snakemake.params.gallery["gallery_classes"],
    )
