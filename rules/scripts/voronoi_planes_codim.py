import _advrep_src  # noqa: F401  (src/ on sys.path)
from advrep import logs
from advrep.voronoi import planes

logs.to_file(snakemake.log[0])
planes.run_codim(snakemake.input[0], snakemake.output[0], settings=snakemake.params.settings,
                 seed=snakemake.params.seed, workdir=snakemake.params.workdir)
