# One jupytext notebook per paper (notebooks/<paper>.py), executed and rendered; a broken notebook fails the DAG.


rule notebook:
    input:
        notebook="notebooks/{paper}.py",
        audit=f"{RES}/audit/{{paper}}.csv",
        claims=f"{RES}/audit/{{paper}}.claims.csv",
        results=lambda wc: paper_results(wc.paper),
    output:
        ipynb=f"{RES}/notebooks/{{paper}}.ipynb",
        html=report(f"{RES}/notebooks/{{paper}}.html", category="notebooks", labels={"paper": "{paper}"}),
    params:
        results_dir=lambda wc, input: str(Path(input.audit).parent.parent),
        scale=SCALE,
    log:
        f"{RES}/logs/notebooks/{{paper}}.log",
    conda:
        "../envs/notebook.yaml"
    resources:
        mem_mb=4000,
        runtime=20,
    script:
        "scripts/render_notebook.py"
