def generate_tokens(wildcards):
    """The class tokens, for methods whose prompt uses them."""
    if uses_tokens(config["methods"][wildcards.method]):
        return res(
            f"{wildcards.dataset}/tokens/seed{wildcards.seed}-shots{wildcards.shots}.safetensors"
        )
    return []


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
