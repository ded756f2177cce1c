"""Tables and figures over every classifier run."""

from dafusion import pipeline
from dafusion.jobs.integrity import job
from dafusion.settings import AggregateSettings

with job(snakemake):
    tables = (
        "summary", "markdown", "scores", "novelty", "paired", "areas", "per_class", "runs",
        "validation",
    )  # fmt: skip
    pipeline.aggregate(
        snakemake.input.runs,
        methods=snakemake.params.methods,
        layout=snakemake.params.layout,
        figures=dict(zip(snakemake.params.figures, snakemake.output.figures, strict=True)),
        tables={name: snakemake.output[name] for name in tables},
        settings=AggregateSettings(**snakemake.params.aggregate),
    )
