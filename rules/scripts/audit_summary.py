import _advrep_src  # noqa: F401  (src/ on sys.path)
from advrep import logs
from advrep.audit.report import write_summary

logs.to_file(snakemake.log[0])
files = dict(zip(snakemake.params.papers, zip(snakemake.input.numbers, snakemake.input.claims)))
write_summary(snakemake.params.scale, files, snakemake.output[0])
