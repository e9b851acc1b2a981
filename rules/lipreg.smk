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


# Tables 1, 2, 3, 5, 6 and Figures 2, 3, 4 (logic: src/advrep/lipreg/workflow.py, attack statistics:
# src/advrep/lipreg/statistics.py, detection: src/advrep/lipreg/detection.py, evasive CW: src/advrep/lipreg/evasive.py)
#   lipreg_job    -> workflow.run_job    one (dataset, defence): train with per-epoch checkpoints, then the per-sample
#                                        table (clean verdicts, gradient norms, minimal distance and model calls of
#                                        PGD, I-FGSM, Boundary, CW; evasive CW and detector norms for Table 6)
#                                        "madry": voronoi's Madry CIFAR-10 model under the same attacks (Table 1)
#   (every job and target per seed, under seed<k>/; rules/seeds.smk summarises the targets over the seeds)
#   lipreg_table  -> workflow.run_table  table1, table2 (CIFAR-10), table3 (CIFAR-100), table5, table6
#   lipreg_figure -> workflow.run_table  figure2 (l2 PGD error curves), figure3 (the four attacks), figure4 (detector)


rule lipreg_job:
    input:
        unpack(lambda wc: lipreg_job_inputs(wc.job)),
    output:
        csv=f"{RES}/lipreg/seed{{seed}}/jobs/{{job}}.per_sample.csv",
        json=f"{RES}/lipreg/seed{{seed}}/jobs/{{job}}.json",
    wildcard_constraints:
        job="|".join(LIPREG.JOBS),
    params:
        settings=lambda wc: lipreg_job_settings(wc.job),
        seed=lambda wc: int(wc.seed),
        workdir=lambda wc: lipreg_workdir(wc.job, wc.seed),
    log:
        f"{RES}/logs/lipreg/seed{{seed}}/jobs/{{job}}.log",
    threads: 1 if SCALE == "smoke" else 8
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=4000 if SCALE == "smoke" else 32000,
        runtime=30 if SCALE == "smoke" else (24 * 60 if SCALE == "reduced" else 7 * 24 * 60),
        gpu=0 if SCALE == "smoke" else 1,
    script:
        "scripts/lipreg_job.py"


rule lipreg_table:
    input:
        unpack(lambda wc: lipreg_job_files(wc.target)),
    output:
        csv=f"{RES}/lipreg/seed{{seed}}/{{target}}.csv",
        provenance=f"{RES}/lipreg/seed{{seed}}/{{target}}.provenance.json",
    wildcard_constraints:
        target="table1|table2|table3|table5|table6",
    params:
        scale=SCALE,
        seed=lambda wc: int(wc.seed),
        settings=config["lipreg"]["figures"],
    log:
        f"{RES}/logs/lipreg/seed{{seed}}/{{target}}.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "scripts/lipreg_table.py"


rule lipreg_figure:
    input:
        unpack(lambda wc: lipreg_job_files(wc.target)),
    output:
        csv=f"{RES}/lipreg/seed{{seed}}/{{target}}.csv",
        png=f"{RES}/lipreg/seed{{seed}}/{{target}}.png",
        provenance=f"{RES}/lipreg/seed{{seed}}/{{target}}.provenance.json",
    wildcard_constraints:
        target="figure2|figure3|figure4",
    params:
        scale=SCALE,
        seed=lambda wc: int(wc.seed),
        settings=config["lipreg"]["figures"],
    log:
        f"{RES}/logs/lipreg/seed{{seed}}/{{target}}.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "scripts/lipreg_table.py"
