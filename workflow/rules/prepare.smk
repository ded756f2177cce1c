rule index_dataset:
    output:
        pool=res("{dataset}/splits/pool.parquet"),
        val=res("{dataset}/splits/val.parquet"),
        test=res("{dataset}/splits/test.parquet"),
        masks=directory(res("{dataset}/splits/masks")),
    log:
        res("logs/{dataset}/index_dataset.log"),
    benchmark:
        res("benchmarks/{dataset}/index_dataset.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 4
    resources:
        mem_mb=index_mem_mb,
    params:
        spec=index_spec,
    script:
        "../scripts/index_dataset.py"


rule seed_split:
    input:
        pool=res("{dataset}/splits/pool.parquet"),
    output:
        pool=res("{dataset}/splits/seed{seed}-pool.parquet"),
        val=res("{dataset}/splits/seed{seed}-val.parquet"),
    log:
        res("logs/{dataset}/seed_split/seed{seed}.log"),
    benchmark:
        res("benchmarks/{dataset}/seed_split/seed{seed}.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/seed_split.py"


rule few_shot_split:
    input:
        pool=training_pool,
    output:
        res("{dataset}/splits/seed{seed}-shots{shots}.parquet"),
    log:
        res("logs/{dataset}/few_shot_split/seed{seed}-shots{shots}.log"),
    benchmark:
        res("benchmarks/{dataset}/few_shot_split/seed{seed}-shots{shots}.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        allow_fewer=lambda w: config["datasets"][w.dataset]["allow_fewer"],
    script:
        "../scripts/few_shot_split.py"
