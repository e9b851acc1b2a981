# oaat: Addepalli, Jain, Sriramanan, Khare, Babu. Towards achieving adversarial robustness beyond perceptual limits
# (OA-AT).  Logic: src/advrep/oaat/workflow.py; objectives fat, ates, oaat: src/advrep/oaat/objectives.py.
#   oaat_job     -> workflow.run_job     one (dataset, architecture, method): train with per-epoch checkpoints (ExAT
#                                        fine-tunes the final weights of the PGD-AT / AWP job; a WA job evaluates the
#                                        weight average of its twin's run), then the per-sample evaluation every
#                                        table reads (GAMA-PGD-100, AutoAttack, Square at 8/12/16)
#   (every job and target per seed, under seed<k>/; rules/seeds.smk summarises the targets over the seeds)
#   oaat_table   -> workflow.run_table   table1 (CIFAR-10/100 RN-18), table2 (RN-18/34, WRN-34-10, with WA), masking
#   oaat_figure1 -> workflow.run_figure1 one image attacked at growing eps from the NT and PGD-AT models


rule oaat_job:
    input:
        unpack(lambda wc: oaat_job_inputs(wc.job)),
    output:
        csv=f"{RES}/oaat/seed{{seed}}/jobs/{{job}}.per_sample.csv",
        json=f"{RES}/oaat/seed{{seed}}/jobs/{{job}}.json",
        model=f"{RES}/oaat/seed{{seed}}/models/{{job}}.pt",
    wildcard_constraints:
        job="|".join(OAAT.JOBS),
    params:
        settings=lambda wc: OAAT.job_settings(OAAT_CFG, wc.job),
        seed=lambda wc: int(wc.seed),
        # a WA job evaluates the weight average of its twin's run: same folder, after the twin (input "twin")
        workdir=lambda wc: f"{RES}/oaat/seed{wc.seed}/checkpoints/{OAAT.training_job(wc.job)}",
    log:
        f"{RES}/logs/oaat/seed{{seed}}/jobs/{{job}}.log",
    threads: 1 if SCALE == "smoke" else 8
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=4000 if SCALE == "smoke" else 32000,
        runtime=30 if SCALE == "smoke" else (24 * 60 if SCALE == "reduced" else 7 * 24 * 60),
        gpu=0 if SCALE == "smoke" else 1,
    script:
        "scripts/oaat_job.py"


rule oaat_table:
    input:
        unpack(lambda wc: oaat_job_files(wc.target)),
    output:
        csv=f"{RES}/oaat/seed{{seed}}/{{target}}.csv",
        provenance=f"{RES}/oaat/seed{{seed}}/{{target}}.provenance.json",
    wildcard_constraints:
        target="table1|table2|masking",
    params:
        scale=SCALE,
        seed=lambda wc: int(wc.seed),
    log:
        f"{RES}/logs/oaat/seed{{seed}}/{{target}}.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "scripts/oaat_table.py"


rule oaat_figure1:
    input:
        data=f"{DATA}/{OAAT_CFG['data']['datasets']['c10']}.npz",
        nt=f"{RES}/oaat/seed{{seed}}/models/c10_rn18_nt.pt",
        pgd_at=f"{RES}/oaat/seed{{seed}}/models/c10_rn18_pgd_at.pt",
    output:
        csv=f"{RES}/oaat/seed{{seed}}/figure1.csv",
        png=f"{RES}/oaat/seed{{seed}}/figure1.png",
        provenance=f"{RES}/oaat/seed{{seed}}/figure1.provenance.json",
    params:
        settings={**OAAT_CFG["figure1"], "jobs": {"nt": OAAT.job_settings(OAAT_CFG, "c10_rn18_nt"),
                                                  "pgd_at": OAAT.job_settings(OAAT_CFG, "c10_rn18_pgd_at")}},
        scale=SCALE,
        seed=lambda wc: int(wc.seed),
    log:
        f"{RES}/logs/oaat/seed{{seed}}/figure1.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10 if SCALE == "smoke" else 60,
    script:
        "scripts/oaat_figure1.py"
