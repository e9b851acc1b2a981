import _advrep_src  # noqa: F401  (src/ on sys.path)
from advrep import logs
from advrep.oaat import workflow

logs.to_file(snakemake.log[0])
workflow.run_figure1(snakemake.input.data, {"nt": snakemake.input.nt, "pgd_at": snakemake.input.pgd_at},
                     snakemake.output.csv, snakemake.output.png, settings=dict(snakemake.params.settings),
                     scale=snakemake.params.scale, seed=snakemake.params.seed)
