import _advrep_src  # noqa: F401  (src/ on sys.path)
from advrep import logs
from advrep.voronoi import figures45

logs.to_file(snakemake.log[0])
jobs = {(p, m): snakemake.input[f"{p}_{m}"] for p, m in figures45.FIGURE_JOBS["figure5"]}
figures45.run(snakemake.output.csv, snakemake.output.png, figure="figure5", job_files=jobs,
              scale=snakemake.params.scale, seed=snakemake.params.seed)
