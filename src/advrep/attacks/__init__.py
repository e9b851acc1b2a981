"""Attacks: one call signature for all (model, x, y, eps, norm -> AttackResult), inputs in [0, 1], models attacked
in eval mode.  Shared mechanics live in :mod:`advrep.attacks.core`."""

from .core import (NORMS, AttackResult, CallCounter, clamp_box, eval_mode, lp_norm, maximize, misclassified,
                   project, random_start, steepest_ascent)

__all__ = ["NORMS", "AttackResult", "CallCounter", "clamp_box", "eval_mode", "lp_norm", "maximize", "misclassified",
           "project", "random_start", "steepest_ascent"]
