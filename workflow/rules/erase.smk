rule erase:
    input:
        pool=res("{dataset}/splits/pool.parquet"),
        model=model_input,
    output:
        res("{dataset}/erasure/{eraser}/check.parquet"),
    log:
        res("logs/{dataset}/erase/{eraser}.log"),
    benchmark:
        res("benchmarks/{dataset}/erase/{eraser}.tsv")
    # The longest chain of the workflow starts here (erase, invert_erased, generate,
    # train): start it first.
    priority: 20
    conda:
        "../../envs/dafusion.yaml"
    threads: model_threads
    resources:
        mem_mb=model_mem_mb(16000),
        gpu=gpus(MODEL.device),
        runtime=erase_runtime,
    params:
        model=erase_model_params(),
        erasure=ERASURE.result_params(),
        code=code("erase"),
    script:
        "../scripts/erase.py"
