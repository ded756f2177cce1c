"""DA-Fusion: few-shot data augmentation with diffusion models, as a Snakemake workflow.

Targets: all (default), synthetic, tokens. See README.md.
"""

import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("8.20")

# Model weights come from the local Hugging Face cache or a directory, never the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The library lives in src/. Snakemake hands this sys.path to every script job, so jobs
# (local, conda or cluster) import the workflow's own copy.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from dafusion.config import ConfigError, validate_config


configfile: "config/config.yaml"


try:
    _validated = validate_config(
        config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"
    )
except ConfigError as exc:
    raise WorkflowError(f"invalid configuration: {exc}") from None
config.clear()
config.update(_validated)


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/invert.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"


rule all:
    default_target: True
    input:
        rules.aggregate.output,


rule synthetic:
    input:
        all_synthetic(),


rule tokens:
    input:
        all_tokens(),
