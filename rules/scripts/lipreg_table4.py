import _advrep_src  # noqa: F401  (src/ on sys.path)
from advrep import logs
from advrep.lipreg import table4

logs.to_file(snakemake.log[0])
settings = dict(snakemake.params.settings)
table4.run(snakemake.output.csv, columns=snakemake.params.columns, unavailable=snakemake.params.unavailable,
           scale=snakemake.params.scale, settings=settings, seed=snakemake.params.seed,
           max_train=settings["max_train"])
