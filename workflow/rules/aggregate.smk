rule aggregate:
    input:
        runs=evaluated_runs,
    output:
        figure=res("figures/accuracy.png"),
        table=res("tables/summary.csv"),
    log:
        res("logs/aggregate.log"),
    benchmark:
        res("benchmarks/aggregate.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        methods=list(METHODS),
        aggregate=AGGREGATE.result_params(),
        code=code("aggregate"),
    script:
        "../scripts/aggregate.py"
