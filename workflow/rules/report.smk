rule aggregate:
    input:
        runs=evaluated_runs,
    output:
        **{name: table(name) for name in TABLES},
        markdown=res(paths.SUMMARY_MARKDOWN),
        figures=[
            report(
                PLAN.path(paths.FIGURE, name=name),
                caption=caption(name),
                category="Accuracy",
                labels={"figure": name},
            )
            for name in REPORT.aggregate_figures()
        ],
        pdfs=[
            PLAN.path(paths.FIGURE_PDF, name=name)
            for name in REPORT.aggregate_figures()
        ],
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
        layout=REPORT.method_layout(),
        figures=REPORT.aggregate_figures(),
        aggregate=PLAN.aggregate_params(
            "metric", "selection", "report_split", "baseline", "novelty"
        ),
        measure=MEASURE,  # shown by the figures' captions (workflow/report/*.rst)
        code=code("aggregate"),
    script:
        "../scripts/aggregate.py"


rule gallery:
    input:
        unpack(of(REPORT.gallery_inputs)),
    output:
        png=report(
            res(paths.GALLERY),
            caption="../report/gallery.rst",
            category="Synthetic images",
            labels={"dataset": "{dataset}"},
        ),
        pdf=res(paths.GALLERY_PDF),
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
        methods=of(REPORT.synthetic_sizes),
        gallery=PLAN.aggregate_params(
            "gallery_images_per_class", "gallery_classes", "gallery_variants"
        ),
        code=code("gallery"),
    script:
        "../scripts/gallery.py"


rule inversion_curves:
    input:
        losses=of(REPORT.loss_curves),
    output:
        png=report(
            res(paths.INVERSION_CURVES),
            caption="../report/inversion.rst",
            category="Diagnostics",
            labels={"dataset": "{dataset}"},
        ),
        pdf=res(paths.INVERSION_CURVES_PDF),
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


rule erasure_check:
    input:
        check=of(PLAN.erasure_table),
    output:
        png=report(
            res(paths.ERASURE_FIGURE),
            caption="../report/erasure.rst",
            category="Diagnostics",
            subcategory="Erasure check",
            labels={"dataset": "{dataset}"},
        ),
        pdf=res(paths.ERASURE_FIGURE_PDF),
    log:
        res("logs/{dataset}/erasure_check.log"),
    benchmark:
        res("benchmarks/{dataset}/erasure_check.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code("erasure_check"),
    script:
        "../scripts/erasure_check.py"


# A dataset's filters (docs/filtering.md): per class, the share of every synthetic method's
# images each filter keeps, over every split, and the filtered methods' kept and dropped
# images of the gallery's split. Reads the sets' indices and scores, never regenerates.
rule filtering:
    input:
        unpack(of(REPORT.filtering_inputs)),
    output:
        table=res(paths.FILTERING),
        png=report(
            res(paths.FILTERING_FIGURE),
            caption="../report/filtering.rst",
            category="Synthetic images",
            labels={"dataset": "{dataset}", "figure": "filters"},
        ),
        pdf=res(paths.FILTERING_PDF),
    log:
        res("logs/{dataset}/filtering.log"),
    benchmark:
        res("benchmarks/{dataset}/filtering.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        filtering=of(REPORT.filtering_params),
        gallery=PLAN.aggregate_params("gallery_classes"),
        code=code("filtering"),
    script:
        "../scripts/filtering.py"


rule report:
    input:
        unpack(of(REPORT.inputs)),
    output:
        html=res(paths.REPORT),
        config=report(
            res(paths.CONFIG),
            caption="../report/config.rst",
            category="Provenance",
            labels={"file": "resolved config"},
        ),
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
        figures=REPORT.aggregate_figures(),
        captions=REPORT.captions(CAPTIONS),
        filters=REPORT.filter_report(),  # each filter in words, and its unfiltered twin
        benchmarks=res(paths.BENCHMARKS),
        config=RESOLVED_CONFIG,
        workflow_code=WORKFLOW_CODE,
        code=code("report"),
    script:
        "../scripts/report.py"


rule recognition:
    input:
        unpack(of(REPORT.recognition_inputs)),
        reference=PLAN.path(paths.SHIPPED, asset="reference-digits"),
    output:
        table=res(paths.RECOGNITION),
        png=report(
            res(paths.RECOGNITION_FIGURE),
            caption="../report/recognition.rst",
            category="Synthetic images",
            labels={"dataset": "{dataset}"},
        ),
        pdf=res(paths.RECOGNITION_PDF),
    log:
        res("logs/{dataset}/recognition.log"),
    benchmark:
        res("benchmarks/{dataset}/recognition.tsv")
    conda:
        "../../envs/dafusion.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        methods=of(REPORT.synthetic_sizes),
        code=code("recognition"),
    script:
        "../scripts/recognition.py"
