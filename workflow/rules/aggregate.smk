rule aggregate:
    input:
        runs=evaluated_runs,
    output:
        summary=res("tables/summary.csv"),
        markdown=res("tables/summary.md"),
        scores=res("tables/scores.csv"),
        novelty=res("tables/novelty.csv"),
        paired=res("tables/paired.csv"),
        areas=res("tables/areas.csv"),
        figures=[
            report(
                res(f"figures/{name}.png"),
                caption=caption(name),
                category="Accuracy",
                labels={"figure": name},
            )
            for name in aggregate_figures()
        ],
        pdfs=[res(f"figures/{name}.pdf") for name in aggregate_figures()],
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
        layout=method_layout(),
        figures=aggregate_figures(),
        aggregate=aggregate_params(
            "metric", "selection", "report_split", "baseline", "novelty"
        ),
        measure=MEASURE,  # shown by the figures' captions (workflow/report/*.rst)
        code=code("aggregate"),
    script:
        "../scripts/aggregate.py"


rule gallery:
    input:
        unpack(gallery_inputs),
    output:
        png=report(
            res("figures/gallery-{dataset}.png"),
            caption="../report/gallery.rst",
            category="Synthetic images",
            labels={"dataset": "{dataset}"},
        ),
        pdf=res("figures/gallery-{dataset}.pdf"),
    log:
        res("logs/{dataset}/gallery.log"),
    benchmark:
        res("benchmarks/{dataset}/gallery.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        methods=lambda w: gallery_methods(w.dataset),
        gallery=aggregate_params(
            "gallery_images_per_class", "gallery_classes", "gallery_variants"
        ),
        code=code("gallery"),
    script:
        "../scripts/gallery.py"


rule inversion_curves:
    input:
        losses=lambda w: loss_curves(w.dataset),
    output:
        png=report(
            res("figures/inversion-loss-{dataset}.png"),
            caption="../report/inversion.rst",
            category="Diagnostics",
            labels={"dataset": "{dataset}"},
        ),
        pdf=res("figures/inversion-loss-{dataset}.pdf"),
    log:
        res("logs/{dataset}/inversion_curves.log"),
    benchmark:
        res("benchmarks/{dataset}/inversion_curves.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code("inversion_curves"),
    script:
        "../scripts/inversion_curves.py"


rule report:
    input:
        unpack(report_inputs),
    output:
        res("report.html"),
    log:
        res("logs/report.log"),
    benchmark:
        res("benchmarks/report.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        figures=aggregate_figures(),
        captions=report_captions(),
        benchmarks=res("benchmarks"),
        code=code("report"),
    script:
        "../scripts/report.py"
