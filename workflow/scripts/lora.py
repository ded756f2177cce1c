"""Learn every class's token of a split jointly with one LoRA on the UNet (learner: lora)."""

from dafusion import pipeline
from dafusion.jobs.devices import claim_device
from dafusion.jobs.integrity import job
from dafusion.settings import InversionSettings, LoraSettings, ModelSettings

with job(snakemake):
    # A GPU of the job's own when several GPU jobs run at once (before CUDA starts).
    claim_device(snakemake.resources.gpu, snakemake.config["model"]["device"])
    # Result settings come from params; execution knobs (device, chunking, ...) from the config.
    pipeline.lora(
        snakemake.input.split,
        model=ModelSettings.from_parts(snakemake.params.model, snakemake.config["model"]),
        inversion=InversionSettings.from_parts(
            snakemake.params.inversion, snakemake.config["inversion"]
        ),
        settings=LoraSettings.from_parts(snakemake.params.lora, snakemake.config["lora"]),
        seed=int(snakemake.wildcards.seed),
        adapter_dir=snakemake.output.adapter,
        tokens_path=snakemake.output.tokens,
        loss_path=snakemake.output.losses,
        model_dir=snakemake.input.model or None,
    )
