import _advrep_src  # noqa: F401  (src/ on sys.path)
from advrep import logs, seeds

logs.to_file(snakemake.log[0])
files = {int(name.removeprefix("seed")): path for name, path in snakemake.input.items()}
seeds.combine(files, snakemake.output.csv, snakemake.output.get("png"))
