"""Audit: published numbers (``advrep/published``) against reproduced results, number by number and claim by claim."""

from .compare import (AUDIT_COLUMNS, CLAIM_COLUMNS, DEVIATES, FAILS, HOLDS, MATCH, NOT_COMPARABLE, Bands, Results,
                      audit_claims, audit_numbers, tolerance)
from .registry import Registry, load, registry_dir, shape_problems
from .report import audit_paper, summary_markdown

__all__ = ["AUDIT_COLUMNS", "CLAIM_COLUMNS", "MATCH", "DEVIATES", "NOT_COMPARABLE", "HOLDS", "FAILS", "Bands",
           "Results", "Registry", "audit_claims", "audit_numbers", "audit_paper", "load", "registry_dir",
           "shape_problems", "summary_markdown", "tolerance"]
