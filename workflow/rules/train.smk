rule train:
    input:
        checked=checked,
        split=split_path,
        val=eval_split,
        test=res(paths.TEST),
        synthetic=train_synthetic,
    output:
        res(paths.RUN),
    log:
        res("logs/{dataset}/train/{method}/seed{seed}-shots{shots}.log"),
    benchmark:
        res("benchmarks/{dataset}/train/{method}/seed{seed}-shots{shots}.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        gpu=gpus(CLASSIFIER.device),
        runtime=train_runtime,
    params:
        classifier=lambda w: classifier_for(w).result_params(),
        synthetic=run_synthetic_params,
        code=code("train"),
    script:
        "../scripts/train.py"
