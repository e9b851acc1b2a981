# voronoi: Adversarial training with Voronoi constraints.  Logic: src/advrep/voronoi/.
#   figure1 -> advrep.voronoi.illustrations.figure1  (Voronoi diagram, cross-class faces)
#   figure2 -> advrep.voronoi.illustrations.figure2  (constrained steps)
#   figure3 -> advrep.voronoi.planes                 (PLANES codim 10/500, Voronoi vs Madry, 20 retrainings)
#   figure4, figure5 (MNIST, CIFAR-10): not implemented yet; the audit reports them "not run yet".


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
        f"{RES}/voronoi/planes/codim{{codim}}.npz",
    params:
        settings=config["voronoi"]["figure3"],
        seed=config["seed"],
        workdir=lambda wc: f"{RES}/voronoi/checkpoints/planes_codim{wc.codim}",
    log:
        f"{RES}/logs/voronoi/planes_codim{{codim}}.log",
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
        expand(f"{RES}/voronoi/planes/codim{{codim}}.npz", codim=config["voronoi"]["figure3"]["codims"]),
    output:
        csv=report(f"{RES}/voronoi/figure3.csv", category="voronoi", labels={"target": "figure3", "type": "data"}),
        png=report(f"{RES}/voronoi/figure3.png", category="voronoi", labels={"target": "figure3", "type": "figure"}),
        provenance=f"{RES}/voronoi/figure3.provenance.json",
    params:
        settings=config["voronoi"]["figure3"],
        scale=SCALE,
        seed=config["seed"],
    log:
        f"{RES}/logs/voronoi/figure3.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "scripts/voronoi_figure3.py"
