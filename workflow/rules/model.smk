rule build_tiny_model:
    output:
        directory(res("model/tiny")),
    params:
        resolution=config["model"]["resolution"],
    log:
        res("logs/model/build_tiny_model.log"),
    benchmark:
        res("benchmarks/model/build_tiny_model.tsv")
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/dafusion.yaml"
    script:
        "../scripts/build_tiny_model.py"
