# abstain: Balcan, Blum, Sharma, Zhang. Can non-Lipschitz networks be robust? The power of abstention and
# data-driven decision making.  Logic: src/advrep/abstain/.
#   seed<k>/features/{method}.npz     -> advrep.abstain.features  (SimCLR / SupCon encoders, 512-d features)
#   seed<k>/attack/{method}_n3{n}.npz -> advrep.abstain.workflow.attack_pass (exact random-subspace adversary)
#   seed<k>/{table1, figure1, tuning, n3_sweep} -> advrep.abstain.workflow.<target> (per seed; rules/seeds.smk
#                                      summarises them over the seeds into <target>.csv)
#   theory -> advrep.abstain.workflow.theory (computed once)

wildcard_constraints:
    method="|".join(ABSTAIN_METHODS),
    n3=r"[1-9][0-9]*",


rule abstain_features:
    input:
        f"{DATA}/{ABSTAIN['features']['dataset']}.npz",
    output:
        f"{RES}/abstain/seed{{seed}}/features/{{method}}.npz",
    params:
        settings=lambda wc: abstain_feature_settings(wc.method),
        checkpoint_dir=lambda wc: f"{RES}/abstain/seed{wc.seed}/checkpoints/{wc.method}",
        seed=lambda wc: int(wc.seed),
    log:
        f"{RES}/logs/abstain/seed{{seed}}/features_{{method}}.log",
    # one torch thread per job on CPU (two encoders side by side on 2 cores: 8 s/epoch vs 55 s with 2 threads each)
    threads: 1 if SCALE == "smoke" else max(2, ABSTAIN["features"]["num_workers"])
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=16000,
        runtime=24 * 60,
        gpu=0 if SCALE == "smoke" else 1,
    script:
        "scripts/abstain_features.py"


rule abstain_attack:
    input:
        f"{RES}/abstain/seed{{seed}}/features/{{method}}.npz",
    output:
        f"{RES}/abstain/seed{{seed}}/attack/{{method}}_n3{{n3}}.npz",
    params:
        sigmas=lambda wc: abstain_sigmas(wc.n3),
        max_test=lambda wc: abstain_max_test(wc.n3),
        k0=ABSTAIN["attack"]["k0"],
        seed=lambda wc: int(wc.seed),
    log:
        f"{RES}/logs/abstain/seed{{seed}}/attack_{{method}}_n3{{n3}}.log",
    threads: 1 if SCALE == "smoke" else 2
    conda:
        "../envs/solvers.yaml"
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=0,
    script:
        "scripts/abstain_attack.py"


rule abstain_table1:
    input:
        **abstain_passes(),
    output:
        csv=f"{RES}/abstain/seed{{seed}}/table1.csv",
        provenance=f"{RES}/abstain/seed{{seed}}/table1.provenance.json",
    params:
        settings=ABSTAIN["table1"],
        scale=SCALE,
        seed=lambda wc: int(wc.seed),
    log:
        f"{RES}/logs/abstain/seed{{seed}}/table1.log",
    conda:
        "../envs/solvers.yaml"
    resources:
        mem_mb=4000,
        runtime=10,
    script:
        "scripts/abstain_target.py"


rule abstain_figure1:
    input:
        **abstain_passes(),
    output:
        csv=f"{RES}/abstain/seed{{seed}}/figure1.csv",
        png=f"{RES}/abstain/seed{{seed}}/figure1.png",
        provenance=f"{RES}/abstain/seed{{seed}}/figure1.provenance.json",
    params:
        settings=ABSTAIN["figure1"],
        scale=SCALE,
        seed=lambda wc: int(wc.seed),
    log:
        f"{RES}/logs/abstain/seed{{seed}}/figure1.log",
    conda:
        "../envs/solvers.yaml"
    resources:
        mem_mb=4000,
        runtime=10,
    script:
        "scripts/abstain_target.py"


rule abstain_tuning:
    input:
        **abstain_passes(),
    output:
        csv=f"{RES}/abstain/seed{{seed}}/tuning.csv",
        png=f"{RES}/abstain/seed{{seed}}/tuning.png",
        provenance=f"{RES}/abstain/seed{{seed}}/tuning.provenance.json",
    params:
        settings=ABSTAIN["tuning"],
        scale=SCALE,
        seed=lambda wc: int(wc.seed),
    log:
        f"{RES}/logs/abstain/seed{{seed}}/tuning.log",
    conda:
        "../envs/solvers.yaml"
    resources:
        mem_mb=4000,
        runtime=10,
    script:
        "scripts/abstain_target.py"


rule abstain_n3_sweep:
    input:
        **{f"{m}_n3{n}": f"{RES}/abstain/seed{{seed}}/attack/{m}_n3{n}.npz" for m in ABSTAIN_METHODS for n in ABSTAIN_N3},
    output:
        csv=f"{RES}/abstain/seed{{seed}}/n3_sweep.csv",
        png=f"{RES}/abstain/seed{{seed}}/n3_sweep.png",
        provenance=f"{RES}/abstain/seed{{seed}}/n3_sweep.provenance.json",
    params:
        settings=ABSTAIN["n3_sweep"],
        scale=SCALE,
        seed=lambda wc: int(wc.seed),
    log:
        f"{RES}/logs/abstain/seed{{seed}}/n3_sweep.log",
    conda:
        "../envs/solvers.yaml"
    resources:
        mem_mb=4000,
        runtime=10,
    script:
        "scripts/abstain_target.py"


rule abstain_theory:
    output:
        csv=report(f"{RES}/abstain/theory.csv", category="abstain", labels={"target": "theory", "type": "data"}),
        png=report(f"{RES}/abstain/theory.png", category="abstain", labels={"target": "theory", "type": "figure"}),
        provenance=f"{RES}/abstain/theory.provenance.json",
    params:
        settings=ABSTAIN["theory"],
        scale=SCALE,
        seed=config["seed"],
    log:
        f"{RES}/logs/abstain/theory.log",
    conda:
        "../envs/solvers.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "scripts/abstain_target.py"
