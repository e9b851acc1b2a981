# voronoi: Adversarial training with Voronoi constraints.  Logic: src/advrep/voronoi/.
#   figure1 -> advrep.voronoi.illustrations.figure1  (Voronoi diagram, cross-class faces)
#   figure2 -> advrep.voronoi.illustrations.figure2  (constrained steps)
#   figure3 -> advrep.voronoi.planes                 (PLANES codim 10/500, Voronoi vs Madry, 20 retrainings)
#   figure4 -> advrep.voronoi.figures45              (MNIST, CIFAR-10: Voronoi vs Madry vs Jacobian reg., NAUC)
#   figure5 -> advrep.voronoi.figures45              (MNIST: Madry at eps 0.4 for 100/150 epochs vs Voronoi)
#   one training + evaluation job per (panel, method), shared by both figures (voronoi_f45_model)
#   figures 3-5 and their jobs run per seed, under seed<k>/; rules/seeds.smk summarises them over the seeds
from advrep.voronoi import figures45 as VORONOI_F45


rule voronoi_figure1:
    output:
        csv=report(f"{RES}/voronoi/figure1.csv", category="voronoi", labels={"target": "figure1", "type": "data"}),
        png=report(f"{RES}/voronoi/figure1.png", category="voronoi", labels={"target": "figure1", "type": "figure"}),
        provenance=f"{RES}/voronoi/figure1.provenance.json",
    params:
        settings=config["voronoi"]["figure1"],
        scale=SCALE,
        seed=config["seed"],
    log:
        f"{RES}/logs/voronoi/figure1.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "scripts/voronoi_figure1.py"


rule voronoi_figure2:
    output:
        csv=report(f"{RES}/voronoi/figure2.csv", category="voronoi", labels={"target": "figure2", "type": "data"}),
        png=report(f"{RES}/voronoi/figure2.png", category="voronoi", labels={"target": "figure2", "type": "figure"}),
        provenance=f"{RES}/voronoi/figure2.provenance.json",
    params:
        settings=config["voronoi"]["figure2"],
        scale=SCALE,
        seed=config["seed"],
    log:
        f"{RES}/logs/voronoi/figure2.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "scripts/voronoi_figure2.py"


rule voronoi_planes_codim:
    # one job per codimension, so the two run side by side
    input:
        f"{DATA}/planes_codim{{codim}}.npz",
    output:
        f"{RES}/voronoi/seed{{seed}}/planes/codim{{codim}}.npz",
    params:
        settings=config["voronoi"]["figure3"],
        seed=lambda wc: int(wc.seed),
        workdir=lambda wc: f"{RES}/voronoi/seed{wc.seed}/checkpoints/planes_codim{wc.codim}",
    log:
        f"{RES}/logs/voronoi/seed{{seed}}/planes_codim{{codim}}.log",
    threads: 1
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=0,
    script:
        "scripts/voronoi_planes_codim.py"


rule voronoi_figure3:
    input:
        expand(f"{RES}/voronoi/seed{{{{seed}}}}/planes/codim{{codim}}.npz",
               codim=config["voronoi"]["figure3"]["codims"]),
    output:
        csv=f"{RES}/voronoi/seed{{seed}}/figure3.csv",
        png=f"{RES}/voronoi/seed{{seed}}/figure3.png",
        provenance=f"{RES}/voronoi/seed{{seed}}/figure3.provenance.json",
    params:
        settings=config["voronoi"]["figure3"],
        scale=SCALE,
        seed=lambda wc: int(wc.seed),
    log:
        f"{RES}/logs/voronoi/seed{{seed}}/figure3.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "scripts/voronoi_figure3.py"


rule voronoi_f45_model:
    # one job per (panel, method): train through the engine (resumable checkpoints under the params' workdir, in a
    # folder named by a hash of the training settings) and evaluate the per-sample robust-accuracy curve
    input:
        lambda wc: f"{DATA}/{VORONOI_F45.job_settings(config['voronoi'], wc.panel, wc.method)['dataset']}.npz",
    output:
        f"{RES}/voronoi/seed{{seed}}/figures45/{{panel}}_{{method}}.npz",
    wildcard_constraints:
        panel="|".join(VORONOI_F45.PANELS),
        method="|".join(VORONOI_F45.METHODS),
    params:
        settings=lambda wc: VORONOI_F45.job_settings(config["voronoi"], wc.panel, wc.method),
        seed=lambda wc: int(wc.seed),
        workdir=lambda wc: f"{RES}/voronoi/seed{wc.seed}/checkpoints/{wc.panel}_{wc.method}",
    log:
        f"{RES}/logs/voronoi/seed{{seed}}/figures45/{{panel}}_{{method}}.log",
    threads: 1 if SCALE == "smoke" else 8
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=4000 if SCALE == "smoke" else 32000,
        runtime=30 if SCALE == "smoke" else (24 * 60 if SCALE == "reduced" else 7 * 24 * 60),
        gpu=0 if SCALE == "smoke" else 1,
    script:
        "scripts/voronoi_train_figures45.py"


rule voronoi_figure4:
    input:
        **{f"{p}_{m}": f"{RES}/voronoi/seed{{seed}}/figures45/{p}_{m}.npz"
           for p, m in VORONOI_F45.FIGURE_JOBS["figure4"]},
    output:
        csv=f"{RES}/voronoi/seed{{seed}}/figure4.csv",
        png=f"{RES}/voronoi/seed{{seed}}/figure4.png",
        provenance=f"{RES}/voronoi/seed{{seed}}/figure4.provenance.json",
    params:
        scale=SCALE,
        seed=lambda wc: int(wc.seed),
    log:
        f"{RES}/logs/voronoi/seed{{seed}}/figure4.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "scripts/voronoi_figure4.py"


rule voronoi_figure5:
    input:
        **{f"{p}_{m}": f"{RES}/voronoi/seed{{seed}}/figures45/{p}_{m}.npz"
           for p, m in VORONOI_F45.FIGURE_JOBS["figure5"]},
    output:
        csv=f"{RES}/voronoi/seed{{seed}}/figure5.csv",
        png=f"{RES}/voronoi/seed{{seed}}/figure5.png",
        provenance=f"{RES}/voronoi/seed{{seed}}/figure5.provenance.json",
    params:
        scale=SCALE,
        seed=lambda wc: int(wc.seed),
    log:
        f"{RES}/logs/voronoi/seed{{seed}}/figure5.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "scripts/voronoi_figure5.py"
