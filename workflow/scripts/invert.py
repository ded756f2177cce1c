"""Learn one textual-inversion token per class of a split, all classes in one job."""

from dafusion import pipeline
from dafusion.jobs.devices import claim_device
from dafusion.jobs.integrity import job
from dafusion.settings import InversionSettings, ModelSettings

with job(snakemake):
    # A GPU of the job's own when several GPU jobs run at once (before CUDA starts).
    claim_device(snakemake.resources.gpu, snakemake.config["model"]["device"])
    # Result settings come from params; execution knobs (device, chunking, ...) from the config.
    pipeline.invert(
        snakemake.input.split,
        model=ModelSettings.from_parts(snakemake.params.model, snakemake.config["model"]),
        settings=InversionSettings.from_parts(
            snakemake.params.inversion, snakemake.config["inversion"]
        ),
        seed=int(snakemake.wildcards.seed),
        output=snakemake.output.tokens,
        model_dir=snakemake.input.model or None,
        export_dir=snakemake.output.export,
        loss_path=snakemake.output.losses,
        erasure_path=snakemake.input.get("erasure") or None,
    )
