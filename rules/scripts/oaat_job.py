import _advrep_src  # noqa: F401  (src/ on sys.path)
from advrep import logs
from advrep.oaat import workflow

logs.to_file(snakemake.log[0])
workflow.run_job(snakemake.input.data, snakemake.output.csv, snakemake.output.json, snakemake.output.model,
                 settings=dict(snakemake.params.settings), seed=snakemake.params.seed,
                 workdir=snakemake.params.workdir, init_model=snakemake.input.get("init"),
                 threads=snakemake.threads)
