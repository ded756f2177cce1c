rule generate:
    input:
        split=split_path,
        model=model_input,
        tokens=generate_tokens,
        erasure=method_erasure,
        parts=generate_parts,
    output:
        res(paths.SYNTHETIC),
    log:
        res("logs/{dataset}/generate/{method}/seed{seed}-shots{shots}.log"),
    benchmark:
        res("benchmarks/{dataset}/generate/{method}/seed{seed}-shots{shots}.tsv")
    # Before the training jobs that wait for its images.
    priority: 3
    conda:
        "../../envs/dafusion.yaml"
    threads: model_threads
    resources:
        mem_mb=PLAN.model_mem_mb(8000),
        gpu=generate_gpus,
        runtime=generate_runtime,
    params:
        model=MODEL.result_params(),
        method=lambda w: PLAN.method_params(w.dataset, w.method),
        generation=lambda w: generation_for(w).result_params(),
        code=code("generate"),
    script:
        "../scripts/generate.py"


# generation.parts > 1: each part writes a run of the set's shards (Plan.generate_parts).
rule generate_part:
    input:
        split=split_path,
        model=model_input,
        tokens=generate_tokens,
        erasure=method_erasure,
    output:
        res(paths.PART),
    log:
        res(
            "logs/{dataset}/generate_part/{method}/seed{seed}-shots{shots}/part-{part}-of-{parts}.log"
        ),
    benchmark:
        res(
            "benchmarks/{dataset}/generate_part/{method}/seed{seed}-shots{shots}/part-{part}-of-{parts}.tsv"
        )
    conda:
        "../../envs/dafusion.yaml"
    threads: model_threads
    resources:
        mem_mb=PLAN.model_mem_mb(8000),
        gpu=gpus(MODEL.device),
        runtime=generate_part_runtime,
    params:
        model=MODEL.result_params(),
        method=lambda w: PLAN.method_params(w.dataset, w.method),
        generation=lambda w: generation_for(w).result_params(),
        index=synthetic_index,
        code=code("generate_part"),
    script:
        "../scripts/generate_part.py"
