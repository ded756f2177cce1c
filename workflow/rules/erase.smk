rule erase:
    input:
        checked=checked,
        pool=res(paths.POOL),
        model=of(PLAN.model_input),
    output:
        res(paths.ERASURE),
    log:
        res("logs/{dataset}/erase/{eraser}.log"),
    benchmark:
        res("benchmarks/{dataset}/erase/{eraser}.tsv")
    # The longest chain of the workflow starts here (erase, invert_erased, generate,
    # train): start it first.
    priority: 20
    conda:
        "../../envs/dafusion.yaml"
    threads: of(RESOURCES.model_threads)
    resources:
        mem_mb=RESOURCES.model_mem_mb(16000),
        gpu=RESOURCES.gpus(MODEL.device),
        runtime=wall_time(RESOURCES.erase_minutes),
    params:
        model=PLAN.erasure_model_params(),
        erasure=ERASURE.result_params(),
        code=code("erase"),
    script:
        "../scripts/erase.py"
