"""Learn one textual-inversion token per class of a split, all classes in one job."""

from dafusion import pipeline
from dafusion.io import setup_job

setup_job(snakemake.log[0], snakemake.threads)
pipeline.invert(
    snakemake.input.split,
    model_cfg=snakemake.params.model,
    inversion_cfg=snakemake.params.inversion,
    seed=int(snakemake.wildcards.seed),
    output=snakemake.output.tokens,
    model_dir=snakemake.input.model or None,
    export_dir=snakemake.output.export,
    loss_path=snakemake.output.losses,
)
