"""Where the workflow writes each result: one pattern per kind of file, relative to the
results root (`config["results"]`).

The rules' outputs (workflow/rules/*.smk) and the plan's target lists
(`dafusion.workflow.plan`) both use these patterns, so a job's output and the path another
job or target asks for cannot drift apart. Wildcards: {dataset}, {method}, {set} (a
synthetic set, `SyntheticSets.name`), {seed}, {shots}, {eraser} (the erasure's folder,
`ErasureSettings.eraser`), {part}/{parts} (`generation.parts`), {scorer} (a scorer of
synthetic images, filled in per rule: `scores`) and {name} (a table or figure).

No workflow step imports this module: the jobs receive their paths from Snakemake, so
editing it changes no job's code fingerprint (`dafusion.provenance`).
"""

from __future__ import annotations

# The tiny models (model.pretrained: tiny or tiny-sdxl), built once per resolution: two
# configs of one results folder never overwrite each other's.
TINY_MODEL = "model/{name}-{resolution}px"

# place_shipped: a shipped asset (dafusion.shipped: tiny-digits, reference-digits), copied
# where the jobs read it, so that no job's inputs name the checkout's or the package's path.
SHIPPED = "model/{asset}"

# check_dataset: a dataset read with one entry's settings, only its class counts written,
# named by a digest of those settings (Plan.dataset_check); index_dataset waits for it.
DATASET_CHECK = "{dataset}/splits/checks/{check}.json"

# index_dataset: a dataset read once.
SPLITS = "{dataset}/splits"
POOL = SPLITS + "/pool.parquet"
VAL = SPLITS + "/val.parquet"
TEST = SPLITS + "/test.parquet"
MASKS = SPLITS + "/masks"
# seed_split (split_protocol: original-code): this seed's half of the pool.
SEED_POOL = SPLITS + "/seed{seed}-pool.parquet"
SEED_VAL = SPLITS + "/seed{seed}-val.parquet"
# few_shot_split.
SPLIT = SPLITS + "/seed{seed}-shots{shots}.parquet"

# erase: one per dataset; the deltas lie beside the check table.
ERASURE = "{dataset}/erasure/{eraser}/check.parquet"

# invert (plain tokens) and invert_erased (tokens learned against the erased UNet).
_TOKENS = "{dataset}/tokens/seed{seed}-shots{shots}"
_ERASED_TOKENS = "{dataset}/tokens/{eraser}/seed{seed}-shots{shots}"
TOKENS = _TOKENS + ".safetensors"
TOKENS_EXPORT = _TOKENS
TOKEN_LOSSES = _TOKENS + "-loss.parquet"
ERASED_TOKENS = _ERASED_TOKENS + ".safetensors"
ERASED_TOKENS_EXPORT = _ERASED_TOKENS
ERASED_TOKEN_LOSSES = _ERASED_TOKENS + "-loss.parquet"
# lora (learner: lora): the adapter folder (diffusers' load_lora_weights layout), the class
# tokens learned with it (a tokens file as invert's) and the loss table (as invert's).
_LORA = "{dataset}/lora/seed{seed}-shots{shots}"
LORA = _LORA
LORA_TOKENS = _LORA + ".safetensors"
LORA_LOSSES = _LORA + "-loss.parquet"

# generate: the rows of one of a set's `generation.parts` parts (its shards lie beside it;
# temporary: gather_synthetic reads them); gather_synthetic: the set's index.
SYNTHETIC = "{dataset}/synthetic/{set}/seed{seed}-shots{shots}/index.parquet"
PART = "{dataset}/synthetic/{set}/seed{seed}-shots{shots}/part-{part}-of-{parts}.json"

# score_classifier, score_clip, score_change: a set's per-image scores, beside its index
# (`scores`: one pattern per scorer, since each is its own rule).
SCORES = "{dataset}/synthetic/{set}/seed{seed}-shots{shots}/scores-{scorer}.parquet"

# train: one classifier run, and what it trained after its last step (the classifier
# scorer reads the head of the baseline's run).
RUN = "{dataset}/runs/{method}/seed{seed}-shots{shots}.parquet"
RUN_HEAD = "{dataset}/runs/{method}/seed{seed}-shots{shots}-head.safetensors"

# aggregate, gallery, inversion_curves, erasure_check, report.
TABLE = "tables/{name}.csv"
SUMMARY_MARKDOWN = "tables/summary.md"
FIGURE = "figures/{name}.png"
FIGURE_PDF = "figures/{name}.pdf"
GALLERY = "figures/gallery-{dataset}.png"
GALLERY_PDF = "figures/gallery-{dataset}.pdf"
INVERSION_CURVES = "figures/inversion-loss-{dataset}.png"
INVERSION_CURVES_PDF = "figures/inversion-loss-{dataset}.pdf"
RECOGNITION = "tables/recognition-{dataset}.csv"
RECOGNITION_FIGURE = "figures/recognition-{dataset}.png"
RECOGNITION_PDF = "figures/recognition-{dataset}.pdf"
ERASURE_FIGURE = "figures/erasure-{dataset}.png"
ERASURE_FIGURE_PDF = "figures/erasure-{dataset}.pdf"
# filtering: a dataset's filters, what each keeps of every method's images, per class, and
# its kept and dropped images.
FILTERING = "tables/filtering-{dataset}.csv"
FILTERING_FIGURE = "figures/filtering-{dataset}.png"
FILTERING_PDF = "figures/filtering-{dataset}.pdf"
REPORT = "report.html"
# The report's record of the config (dafusion.reporting.record.resolved_config).
CONFIG = "config.yaml"
BENCHMARKS = "benchmarks"


def tokens_losses(tokens: str) -> str:
    """The loss table beside a tokens file (invert's, invert_erased's or lora's)."""
    return tokens.removesuffix(".safetensors") + "-loss.parquet"


def scores(scorer: str) -> str:
    """The scores pattern of one scorer (a rule's output: {scorer} filled in)."""
    return SCORES.replace("{scorer}", scorer)
