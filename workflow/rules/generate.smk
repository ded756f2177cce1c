rule generate:
    input:
        split=split_path,
        model=model_input,
        tokens=generate_tokens,
    output:
        res("{dataset}/synthetic/{method}/seed{seed}-shots{shots}/index.parquet"),
    log:
        res("logs/{dataset}/generate/{method}/seed{seed}-shots{shots}.log"),
    benchmark:
        res("benchmarks/{dataset}/generate/{method}/seed{seed}-shots{shots}.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        gpu=1,
    params:
        model=config["model"],
        method=lambda w: config["methods"][w.method],
        generation=config["generation"],
    script:
        "../scripts/generate.py"
