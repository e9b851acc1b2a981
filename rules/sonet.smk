# sonet: Huang, Yu, Zhang, Ma, Yao. Adversarial robustness of stabilized neural ODE might be from obfuscated
# gradients (slides).  Logic: src/advrep/sonet/workflow.py; models: src/advrep/models/ode.py.
#   sonet_job    -> workflow.run_job    one model (SONet / SOBlock / ODENet / ResNet10-TRADES, a solver): train with
#                                       per-epoch checkpoints, then the per-sample evaluation every table reads
#   (every job and table per seed, under seed<k>/; rules/seeds.smk summarises the tables over the seeds)
#   sonet_table  -> workflow.run_table  table1 (PGD-20/1000), table2 (CW-Linf, SPSA), table3 (solvers), masking
#   sonet_table4 -> workflow.run_table  the adaptive solver's accepted time grids after 1/100/1000 PGD iterations


rule sonet_job:
    input:
        f"{DATA}/{SONET_CFG['data']['dataset']}.npz",
    output:
        csv=f"{RES}/sonet/seed{{seed}}/jobs/{{job}}.per_sample.csv",
        json=f"{RES}/sonet/seed{{seed}}/jobs/{{job}}.json",
    wildcard_constraints:
        job="|".join(SONET.JOBS),
    params:
        settings=lambda wc: SONET.job_settings(SONET_CFG, wc.job),
        seed=lambda wc: int(wc.seed),
        workdir=lambda wc: f"{RES}/sonet/seed{wc.seed}/checkpoints/{wc.job}",
    log:
        f"{RES}/logs/sonet/seed{{seed}}/jobs/{{job}}.log",
    threads: 1 if SCALE == "smoke" else 8
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=4000 if SCALE == "smoke" else 32000,
        runtime=30 if SCALE == "smoke" else (24 * 60 if SCALE == "reduced" else 7 * 24 * 60),
        gpu=0 if SCALE == "smoke" else 1,
    script:
        "scripts/sonet_job.py"


rule sonet_table:
    input:
        unpack(lambda wc: sonet_job_files(wc.target)),
    output:
        csv=f"{RES}/sonet/seed{{seed}}/{{target}}.csv",
        provenance=f"{RES}/sonet/seed{{seed}}/{{target}}.provenance.json",
    wildcard_constraints:
        target="table1|table2|table3|masking",
    params:
        scale=SCALE,
        seed=lambda wc: int(wc.seed),
    log:
        f"{RES}/logs/sonet/seed{{seed}}/{{target}}.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "scripts/sonet_table.py"


rule sonet_table4:
    input:
        unpack(lambda wc: sonet_job_files("table4")),
    output:
        csv=f"{RES}/sonet/seed{{seed}}/table4.csv",
        png=f"{RES}/sonet/seed{{seed}}/table4.png",
        provenance=f"{RES}/sonet/seed{{seed}}/table4.provenance.json",
    params:
        scale=SCALE,
        seed=lambda wc: int(wc.seed),
    log:
        f"{RES}/logs/sonet/seed{{seed}}/table4.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "scripts/sonet_table.py"
