# A dataset read with the entry's settings, only its class counts written: a value the
# data refuses stops here, before index_dataset deletes any finished output (the check is
# named by a digest of the settings, so the old values' check stays; pipeline.check_dataset).
rule check_dataset:
    input:
        checked=checked,
    output:
        res(paths.DATASET_CHECK),
    log:
        res("logs/{dataset}/check_dataset/{check}.log"),
    benchmark:
        res("benchmarks/{dataset}/check_dataset/{check}.tsv")
    priority: 10
    conda:
        "../../envs/dafusion.yaml"
    threads: 4
    resources:
        mem_mb=of(RESOURCES.index_mem_mb),
        runtime=120,
    params:
        spec=of(PLAN.index_params),
        code=check_code,
    script:
        "../scripts/check_dataset.py"


rule index_dataset:
    input:
        check=of(PLAN.dataset_check),
    output:
        pool=res(paths.POOL),
        val=res(paths.VAL),
        test=res(paths.TEST),
        masks=directory(res(paths.MASKS)),
    log:
        res("logs/{dataset}/index_dataset.log"),
    benchmark:
        res("benchmarks/{dataset}/index_dataset.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 4
    resources:
        mem_mb=of(RESOURCES.index_mem_mb),
        runtime=120,
    params:
        spec=of(PLAN.index_params),
        # The code's fingerprint and the listing of the dataset's files: an added, removed
        # or rewritten file reruns the job (common.smk, index_code).
        code=index_code,
    script:
        "../scripts/index_dataset.py"


rule seed_split:
    input:
        pool=res(paths.POOL),
    output:
        pool=res(paths.SEED_POOL),
        val=res(paths.SEED_VAL),
    log:
        res("logs/{dataset}/seed_split/seed{seed}.log"),
    benchmark:
        res("benchmarks/{dataset}/seed_split/seed{seed}.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=code("seed_split"),
    script:
        "../scripts/seed_split.py"


rule few_shot_split:
    input:
        pool=of(PLAN.training_pool),
    output:
        res(paths.SPLIT),
    log:
        res("logs/{dataset}/few_shot_split/seed{seed}-shots{shots}.log"),
    benchmark:
        res("benchmarks/{dataset}/few_shot_split/seed{seed}-shots{shots}.tsv")
    # Before any GPU job: a class with too few images for examples_per_class stops the
    # run here (it needs the indexed dataset, so no start-up check can see it).
    priority: 10
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        allow_fewer=lambda w: DATASETS[w.dataset].allow_fewer,
        code=code("few_shot_split"),
    script:
        "../scripts/few_shot_split.py"
