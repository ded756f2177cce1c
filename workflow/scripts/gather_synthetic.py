"""The index of a synthetic set, from the rows its generate parts wrote."""

from dafusion import pipeline
from dafusion.jobs.integrity import job
from dafusion.settings import GenerationSettings, MethodSettings

with job(snakemake):
    identity, size = (
        snakemake.params.synthetic["identity"],
        snakemake.params.synthetic["num_synthetic"],
    )
    pipeline.gather_synthetic(
        snakemake.input.split,
        identity=identity,
        method=MethodSettings(**identity["method"]),
        settings=GenerationSettings.from_parts(
            {**identity["generation"], "num_synthetic": size}, snakemake.config["generation"]
        ),
        seed=int(snakemake.wildcards.seed),
        parts=list(snakemake.input.parts),
        output=snakemake.output[0],
        code=snakemake.params.code,
        tokens_path=snakemake.input.tokens or None,
    )
