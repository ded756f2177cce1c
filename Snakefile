"""DA-Fusion: few-shot data augmentation with diffusion models, as a Snakemake workflow.

Targets: all (default: everything down to results/report.html), report, synthetic, tokens,
erasure. See README.md.
Reruns: profiles/default sets the rerun triggers (README, Reruns).
"""

import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("8.20")

# Model weights come from the local Hugging Face cache or a directory, never the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The library lives in src/. The workflow imports it from there, and so does every job:
# PYTHONPATH comes before site-packages, where another checkout's editable install of
# dafusion would otherwise win (Snakemake appends its own search paths to a script's).
# A rule's code fingerprint (dafusion.provenance) is of this copy, so jobs must run it.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
OTHER_PATHS = [
    p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p != SRC
]
os.environ.update(PYTHONPATH=os.pathsep.join([SRC, *filter(None, OTHER_PATHS)]))

from dafusion.workflow.config import SCHEMA, ConfigError, validate_config

# The embedded default, unless config files are given: `--configfile mine.yaml` runs
# mine.yaml alone (its datasets replace the digits instead of adding to them); to overlay
# the default, name it first: `--configfile config/config.yaml overlay.yaml`. `--config
# key=value` overlays whichever config is in use.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


try:
    # The config alone; what it reads from this machine is looked for once the requested
    # targets are known (common.smk, checked_machine).
    _validated = validate_config(config, SCHEMA)
except ConfigError as exc:
    raise WorkflowError(f"invalid configuration: {exc}") from None
config.clear()
config.update(_validated)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/erase.smk"
include: "workflow/rules/invert.smk"
include: "workflow/rules/lora.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/report.smk"


onstart:
    check_results_writable()
    check_gpu_limit()


# evaluated_runs as well as the report: an input function of the target rule always runs, so a
# config the all target cannot evaluate (config/augment.yaml) stops even when a report exists.
rule all:
    default_target: True
    input:
        evaluated_runs,
        checked,
        rules.report.output,
        PLAN.all_erasure(),


rule synthetic:
    input:
        checked,
        PLAN.all_synthetic(),


rule tokens:
    input:
        checked,
        PLAN.all_tokens(),


rule erasure:
    input:
        checked,
        PLAN.all_erasure(),
