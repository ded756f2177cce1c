rule index_dataset:
    output:
        pool=res("{dataset}/splits/pool.parquet"),
        val=res("{dataset}/splits/val.parquet"),
    log:
        res("logs/{dataset}/index_dataset.log"),
    benchmark:
        res("benchmarks/{dataset}/index_dataset.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        spec=lambda w: config["datasets"][w.dataset],
    script:
        "../scripts/index_dataset.py"


rule few_shot_split:
    input:
        pool=res("{dataset}/splits/pool.parquet"),
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
    script:
        "../scripts/few_shot_split.py"
