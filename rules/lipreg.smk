# lipreg: Finlay, Calder, Abbasi, Oberman. Lipschitz regularized deep neural networks generalize and are
# adversarially robust.  Logic: src/advrep/lipreg/.
#   table4  -> advrep.lipreg.table4  (dataset Lipschitz constants, exact min cross-class distance with faiss)
#   figure1 -> advrep.lipreg.figure1 (exact Lipschitz-regularised solution of (2.7) on synthetic 2-D data)

rule lipreg_table4:
    input:
        lambda wc: list(lipreg_table4_columns()[0].values()),
    output:
        csv=report(f"{RES}/lipreg/table4.csv", category="lipreg", labels={"target": "table4"}),
        provenance=f"{RES}/lipreg/table4.provenance.json",
    params:
        columns=lambda wc: lipreg_table4_columns()[0],
        unavailable=lambda wc: lipreg_table4_columns()[1],
        settings=LIPREG_TABLE4,
        scale=SCALE,
        seed=config["seed"],
    log:
        f"{RES}/logs/lipreg/table4.log",
    threads: 2
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=16000,
        runtime=60,
    script:
        "scripts/lipreg_table4.py"


rule lipreg_figure1:
    output:
        csv=report(f"{RES}/lipreg/figure1.csv", category="lipreg", labels={"target": "figure1", "type": "data"}),
        png=report(f"{RES}/lipreg/figure1.png", category="lipreg", labels={"target": "figure1", "type": "figure"}),
        provenance=f"{RES}/lipreg/figure1.provenance.json",
    params:
        settings=config["lipreg"]["figure1"],
        scale=SCALE,
        seed=config["seed"],
    log:
        f"{RES}/logs/lipreg/figure1.log",
    conda:
        "../envs/solvers.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "scripts/lipreg_figure1.py"
