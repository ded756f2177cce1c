"""Train one classifier (method, seed, shots) and write its metrics table."""

from dafusion import pipeline
from dafusion.io import setup_job

setup_job(snakemake.log[0], snakemake.threads)
pipeline.train(
    snakemake.input.split,
    snakemake.input.val,
    test_path=snakemake.input.test,
    classifier_cfg=snakemake.params.classifier,
    dataset=snakemake.wildcards.dataset,
    method=snakemake.wildcards.method,
    seed=int(snakemake.wildcards.seed),
    shots=int(snakemake.wildcards.shots),
    output=snakemake.output[0],
    synthetic_index=snakemake.input.synthetic or None,
)
