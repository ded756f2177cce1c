"""Score a synthetic set's images with the baseline run's classifier (docs/filtering.md)."""

from dafusion import pipeline
from dafusion.jobs.devices import claim_device
from dafusion.jobs.integrity import job
from dafusion.settings import ScoringSettings

with job(snakemake):
    # A GPU of the job's own when several GPU jobs run at once (before CUDA starts).
    claim_device(snakemake.resources.gpu, snakemake.config["scoring"]["device"])
    # Result settings come from params; the device and batch size (knobs) from the config.
    pipeline.score_classifier(
        snakemake.input.index,
        snakemake.input.head,
        output=snakemake.output[0],
        settings=ScoringSettings.from_parts(snakemake.params.scoring, snakemake.config["scoring"]),
    )
