"""Adversarial training with Voronoi constraints (voronoi paper, Section 4, eq. 4): the L_p-ball of Madry's robust
objective replaced by the Voronoi cell at x, the inner maximisation solved by the constrained steps of Section 3
(:func:`advrep.voronoi.constraints.voronoi_attack`).

Where the constraining neighbours come from (``constraint="m_nearest"``, the paper's):

* batches that carry training-set indices (a loader over :class:`advrep.train.loop.IndexedDataset`; the loop hands
  them to objectives as ``ctx.index``): looked up in a table computed once per training set
  (:meth:`NeighbourIndex.all_neighbours`, "performed once before training begins and reused at each iteration",
  Section 4), optionally cached on disk (``cache_dir``);
* any other batch, and every row of an indexed batch whose input is not the training sample at its index (an
  augmented input): an exact search per batch, as the paper does for augmented data ("the nearest neighbor search
  query must be computed at each iteration").  So cached neighbours are always those of the sample itself, and both
  routes give the same constraints (and the same adversarial examples) for un-augmented inputs.

``constraint="exact"``: every training sample of another class constrains (:class:`ExactCell`, L2 only): no
heuristic, a search over the whole training set for each step that can reach a cell face.  With
``on_violation="project"`` a step that leaves the cell is projected onto it (exact L2 projection, a quadratic
program; cutting planes for the exact cell) instead of stopping the sample there.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..train.objectives import Objective, register_objective
from .constraints import ExactCell, NeighbourCells, NeighbourIndex, neighbour_distances, voronoi_attack

logger = logging.getLogger("advrep.voronoi")

CONSTRAINTS = ("m_nearest", "exact")


@register_objective("voronoi_at")
class VoronoiAT(Objective):
    """CE on Voronoi-constrained adversarial examples.

    ``index``: a :class:`NeighbourIndex` over the training set; ``m``: constraining samples per other class (paper:
    10); ``steps``/``alpha``: the constrained gradient steps; ``step_norm``: direction of a step (``l2`` normalised
    gradient or ``linf`` sign); ``p``: the norm of the Voronoi cell; ``box``: input bounds ((0, 1) for images, None
    for PLANES).  ``constraint``: ``"m_nearest"`` (the paper's m nearest samples of each other class) or
    ``"exact"`` (all other-class samples; p = 2).  ``on_violation``: ``"stop"`` (the paper: a sample keeps its
    last iterate inside the cell) or ``"project"`` (p = 2: project the step onto the cell by a quadratic program
    and go on; slow, for small problems).  ``cache_dir``: where the per-training-set neighbour table is kept
    between runs (None: in memory only).  See the module docstring for when the table is used.
    """

    def __init__(self, index: NeighbourIndex, *, m: int = 10, steps: int, alpha: float, step_norm: str = "l2",
                 p: float = 2.0, box: tuple[float, float] | None = (0.0, 1.0), constraint: str = "m_nearest",
                 on_violation: str = "stop", cache_dir=None):
        if constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {constraint!r}")
        if constraint == "exact" and float(p) != 2.0:
            raise ValueError(f"constraint='exact' checks L2 cells; p = {p}")
        if on_violation not in ("stop", "project"):
            raise ValueError(f"on_violation must be 'stop' or 'project', got {on_violation!r}")
        if on_violation == "project" and float(p) != 2.0:
            raise ValueError(f"on_violation='project' projects onto L2 cells; p = {p}")
        self.index, self.m, self.steps, self.alpha = index, m, steps, alpha
        self.step_norm, self.p, self.box = step_norm, float(p), box
        self.constraint, self.on_violation, self.cache_dir = constraint, on_violation, cache_dir
        self._on: dict = {}  # device -> (points, labels) tensors
        self._warned = False

    def _tensors(self, device: torch.device):
        if device not in self._on:
            self._on[device] = (self.index.points.to(device), torch.from_numpy(self.index.labels).to(device))
        return self._on[device]

    def precompute(self) -> None:
        """Compute (or read from ``cache_dir``) the neighbour table and its distances now instead of at the first
        indexed batch."""
        if self.constraint == "m_nearest":
            self.index.neighbour_distances(self.m, self.p, self.cache_dir)

    def cells(self, x: torch.Tensor, y: torch.Tensor, sample_index: torch.Tensor | None = None):
        """The constraints for a batch: :class:`NeighbourCells` (m-nearest) or :class:`ExactCell`.
        ``sample_index``: (B,) positions of the samples in the training set, or None."""
        points, labels = self._tensors(x.device)
        if self.constraint == "exact":
            return ExactCell(points, labels)
        xf = x.detach().reshape(len(x), -1)
        nb = torch.empty((len(x), self.m * (len(self.index.classes) - 1)), dtype=torch.long)
        dist = torch.empty(nb.shape, dtype=xf.dtype, device=xf.device)
        query = torch.ones(len(x), dtype=torch.bool)
        if sample_index is not None:
            i = torch.as_tensor(sample_index).long().cpu()
            if i.shape != (len(x),):
                raise ValueError(f"ctx.index must hold one training-set index per sample, got {tuple(i.shape)}")
            if (i < 0).any() or (i >= len(self.index)).any():
                raise ValueError(f"ctx.index outside the training set (0..{len(self.index) - 1})")
            # rows whose input is the training sample itself use the table; augmented inputs are queried
            same = (points[i.to(points.device)].to(xf.dtype) == xf).all(1).cpu()
            same &= torch.from_numpy(self.index.labels[i.numpy()]) == y.cpu()
            if same.any():
                table = torch.from_numpy(self.index.all_neighbours(self.m, self.cache_dir))
                dtable = torch.from_numpy(self.index.neighbour_distances(self.m, self.p, self.cache_dir))
                nb[same] = table[i[same]]
                dist[same.to(dist.device)] = dtable[i[same]].to(dist.device, dist.dtype)
            if not same.all() and not self._warned:
                logger.info("VoronoiAT: %d of %d inputs differ from their training samples (augmented?): their "
                            "neighbours are searched per batch", int((~same).sum()), len(x))
                self._warned = True
            query = ~same
        if query.any():
            q = query.numpy()
            found = torch.from_numpy(self.index.query(xf[query.to(xf.device)].cpu().numpy(), y.cpu().numpy()[q],
                                                      self.m))
            nb[query] = found
            qd = query.to(xf.device)
            dist[qd] = neighbour_distances(points, found.to(points.device), xf[qd], self.p)
        return NeighbourCells(points, nb.to(points.device), x, self.p, distances=dist)

    def perturb(self, model, x, y, ctx=None, return_path: bool = False):
        """The Voronoi-constrained adversarial examples of a batch (eval mode); ``ctx.index`` as in :meth:`cells`."""
        cells = self.cells(x, y, getattr(ctx, "index", None))
        return voronoi_attack(model, x, y, cells, steps=self.steps, alpha=self.alpha, step_norm=self.step_norm,
                              p=self.p, box=self.box, return_path=return_path, on_violation=self.on_violation)

    def __call__(self, model, x, y, ctx):
        x_adv = self.perturb(model, x, y, ctx)
        model.train()
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits

    def __repr__(self) -> str:
        return (f"VoronoiAT(m={self.m}, steps={self.steps}, alpha={self.alpha}, step_norm={self.step_norm!r}, "
                f"p={self.p}, box={self.box}, constraint={self.constraint!r}, on_violation={self.on_violation!r})")


__all__ = ["CONSTRAINTS", "VoronoiAT"]
