# One script for every abstain target: the rule name says which (abstain_<target>).
import _advrep_src  # noqa: F401  (src/ on sys.path)
from advrep import logs
from advrep.abstain import workflow

logs.to_file(snakemake.log[0])
target = snakemake.rule.removeprefix("abstain_")
common = dict(settings=dict(snakemake.params.settings), scale=snakemake.params.scale, seed=snakemake.params.seed)
out = snakemake.output
if target == "table1":
    workflow.table1(out.csv, pass_files=dict(snakemake.input.items()), **common)
elif target == "figure1":
    workflow.figure1(out.csv, out.png, pass_files=dict(snakemake.input.items()), **common)
elif target == "tuning":
    workflow.tuning(out.csv, out.png, pass_files=dict(snakemake.input.items()), **common)
elif target == "n3_sweep":
    files = {}
    for key, path in snakemake.input.items():
        method, n3 = key.rsplit("_n3", 1)
        files[(method, int(n3))] = path
    workflow.n3_sweep(out.csv, out.png, pass_files=files, **common)
elif target == "theory":
    workflow.theory(out.csv, out.png, **common)
else:
    raise ValueError(f"no abstain target {target!r}")
