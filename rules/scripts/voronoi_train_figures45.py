import _advrep_src  # noqa: F401  (src/ on sys.path)
from advrep import logs
from advrep.voronoi import figures45

logs.to_file(snakemake.log[0])
figures45.run_job(snakemake.input[0], snakemake.output[0], settings=dict(snakemake.params.settings),
                  seed=snakemake.params.seed, workdir=snakemake.params.workdir, threads=snakemake.threads)
