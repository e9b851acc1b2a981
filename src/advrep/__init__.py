"""advrep: reproduce and audit five adversarial-robustness papers.

All logic lives here; the Snakemake rules under ``rules/`` only read their inputs, call into this package and
write outputs.  Paper modules: ``abstain``, ``lipreg``, ``sonet``, ``voronoi``, ``oaat``.
"""

__version__ = "0.1.0"

PAPERS = ("abstain", "lipreg", "sonet", "voronoi", "oaat")
SCALES = ("smoke", "reduced", "paper")
