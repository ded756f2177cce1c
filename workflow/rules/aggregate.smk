rule aggregate:
    input:
        runs=all_runs(),
    output:
        figure=res("figures/accuracy.png"),
        table=res("tables/summary.csv"),
    params:
        methods=list(config["methods"]),
    log:
        res("logs/aggregate.log"),
    benchmark:
        res("benchmarks/aggregate.tsv")
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/dafusion.yaml"
    script:
        "../scripts/aggregate.py"
