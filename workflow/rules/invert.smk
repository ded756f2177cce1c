rule invert:
    input:
        checked=checked,
        split=of(PLAN.split_path),
        model=of(PLAN.model_input),
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
    threads: of(RESOURCES.model_threads)
    resources:
        mem_mb=RESOURCES.model_mem_mb(8000),
        gpu=RESOURCES.gpus(MODEL.device),
        runtime=wall_time(RESOURCES.invert_minutes),
    params:
        model=PLAN.trained_model_params(),
        inversion=INVERSION.result_params(),
        code=code("invert"),
    script:
        "../scripts/invert.py"


use rule invert as invert_erased with:
    input:
        checked=checked,
        split=of(PLAN.split_path),
        model=of(PLAN.model_input),
        erasure=of(PLAN.erasure_table),
    output:
        tokens=res(paths.ERASED_TOKENS),
        export=directory(res(paths.ERASED_TOKENS_EXPORT)),
        losses=res(paths.ERASED_TOKEN_LOSSES),
    log:
        res("logs/{dataset}/invert_erased/{eraser}/seed{seed}-shots{shots}.log"),
    benchmark:
        res("benchmarks/{dataset}/invert_erased/{eraser}/seed{seed}-shots{shots}.tsv")
