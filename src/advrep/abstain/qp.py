"""Exact solvers for one candidate's convex program (paper L111: "a convex optimization program in n3 dimensions and
m constraints").

In subspace coordinates (see :mod:`advrep.abstain.adversary`) the program for a wrong-class candidate ``i`` is the
Euclidean projection of ``u_i`` onto the polyhedron ``{t in R^n3 : G t <= h}`` with rows ``G_j = 2 (u_j - u_i)``,
``h_j = q_j - q_i``.  Two solvers:

* :func:`project_polyhedron` -- the dual active-set method of Goldfarb & Idnani (1983, Math. Prog. 27:1-33) specialised
  to the identity Hessian.  It starts at the unconstrained minimiser ``u_i``, adds the most violated constraint, and
  drops constraints whose multiplier would turn negative; every step strictly increases the dual objective, so it
  terminates after finitely many steps with the exact projection or a certificate of infeasibility (a violated
  constraint whose normal is a non-negative combination of active normals).  Exact up to floating-point rounding.
* :func:`candidate_value_cvxpy` -- the same program written in the ORIGINAL feature coordinates, solved by cvxpy +
  CLARABEL; used as an independent reference in the tests and in the naive baseline.
"""

from __future__ import annotations

import math

import numpy as np


def project_polyhedron(u0: np.ndarray, G: np.ndarray, h: np.ndarray, *, tol: float = 1e-10,
                       max_iter: int = 10_000) -> np.ndarray | None:
    """``argmin ||t - u0||^2 s.t. G t <= h`` (Goldfarb-Idnani with identity Hessian), or ``None`` if infeasible.

    Rows with ``G_j = 0`` are the constant constraints ``0 <= h_j``.  Constraints are normalised to unit normals so
    that ``tol`` is a distance in ``t`` space (scaled by ``1 + |u0| + max|h|``).
    """
    u0 = np.asarray(u0, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64).reshape(len(h), len(u0))
    h = np.asarray(h, dtype=np.float64)
    norms = np.linalg.norm(G, axis=1)
    zero = norms == 0
    if (h[zero] < 0).any():
        return None
    G, h, norms = G[~zero], h[~zero], norms[~zero]
    G = G / norms[:, None]
    h = h / norms
    scale = 1.0 + float(np.abs(u0).max(initial=0.0)) + float(np.abs(h).max(initial=0.0))
    eps = tol * scale
    x = u0.copy()
    active: list[int] = []
    lam = np.zeros(0)
    # "s_j(x) = n_j . x - b_j >= 0" form of Goldfarb-Idnani: n_j = -G_j, b_j = -h_j, so s_j(x) = h_j - G_j . x.
    for _ in range(max_iter):
        s = h - G @ x
        p = int(np.argmin(s)) if len(s) else -1
        if p < 0 or s[p] >= -eps:
            return x
        lam_p = 0.0
        while True:
            n_p = -G[p]
            if active:
                N = -G[active].T  # (n3, q) active normals
                r, *_ = np.linalg.lstsq(N, n_p, rcond=None)  # r = N* n_p,  N* = (N'N)^-1 N'
                z = n_p - N @ r  # primal step direction H n_p
            else:
                r = np.zeros(0)
                z = n_p
            zz = float(z @ z)
            pos = r > eps
            if pos.any():
                ratios = np.where(pos, lam / np.where(pos, r, 1.0), np.inf)
                k = int(np.argmin(ratios))
                t1 = float(ratios[k])
            else:
                k, t1 = -1, math.inf
            s_p = float(h[p] - G[p] @ x)
            t2 = -s_p / zz if zz > eps * eps else math.inf
            t = min(t1, t2)
            if math.isinf(t):
                return None  # n_p is a non-negative combination of active normals: infeasible
            if math.isinf(t2):  # dual step only, then drop the blocking constraint
                lam = lam - t * r
                lam_p += t
                del active[k]
                lam = np.delete(lam, k)
                continue
            x = x + t * z
            lam = lam - t * r
            lam_p += t
            if t2 <= t1:
                active.append(p)
                lam = np.append(lam, lam_p)
                break
            del active[k]
            lam = np.delete(lam, k)
    raise RuntimeError("active-set projection did not converge")


def polyhedron_value2(u0, G, h, **kw) -> float:
    """Squared distance from ``u0`` to ``{G t <= h}`` (``inf`` if the polyhedron is empty)."""
    t = project_polyhedron(u0, G, h, **kw)
    if t is None:
        return math.inf
    d = t - np.asarray(u0, dtype=np.float64)
    return float(d @ d)


def candidate_value_cvxpy(x: np.ndarray, B: np.ndarray, xi: np.ndarray, others: np.ndarray) -> float:
    """Reference (original coordinates): ``min ||x + B t - x_i|| s.t. ||x+Bt-x_i||^2 <= ||x+Bt-x_j||^2`` for all
    rows ``x_j`` of ``others``, i.e. the linear constraints ``2 (x_j - x_i).(x + B t) <= ||x_j||^2 - ||x_i||^2``.

    Returns the optimal distance, ``inf`` if infeasible.  Solved by CLARABEL (interior point: accurate to ~1e-8).
    """
    import cvxpy as cp

    x = np.asarray(x, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64).reshape(len(x), -1)
    xi = np.asarray(xi, dtype=np.float64)
    others = np.asarray(others, dtype=np.float64).reshape(-1, len(x))
    t = cp.Variable(B.shape[1])
    e = x + B @ t
    cons = []
    if len(others):
        D = 2.0 * (others - xi)
        rhs = (others * others).sum(1) - xi @ xi
        cons = [(D @ B) @ t <= rhs - D @ x]
    prob = cp.Problem(cp.Minimize(cp.sum_squares(e - xi)), cons)
    prob.solve(solver=cp.CLARABEL)
    if prob.status in ("infeasible", "infeasible_inaccurate"):
        return math.inf
    if prob.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"cvxpy status {prob.status}")
    return math.sqrt(max(float(prob.value), 0.0))
