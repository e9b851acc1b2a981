# Audit: every published number (src/advrep/published/) against its reproduction. Logic: src/advrep/audit/.


rule audit_paper:
    input:
        lambda wc: paper_results(wc.paper),
    output:
        numbers=report(f"{RES}/audit/{{paper}}.csv", category="audit", labels={"paper": "{paper}", "type": "numbers"}),
        claims=report(f"{RES}/audit/{{paper}}.claims.csv", category="audit", labels={"paper": "{paper}", "type": "claims"}),
    params:
        scale=SCALE,
        bands=config["audit"]["bands"],
    log:
        f"{RES}/logs/audit/{{paper}}.log",
    conda:
        "../envs/audit.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "scripts/audit_paper.py"


rule audit_summary:
    input:
        numbers=expand(f"{RES}/audit/{{paper}}.csv", paper=PAPERS),
        claims=expand(f"{RES}/audit/{{paper}}.claims.csv", paper=PAPERS),
    output:
        report(f"{RES}/audit/summary.md", category="audit", labels={"paper": "all", "type": "summary"}),
    params:
        scale=SCALE,
        papers=PAPERS,
    log:
        f"{RES}/logs/audit/summary.log",
    conda:
        "../envs/audit.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "scripts/audit_summary.py"
