"""Adversarial training with Voronoi constraints (voronoi paper, Section 4, eq. 4): the L_p-ball of Madry's robust
objective replaced by the Voronoi cell at x, the inner maximisation solved by the constrained steps of Section 3
(:func:`advrep.voronoi.constraints.voronoi_attack`).

The m nearest samples of each other class are found per batch by an exact search over the (fixed) training set,
which gives the same constraints as searching once before training and also serves augmented batches, whose
inputs are not training samples (the paper re-queries per iteration then).
"""

from __future__ import annotations

import torch.nn.functional as F

from ..train.objectives import Objective, register_objective
from .constraints import NeighbourIndex, voronoi_attack


@register_objective("voronoi_at")
class VoronoiAT(Objective):
    """CE on Voronoi-constrained adversarial examples.

    ``index``: a :class:`NeighbourIndex` over the training set; ``m``: constraining samples per other class (paper:
    10); ``steps``/``alpha``: the constrained gradient steps; ``step_norm``: direction of a step (``l2`` normalised
    gradient or ``linf`` sign); ``p``: the norm of the Voronoi cell; ``box``: input bounds ((0, 1) for images, None
    for PLANES).
    """

    def __init__(self, index: NeighbourIndex, *, m: int = 10, steps: int, alpha: float, step_norm: str = "l2",
                 p: float = 2.0, box: tuple[float, float] | None = (0.0, 1.0)):
        self.index, self.m, self.steps, self.alpha = index, m, steps, alpha
        self.step_norm, self.p, self.box = step_norm, p, box

    def __call__(self, model, x, y, ctx):
        z = self.index.constraints(x, y, self.m)
        x_adv = voronoi_attack(model, x, y, z, steps=self.steps, alpha=self.alpha, step_norm=self.step_norm, p=self.p,
                               box=self.box)
        model.train()
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits

    def __repr__(self) -> str:
        return (f"VoronoiAT(m={self.m}, steps={self.steps}, alpha={self.alpha}, step_norm={self.step_norm!r}, "
                f"p={self.p}, box={self.box})")
