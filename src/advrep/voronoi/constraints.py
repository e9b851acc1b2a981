"""Voronoi constraints (voronoi paper, Section 3, Problem 2 and Figure 2).

An adversarial example for a training sample x must stay in x's Voronoi cell: ||x' - x||_p <= ||x' - z||_p for the
other samples z.  As in the paper, only the m nearest samples of EACH other class constrain x (m(C-1) constraints;
same-class samples impose none), found by exact nearest-neighbour search (faiss), once when the training set is fixed
and per batch when augmentation changes it.

The attack (:func:`voronoi_attack`) takes steps in the gradient direction from x, checks the constraints before
accepting each step, and stops updating a sample at its first violation, keeping the last valid iterate.  The exact
L2 alternative (:func:`project_onto_cell`) projects onto the convex L2 cell by a quadratic program (cvxpy).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..attacks.core import eval_mode, steepest_ascent


class NeighbourIndex:
    """Exact per-class nearest-neighbour indices (faiss ``IndexFlatL2``) over a training set, built once; queried
    for the m nearest samples of each class other than the query's own."""

    def __init__(self, train: np.ndarray, train_labels: np.ndarray):
        import faiss

        self.train = np.ascontiguousarray(np.asarray(train).reshape(len(train), -1), dtype=np.float32)
        self.labels = np.asarray(train_labels)
        self.classes = np.unique(self.labels)
        self.members, self.indices = {}, {}
        for c in self.classes:
            self.members[c] = np.flatnonzero(self.labels == c)
            self.indices[c] = faiss.IndexFlatL2(self.train.shape[1])
            self.indices[c].add(self.train[self.members[c]])

    def query(self, queries: np.ndarray, query_labels: np.ndarray, m: int) -> np.ndarray:
        """Indices (Q, m*(C-1)) into the training set.  Classes with fewer than m samples contribute all they have
        (padded by repeating their nearest, which adds no new constraint)."""
        queries = np.ascontiguousarray(np.asarray(queries).reshape(len(queries), -1), dtype=np.float32)
        query_labels = np.asarray(query_labels)
        if not np.isin(query_labels, self.classes).all():
            raise ValueError("every query label must be one of the training classes")
        out = np.empty((len(queries), m * (len(self.classes) - 1)), dtype=np.int64)
        slot = np.zeros(len(queries), dtype=np.int64)
        for c in self.classes:
            q_idx = np.flatnonzero(query_labels != c)
            if len(q_idx) == 0:
                continue
            k = min(m, len(self.members[c]))
            _, nn_idx = self.indices[c].search(queries[q_idx], k)
            found = self.members[c][nn_idx]
            if k < m:
                found = np.concatenate([found, np.repeat(found[:, :1], m - k, axis=1)], axis=1)
            out[q_idx[:, None], slot[q_idx, None] + np.arange(m)[None, :]] = found
            slot[q_idx] += m
        return out

    def constraints(self, x: torch.Tensor, y: torch.Tensor, m: int) -> torch.Tensor:
        """The constraining samples z (B, m*(C-1), ...) for a batch, on x's device and dtype."""
        idx = self.query(x.detach().cpu().numpy(), y.cpu().numpy(), m)
        z = torch.from_numpy(self.train[idx]).to(device=x.device, dtype=x.dtype)
        return z.view(x.shape[0], idx.shape[1], *x.shape[1:])


def other_class_neighbours(queries: np.ndarray, query_labels: np.ndarray, train: np.ndarray,
                           train_labels: np.ndarray, m: int) -> np.ndarray:
    """Indices (Q, m*(C-1)) into ``train`` of the ``m`` nearest training samples of each class other than the
    query's own (exact L2 search with faiss); see :class:`NeighbourIndex`."""
    return NeighbourIndex(train, train_labels).query(queries, query_labels, m)


def cell_violation(x_adv: torch.Tensor, x: torch.Tensor, z: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """max_k ( ||x_adv - x||_p - ||x_adv - z_k||_p ) per sample: <= 0 inside the (partial) Voronoi cell of x.

    ``x_adv``, ``x``: (B, ...); ``z``: (B, K, ...) the constraining samples.
    """
    b = x.shape[0]
    d_self = (x_adv - x).reshape(b, -1).norm(p=p, dim=1)
    d_others = (x_adv.reshape(b, 1, -1) - z.reshape(b, z.shape[1], -1)).norm(p=p, dim=2)
    return (d_self[:, None] - d_others).amax(1)


class ExactCell:
    """Exact cross-class cell membership: x' is in the cell of (x, y) iff no training sample of another class is
    closer to x' than x is (a nearest-neighbour query per iterate; p = 2).  Use instead of the paper's m-nearest
    heuristic when exactness matters more than speed."""

    def __init__(self, train_x: torch.Tensor, train_y: torch.Tensor, chunk: int = 65536):
        self.train_x = train_x.reshape(len(train_x), -1)
        self.train_y = train_y
        self.chunk = chunk

    def violation(self, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        q = x_adv.reshape(b, -1)
        best = torch.full((b,), float("inf"), dtype=q.dtype, device=q.device)
        for s in range(0, len(self.train_x), self.chunk):
            t, ty = self.train_x[s:s + self.chunk], self.train_y[s:s + self.chunk]
            d = torch.cdist(q, t)
            d = d.masked_fill(ty[None, :] == y[:, None], float("inf"))
            best = torch.minimum(best, d.amin(1))
        return (q - x.reshape(b, -1)).norm(dim=1) - best


def voronoi_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor | ExactCell, *, steps: int,
                   alpha: float, step_norm: str = "l2", p: float = 2.0, box: tuple[float, float] | None = (0.0, 1.0),
                   loss_fn=None, return_path: bool = False):
    """Constrained steps (Figure 2): gradient steps of size ``alpha`` (steepest ascent for ``step_norm``); before
    accepting a step, check the Voronoi constraints against ``z`` (B, K, ...); a sample stops at its first
    violation and keeps its last valid iterate.  ``z`` may instead be an :class:`ExactCell` (every other-class
    training sample constrains; p = 2).  Iterates also stay in ``box`` ([0, 1] for images; ``None`` for
    unbounded inputs such as PLANES).  Attacked in eval mode.

    Returns x_adv (and, with ``return_path``, the list of iterates for plotting).
    """
    loss_fn = loss_fn or (lambda logits, t: nn.functional.cross_entropy(logits, t, reduction="none"))
    x = x.detach()
    cur = x.clone()
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    halfspaces = None
    if p == 2 and not isinstance(z, ExactCell):
        # L2 cells are polyhedra: ||u - x|| <= ||u - z_k||  <=>  (z_k - x) . u <= (||z_k||^2 - ||x||^2) / 2, so each
        # check is one batched product with precomputed (normal, offset) pairs instead of K distances per step.
        xf = x.reshape(x.shape[0], 1, -1)
        zf = z.reshape(z.shape[0], z.shape[1], -1)
        halfspaces = (zf - xf, 0.5 * ((zf * zf).sum(2) - (xf * xf).sum(2)))
    path = [cur.clone()] if return_path else None
    with eval_mode(model):
        for _ in range(steps):
            if not active.any():
                break
            xa = cur[active].clone().requires_grad_(True)
            loss = loss_fn(model(xa), y[active])
            (grad,) = torch.autograd.grad(loss.sum(), xa)
            step = alpha * steepest_ascent(grad, step_norm)
            nxt = xa.detach() + step
            if box is not None:
                nxt = nxt.clamp(*box)
            if isinstance(z, ExactCell):
                ok = z.violation(nxt, x[active], y[active]) <= 0
            elif halfspaces is not None:
                a = halfspaces[0][active]
                ok = (torch.einsum("bkd,bd->bk", a, nxt.reshape(nxt.shape[0], -1))
                      - halfspaces[1][active]).amax(1) <= 0
            else:
                ok = cell_violation(nxt, x[active], z[active], p) <= 0
            idx = active.nonzero().squeeze(1)
            cur[idx[ok]] = nxt[ok]
            active[idx[~ok]] = False
            if return_path:
                path.append(cur.clone())
    return (cur, path) if return_path else cur


def project_onto_cell(v: np.ndarray, x: np.ndarray, z: np.ndarray, box: tuple[float, float] | None = None
                      ) -> np.ndarray:
    """Exact Euclidean projection of ``v`` onto the L2 Voronoi cell of ``x`` w.r.t. the samples ``z`` (K, D):
    {u : ||u - x||_2 <= ||u - z_k||_2 for all k} = {u : 2 (z_k - x) . u <= ||z_k||^2 - ||x||^2}, a polyhedron, so
    the projection is a quadratic program (cvxpy, CLARABEL).  ``box`` optionally intersects with [lo, hi]^D."""
    import cvxpy as cp

    v, x, z = (np.asarray(a, dtype=np.float64).ravel() if a.ndim == 1 else np.asarray(a, dtype=np.float64)
               for a in (v, x, z))
    z = z.reshape(len(z), -1)
    u = cp.Variable(v.size)
    cons = [2 * (z - x) @ u <= (z * z).sum(1) - x @ x]
    if box is not None:
        cons += [u >= box[0], u <= box[1]]
    cp.Problem(cp.Minimize(cp.sum_squares(u - v)), cons).solve(solver=cp.CLARABEL)
    if u.value is None:
        raise RuntimeError("projection onto the Voronoi cell failed (solver returned no point)")
    return u.value
