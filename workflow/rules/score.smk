# Per-image scores of a synthetic set (docs/filtering.md): one light job per set, split and
# scorer, for the scorers the filters of the set's dataset read (Plan.scorers), beside the
# set's index. One rule per scorer, whose script imports that scorer alone, so that each
# scorer's code is its own rerun trigger. No threshold reaches these jobs: a filter is a
# selection the train jobs make over the scores, so a new threshold rescores nothing.


# The run of scoring.classifier_method (a baseline: real few-shot images only) of the same
# dataset, seed and shots scores each image with its final head.
rule score_classifier:
    input:
        checked=checked,
        index=res(paths.SYNTHETIC),
        head=of(PLAN.scoring_head),
    output:
        res(paths.scores(scorer="classifier")),
    log:
        res("logs/{dataset}/score_classifier/{set}/seed{seed}-shots{shots}.log"),
    benchmark:
        res("benchmarks/{dataset}/score_classifier/{set}/seed{seed}-shots{shots}.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        gpu=RESOURCES.gpus(SCORING.device),
        runtime=lambda w, input, attempt: RESOURCES.score_minutes(
            "classifier", input.index, attempt
        ),
    params:
        scoring=SCORING.params("classifier"),
        code=code("score_classifier"),
    script:
        "../scripts/score_classifier.py"


# The cosine of each image and its class prompt under the CLIP model the config names.
rule score_clip:
    input:
        checked=checked,
        index=res(paths.SYNTHETIC),
    output:
        res(paths.scores(scorer="clip")),
    log:
        res("logs/{dataset}/score_clip/{set}/seed{seed}-shots{shots}.log"),
    benchmark:
        res("benchmarks/{dataset}/score_clip/{set}/seed{seed}-shots{shots}.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        gpu=RESOURCES.gpus(SCORING.device),
        runtime=lambda w, input, attempt: RESOURCES.score_minutes(
            "clip", input.index, attempt
        ),
    params:
        scoring=SCORING.params("clip"),
        code=code("score_clip"),
    script:
        "../scripts/score_clip.py"


# How far each image moved from its source image, of the few-shot split the set was made
# from (only the sources of the set's variants are opened).
rule score_change:
    input:
        checked=checked,
        index=res(paths.SYNTHETIC),
        split=of(PLAN.split_path),
    output:
        res(paths.scores(scorer="change")),
    log:
        res("logs/{dataset}/score_change/{set}/seed{seed}-shots{shots}.log"),
    benchmark:
        res("benchmarks/{dataset}/score_change/{set}/seed{seed}-shots{shots}.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=lambda w, input, attempt: RESOURCES.score_minutes(
            "change", input.index, attempt
        ),
    params:
        code=code("score_change"),
    script:
        "../scripts/score_change.py"
