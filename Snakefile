# Reproduce and audit five adversarial-robustness papers (abstain, lipreg, sonet, voronoi, oaat).
#   snakemake --cores all                         # smoke scale: every target, offline, CPU
#   snakemake --cores all --config scale=reduced  # real data, one GPU
#   snakemake results/smoke/lipreg/table4.csv     # one table
# Logic lives in src/advrep; rules/<paper>.smk declares each paper's experiments.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/abstain.smk"
include: "rules/lipreg.smk"
include: "rules/sonet.smk"
include: "rules/oaat.smk"
include: "rules/voronoi.smk"
include: "rules/seeds.smk"
include: "rules/audit.smk"
include: "rules/notebooks.smk"


rule all:
    default_target: True
    input:
        all_targets(),
