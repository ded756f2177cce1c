"""Train one classifier (method, seed, shots) and write its metrics table and its head."""

from dafusion import pipeline
from dafusion.jobs.devices import claim_device
from dafusion.jobs.integrity import job
from dafusion.settings import ClassifierSettings

with job(snakemake):
    # A GPU of the job's own when several GPU jobs run at once (before CUDA starts).
    claim_device(snakemake.resources.gpu, snakemake.config["classifier"]["device"])
    # Result settings come from params; the device (an execution knob) from the config.
    pipeline.train(
        snakemake.input.split,
        snakemake.input.val,
        settings=ClassifierSettings.from_parts(
            snakemake.params.classifier, snakemake.config["classifier"]
        ),
        dataset=snakemake.wildcards.dataset,
        method=snakemake.wildcards.method,
        seed=int(snakemake.wildcards.seed),
        shots=int(snakemake.wildcards.shots),
        output=snakemake.output.run,
        synthetic_index=snakemake.input.synthetic or None,
        num_synthetic=snakemake.params.synthetic.get("num_synthetic"),
        test_path=snakemake.input.test,
        head_path=snakemake.output.head,
        filter=snakemake.params.synthetic.get("filter"),
        scores_path=snakemake.input.scores or None,
    )
