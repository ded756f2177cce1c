# learner: lora. One job per split learns every class's token together with one LoRA on the
# UNet's attention (dafusion.stages.lora); the generate jobs of a lora method load both.
rule lora:
    input:
        checked=checked,
        split=of(PLAN.split_path),
        model=of(PLAN.model_input),
    output:
        adapter=directory(res(paths.LORA)),
        tokens=res(paths.LORA_TOKENS),
        losses=res(paths.LORA_LOSSES),
    log:
        res("logs/{dataset}/lora/seed{seed}-shots{shots}.log"),
    benchmark:
        res("benchmarks/{dataset}/lora/seed{seed}-shots{shots}.tsv")
    # Before the generation and training jobs that wait for its adapter.
    priority: 5
    conda:
        "../../envs/dafusion.yaml"
    threads: of(RESOURCES.model_threads)
    resources:
        mem_mb=RESOURCES.model_mem_mb(8000),
        gpu=RESOURCES.gpus(MODEL.device),
        runtime=wall_time(RESOURCES.lora_minutes),
    params:
        **PLAN.lora_params(),
        model=PLAN.trained_model_params(),
        code=code("lora"),
    script:
        "../scripts/lora.py"
