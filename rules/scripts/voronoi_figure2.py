import _advrep_src  # noqa: F401  (src/ on sys.path)
from advrep import logs
from advrep.voronoi import illustrations

logs.to_file(snakemake.log[0])
illustrations.figure2(snakemake.output.csv, snakemake.output.png, scale=snakemake.params.scale,
                      seed=snakemake.params.seed, **snakemake.params.settings)
