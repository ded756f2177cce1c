rule build_tiny_model:
    output:
        directory(
            PLAN.path(
                paths.TINY_MODEL, name=MODEL.pretrained, resolution=MODEL.resolution
            )
        ),
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
        name=MODEL.pretrained,
        resolution=MODEL.resolution,
        code=code("build_tiny_model"),
    script:
        "../scripts/build_tiny_model.py"


# The shipped assets (dafusion.shipped), copied under the results: the jobs that read them
# then name no path of the checkout or the package, so a moved project reruns nothing; the
# digest reruns the copy, and what reads it, when a release changes the asset.
rule place_shipped:
    output:
        directory(res(paths.SHIPPED)),
    log:
        res("logs/model/place_shipped/{asset}.log"),
    benchmark:
        res("benchmarks/model/place_shipped/{asset}.tsv")
    localrule: True
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        digest=lambda w: shipped_digest(w.asset),
        code=code("place_shipped"),
    script:
        "../scripts/place_shipped.py"
