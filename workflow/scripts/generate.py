"""SDEdit M synthetic images per real image into WebDataset shards."""

from dafusion import pipeline
from dafusion.io import setup_job

setup_job(snakemake.log[0], snakemake.threads)
pipeline.generate(
    snakemake.input.split,
    model_cfg=snakemake.params.model,
    method_name=snakemake.wildcards.method,
    method=snakemake.params.method,
    generation_cfg=snakemake.params.generation,
    seed=int(snakemake.wildcards.seed),
    output=snakemake.output[0],
    model_dir=snakemake.input.model or None,
    tokens_path=snakemake.input.tokens or None,
    threads=snakemake.threads,
)
