import _advrep_src  # noqa: F401  (src/ on sys.path)
from advrep import logs, notebooks

logs.to_file(snakemake.log[0])
notebooks.render(snakemake.input.notebook, snakemake.output.ipynb, snakemake.output.html,
                 params={"RESULTS": snakemake.params.results_dir, "SCALE": snakemake.params.scale,
                         "PAPER": snakemake.wildcards.paper})
