import _advrep_src  # noqa: F401  (src/ on sys.path)
from advrep import logs
from advrep.voronoi import planes

logs.to_file(snakemake.log[0])
settings = dict(snakemake.params.settings)
planes.run(snakemake.output.csv, snakemake.output.png, curve_files=dict(zip(settings["codims"], snakemake.input)),
           settings=settings, scale=snakemake.params.scale, seed=snakemake.params.seed)
