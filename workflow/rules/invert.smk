rule invert:
    input:
        checked=checked,
        split=split_path,
        model=model_input,
    output:
        tokens=res(paths.TOKENS),
        export=directory(res(paths.TOKENS_EXPORT)),
        losses=res(paths.TOKEN_LOSSES),
    log:
        res("logs/{dataset}/invert/seed{seed}-shots{shots}.log"),
    benchmark:
        res("benchmarks/{dataset}/invert/seed{seed}-shots{shots}.tsv")
    # Before the generation and training jobs that wait for its tokens.
    priority: 5
    conda:
        "../../envs/dafusion.yaml"
    threads: model_threads
    resources:
        mem_mb=PLAN.model_mem_mb(8000),
        gpu=gpus(MODEL.device),
        runtime=invert_runtime,
    params:
        model=PLAN.trained_model_params(),
        inversion=INVERSION.result_params(),
        code=code("invert"),
    script:
        "../scripts/invert.py"


use rule invert as invert_erased with:
    input:
        checked=checked,
        split=split_path,
        model=model_input,
        erasure=lambda w: PLAN.erasure_table(w.dataset),
    output:
        tokens=res(paths.ERASED_TOKENS),
        export=directory(res(paths.ERASED_TOKENS_EXPORT)),
        losses=res(paths.ERASED_TOKEN_LOSSES),
    log:
        res("logs/{dataset}/invert/{eraser}/seed{seed}-shots{shots}.log"),
    benchmark:
        res("benchmarks/{dataset}/invert/{eraser}/seed{seed}-shots{shots}.tsv")
