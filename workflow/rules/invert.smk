rule invert:
    input:
        split=split_path,
        model=model_input,
    output:
        tokens=res("{dataset}/tokens/seed{seed}-shots{shots}.safetensors"),
        export=directory(res("{dataset}/tokens/seed{seed}-shots{shots}")),
        losses=res("{dataset}/tokens/seed{seed}-shots{shots}-loss.parquet"),
    params:
        model=config["model"],
        inversion=config["inversion"],
    log:
        res("logs/{dataset}/invert/seed{seed}-shots{shots}.log"),
    benchmark:
        res("benchmarks/{dataset}/invert/seed{seed}-shots{shots}.tsv")
    threads: 2
    resources:
        mem_mb=8000,
        gpu=1,
    conda:
        "../../envs/dafusion.yaml"
    script:
        "../scripts/invert.py"
