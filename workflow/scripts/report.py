"""The self-contained HTML report of a finished run, and the resolved config it records."""

from dafusion import pipeline
from dafusion.jobs.integrity import job

with job(snakemake):
    tables = ("summary", "scores", "novelty", "paired", "areas", "per_class", "runs", "validation")
    pipeline.report(
        tables={name: snakemake.input[name] for name in tables},
        figures=dict(zip(snakemake.params.figures, snakemake.input.figures, strict=True)),
        galleries=snakemake.input.galleries,
        recognition=snakemake.input.recognition,
        curves=snakemake.input.curves,
        erasure=snakemake.input.erasure,
        captions=snakemake.params.captions,
        benchmarks=snakemake.params.benchmarks,
        config=snakemake.params.config,
        code=snakemake.params.workflow_code,
        output=snakemake.output.html,
        config_output=snakemake.output.config,
        filtering=snakemake.input.filtering,
        filtering_figures=snakemake.input.filtering_figures,
        filters=snakemake.params.filters,
    )
