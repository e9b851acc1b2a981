import _advrep_src  # noqa: F401  (src/ on sys.path)
from advrep import logs
from advrep.lipreg import workflow

logs.to_file(snakemake.log[0])
workflow.run_job(snakemake.input.data, snakemake.output.csv, snakemake.output.json,
                 settings=dict(snakemake.params.settings), seed=snakemake.params.seed,
                 workdir=snakemake.params.workdir, threads=snakemake.threads)
