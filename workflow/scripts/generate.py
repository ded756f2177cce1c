"""SDEdit one part of a synthetic set: M images per real image, as WebDataset shards."""

from dafusion import pipeline
from dafusion.jobs.devices import claim_device
from dafusion.jobs.integrity import job
from dafusion.settings import GenerationSettings, MethodSettings, ModelSettings

with job(snakemake):
    # A GPU of the job's own when several GPU jobs run at once (before CUDA starts).
    claim_device(snakemake.resources.gpu, snakemake.config["model"]["device"])
    # Result settings come from params (the set's identity and M); execution knobs (device,
    # batch size, ...) from the config.
    identity, size = (
        snakemake.params.synthetic["identity"],
        snakemake.params.synthetic["num_synthetic"],
    )
    pipeline.generate(
        snakemake.input.split,
        model=ModelSettings.from_parts(identity["model"], snakemake.config["model"]),
        set_name=snakemake.wildcards.set,
        method=MethodSettings(**identity["method"]),
        settings=GenerationSettings.from_parts(
            {**identity["generation"], "num_synthetic": size}, snakemake.config["generation"]
        ),
        seed=int(snakemake.wildcards.seed),
        part=int(snakemake.wildcards.part),
        parts=int(snakemake.wildcards.parts),
        output=snakemake.output[0],
        model_dir=snakemake.input.model or None,
        tokens_path=snakemake.input.tokens or None,
        threads=snakemake.threads,
        erasure_path=snakemake.input.erasure or None,
        lora_path=snakemake.input.lora or None,
    )
