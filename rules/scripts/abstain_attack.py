import _advrep_src  # noqa: F401  (src/ on sys.path)
from advrep import logs
from advrep.abstain import workflow

logs.to_file(snakemake.log[0])
workflow.attack_pass(snakemake.input[0], snakemake.output[0], sigmas=list(snakemake.params.sigmas),
                     n3=int(snakemake.wildcards.n3), seed=snakemake.params.seed, k0=snakemake.params.k0,
                     max_test=snakemake.params.max_test, threads=snakemake.threads)
