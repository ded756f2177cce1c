# One classifier run; its head (the final step's, never one chosen on validation) is what
# the classifier scorer of the same dataset, seed and shots reads. A method with a filter
# also reads its set's scores of the filter's scorer, and the filter is in its params (a
# method without one keeps its params), so a changed threshold reruns its runs alone.
rule train:
    input:
        checked=checked,
        split=of(PLAN.split_path),
        val=of(PLAN.eval_split),
        test=res(paths.TEST),
        synthetic=of(PLAN.train_synthetic),
        scores=of(PLAN.train_scores),
    output:
        run=res(paths.RUN),
        head=res(paths.RUN_HEAD),
    log:
        res("logs/{dataset}/train/{method}/seed{seed}-shots{shots}.log"),
    benchmark:
        res("benchmarks/{dataset}/train/{method}/seed{seed}-shots{shots}.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        gpu=RESOURCES.gpus(CLASSIFIER.device),
        runtime=wall_time(RESOURCES.train_minutes),
    params:
        classifier=lambda w: PLAN.classifier_for(w.dataset, w.method).result_params(),
        synthetic=of(PLAN.sets.run_params),
        code=code("train"),
    script:
        "../scripts/train.py"
