rule build_tiny_model:
    output:
        directory(res(paths.tiny_model(MODEL.resolution))),
    log:
        res("logs/model/build_tiny_model.log"),
    benchmark:
        res("benchmarks/model/build_tiny_model.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        resolution=MODEL.resolution,
        code=code("build_tiny_model"),
    script:
        "../scripts/build_tiny_model.py"
