"""One dataset's gallery: real images beside their synthetic variants, read from the shards."""

from dafusion import pipeline
from dafusion.jobs.integrity import job
from dafusion.settings import AggregateSettings

with job(snakemake):
    pipeline.gallery(
        snakemake.input.split,
        snakemake.input.indices,
        methods=snakemake.params.methods,
        output=snakemake.output.png,
        settings=AggregateSettings(**snakemake.params.gallery),
    )
