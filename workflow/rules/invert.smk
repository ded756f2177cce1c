rule invert:
    input:
        split=split_path,
        model=model_input,
    output:
        tokens=res("{dataset}/tokens/seed{seed}-shots{shots}.safetensors"),
        export=directory(res("{dataset}/tokens/seed{seed}-shots{shots}")),
        losses=res("{dataset}/tokens/seed{seed}-shots{shots}-loss.parquet"),
    log:
        res("logs/{dataset}/invert/seed{seed}-shots{shots}.log"),
    benchmark:
        res("benchmarks/{dataset}/invert/seed{seed}-shots{shots}.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        gpu=1,
    params:
        model=config["model"],
        inversion=config["inversion"],
    script:
        "../scripts/invert.py"
