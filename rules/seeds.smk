# Seeds: each seeded target (rules/common.smk SEEDED_TARGETS) summarised over config["seeds"].  Logic: advrep.seeds.
#   results/<scale>/<paper>/seed<k>/<target>.csv (the paper's own rule, one per seed)
#     -> results/<scale>/<paper>/<target>.csv: every cell's mean, std, n and 95% interval over the seeds (one seed:
#        that seed's files, byte for byte); a figure is the first seed's, its provenance says so.
# Seconds of pandas each: run on the submitting host, not queued on a cluster.

localrules:
    seeds_summary,
    seeds_summary_figure,


rule seeds_summary:
    input:
        unpack(lambda wc: seed_results(wc.seeded)),
    output:
        csv=report(f"{RES}/{{seeded}}.csv", category="seeds", labels={"target": "{seeded}"}),
        provenance=f"{RES}/{{seeded}}.provenance.json",
    wildcard_constraints:
        seeded="|".join(t for p in PAPERS for t in seeded(p, figures=False)),
    log:
        f"{RES}/logs/seeds/{{seeded}}.log",
    conda:
        "../envs/solvers.yaml"  # scipy (the t quantile)
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "scripts/seeds_summary.py"


rule seeds_summary_figure:
    input:
        unpack(lambda wc: seed_results(wc.seeded)),
    output:
        csv=report(f"{RES}/{{seeded}}.csv", category="seeds", labels={"target": "{seeded}", "type": "data"}),
        png=report(f"{RES}/{{seeded}}.png", category="seeds", labels={"target": "{seeded}", "type": "figure"}),
        provenance=f"{RES}/{{seeded}}.provenance.json",
    wildcard_constraints:
        seeded="|".join(t for p in PAPERS for t in seeded(p, figures=True)),
    log:
        f"{RES}/logs/seeds/{{seeded}}.log",
    conda:
        "../envs/solvers.yaml"  # scipy (the t quantile)
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "scripts/seeds_summary.py"
