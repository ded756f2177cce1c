# One synthetic set (shared by the methods with its identity, SyntheticSets.identity):
# generation.parts `generate` jobs each write a run of its shards (Plan.generate_parts), and
# one light `gather_synthetic` job writes its index.
rule generate:
    input:
        checked=checked,
        split=of(PLAN.split_path),
        model=of(PLAN.model_input),
        tokens=of(PLAN.generate_tokens),
        lora=of(PLAN.generate_lora),
        erasure=of(PLAN.set_erasure),
    output:
        temp(res(paths.PART)),
    log:
        res(
            "logs/{dataset}/generate/{set}/seed{seed}-shots{shots}/part-{part}-of-{parts}.log"
        ),
    benchmark:
        res(
            "benchmarks/{dataset}/generate/{set}/seed{seed}-shots{shots}/part-{part}-of-{parts}.tsv"
        )
    # Before the training jobs that wait for its images.
    priority: 3
    conda:
        "../../envs/dafusion.yaml"
    threads: of(RESOURCES.model_threads)
    resources:
        mem_mb=RESOURCES.model_mem_mb(8000),
        gpu=RESOURCES.gpus(MODEL.device),
        runtime=wall_time(RESOURCES.generate_minutes),
    params:
        synthetic=of(PLAN.sets.params),
        code=code("generate"),
    script:
        "../scripts/generate.py"


rule gather_synthetic:
    input:
        split=of(PLAN.split_path),
        parts=of(PLAN.generate_parts),
        tokens=of(PLAN.generate_tokens),  # named in the set's classes.json
    output:
        res(paths.SYNTHETIC),
    log:
        res("logs/{dataset}/gather_synthetic/{set}/seed{seed}-shots{shots}.log"),
    benchmark:
        res("benchmarks/{dataset}/gather_synthetic/{set}/seed{seed}-shots{shots}.tsv")
    priority: 3
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=wall_time(RESOURCES.gather_minutes),
    # The parts are temporary: the set's identity, its M and the generate code are this
    # job's params too, so that a change reruns it (and, through it, the parts).
    params:
        synthetic=of(PLAN.sets.params),
        code={**code("generate"), **code("gather_synthetic")},
    script:
        "../scripts/gather_synthetic.py"
