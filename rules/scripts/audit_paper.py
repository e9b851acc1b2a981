import _advrep_src  # noqa: F401  (src/ on sys.path)
from advrep import audit, logs

logs.to_file(snakemake.log[0])
audit.audit_paper(snakemake.wildcards.paper, list(snakemake.input), snakemake.params.scale,
                  snakemake.output.numbers, snakemake.output.claims, audit.Bands(**snakemake.params.bands))
