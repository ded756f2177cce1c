"""One dataset's gallery: real images beside their synthetic variants, read from the shards."""

from dafusion import pipeline
from dafusion.io import setup_job
from dafusion.settings import AggregateSettings

setup_job(snakemake.log[0], snakemake.threads)
pipeline.gallery(
    snakemake.input.split,
    snakemake.input.indices,
    methods=snakemake.params.methods,
    output=snakemake.output.png,
    settings=AggregateSettings(**snakemake.params.gallery),
)
