import _advrep_src  # noqa: F401  (src/ on sys.path)
from pathlib import Path

from advrep import logs
from advrep.lipreg import workflow

logs.to_file(snakemake.log[0])
target = Path(snakemake.output.csv).stem
files = {j: (snakemake.input[f"{j}_csv"], snakemake.input[f"{j}_json"]) for j in workflow.TABLE_JOBS[target]}
workflow.run_table(target, snakemake.output.csv, job_files=files, scale=snakemake.params.scale,
                   seed=snakemake.params.seed, out_png=snakemake.output.get("png"),
                   settings=dict(snakemake.params.settings))
