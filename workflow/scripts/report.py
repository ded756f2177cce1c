"""The self-contained HTML report of a finished run."""

from dafusion import pipeline
from dafusion.io import setup_job

setup_job(snakemake.log[0], snakemake.threads)
pipeline.report(
    tables={k: snakemake.input[k] for k in ("summary", "scores", "novelty", "paired", "areas")},
    figures=dict(zip(snakemake.params.figures, snakemake.input.figures, strict=True)),
    galleries=snakemake.input.galleries,
    curves=snakemake.input.curves,
    checks=snakemake.input.erasure,
    captions=snakemake.params.captions,
    benchmarks=snakemake.params.benchmarks,
    output=snakemake.output[0],
)
