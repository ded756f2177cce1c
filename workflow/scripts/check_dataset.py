"""Read a dataset with its entry's settings; write only its classes' image counts."""

from dafusion import pipeline
from dafusion.jobs.integrity import job
from dafusion.settings import DatasetSettings

with job(snakemake):
    pipeline.check_dataset(
        DatasetSettings(**snakemake.params.spec), snakemake.output[0], threads=snakemake.threads
    )
