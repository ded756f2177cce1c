"""Erase each class name of a dataset from the UNet: deltas and the erasure check table."""

from dafusion import pipeline
from dafusion.jobs.devices import claim_device
from dafusion.jobs.integrity import job
from dafusion.settings import ErasureSettings, ModelSettings

with job(snakemake):
    # A GPU of the job's own when several GPU jobs run at once (before CUDA starts).
    claim_device(snakemake.resources.gpu, snakemake.config["model"]["device"])
    # Result settings come from params; execution knobs (device, checkpoints) from the config.
    pipeline.erase(
        snakemake.input.pool,
        model=ModelSettings.from_parts(snakemake.params.model, snakemake.config["model"]),
        settings=ErasureSettings.from_parts(snakemake.params.erasure, snakemake.config["erasure"]),
        output=snakemake.output[0],
        model_dir=snakemake.input.model or None,
        code=snakemake.params.code,
    )
