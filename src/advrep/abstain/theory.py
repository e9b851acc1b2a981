"""Synthetic check of Theorems 2.1 and 2.2 (paper L47, L67) with the exact adversary.

Theorem 2.2, case ``n3 = 1`` (L67): for a test point ``x`` at distance ``r`` from the nearest training point of a
different class, the robust error of ROBUSTCLASSIFIER(tau, 0) is at most ``m (tau / r)^(n2 - 1)``, ``m`` the number
of training examples.  (The union-bound event behind it: the random line through ``x`` passes within ``tau`` of some
wrong-class training point, i.e. ``min_{wrong i} h_i < tau``; we report that event too.)
Theorem 2.1 (L47): any classifier that never abstains is beaten along a random direction with probability at least
``1/2 - delta`` for some class; we report Algorithm 1 with ``tau = inf`` (nearest neighbour, no abstention) and the
exact linear protocol, whose robust errors should sit near 1.

Data: ``k`` classes with centres on a regular simplex of edge ``sep`` (spanning ``k - 1`` dimensions) embedded in
``R^n2``, points drawn uniformly from balls of radius ``radius`` around them, so classes stay separated by at least
``sep - 2 radius`` in every dimension ``n2 >= k - 1``.
"""

from __future__ import annotations

import numpy as np

from .adversary import tau_star
from .linear import fit_linear, linear_adversary_wins
from .subspace import random_subspaces


def simplex_centres(k: int, n2: int, sep: float) -> np.ndarray:
    """``k`` points in ``R^n2`` (n2 >= k - 1) with all pairwise distances ``sep``."""
    if n2 < k - 1:
        raise ValueError("need n2 >= k - 1")
    e = np.eye(k) - 1.0 / k  # regular simplex in the hyperplane sum = 0 of R^k, edge sqrt(2)
    u, s, vt = np.linalg.svd(e)
    coords = u[:, :k - 1] * s[:k - 1]  # (k, k-1), same pairwise distances
    out = np.zeros((k, n2))
    out[:, :k - 1] = coords * (sep / np.sqrt(2.0))
    return out


def separated_clusters(n2: int, *, k: int = 3, m_per_class: int = 100, test_per_class: int = 100, sep: float = 10.0,
                       radius: float = 1.0, seed: int = 0):
    """Train/test features and labels for well-separated uniform-ball clusters in ``R^n2``."""
    rng = np.random.default_rng(seed)
    centres = simplex_centres(k, n2, sep)

    def ball(n):
        g = rng.standard_normal((n, n2))
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        return g * radius * rng.uniform(size=(n, 1)) ** (1.0 / n2)

    y = np.repeat(np.arange(k), m_per_class)
    ty = np.repeat(np.arange(k), test_per_class)
    return centres[y] + ball(len(y)), y, centres[ty] + ball(len(ty)), ty


def theorem22_rows(n2_values=(2, 3, 4, 6, 8, 12, 16, 32, 64), *, tau: float = 2.0, k: int = 3,
                   m_per_class: int = 100, test_per_class: int = 200, sep: float = 10.0, radius: float = 1.0,
                   seed: int = 0) -> list[dict]:
    """Measured robust error vs the Theorem 2.2 bound, and the no-abstention errors (Theorem 2.1), per ``n2``."""
    rows = []
    for n2 in n2_values:
        X, y, T, ty = separated_clusters(n2, k=k, m_per_class=m_per_class, test_per_class=test_per_class, sep=sep,
                                         radius=radius, seed=seed)
        B = random_subspaces(len(T), n2, 1, seed + 1)
        res = tau_star(X, y, T, ty, subspaces=B)
        m = len(X)
        diff = ty[:, None] != y[None, :]
        D = np.linalg.norm(T[:, None, :] - X[None, :, :], axis=2)
        r = np.where(diff, D, np.inf).min(1)
        per_point = np.minimum(1.0, m * (tau / r) ** (n2 - 1))
        # union-bound event: the line passes within tau of some wrong-class training point
        a = np.einsum("mnd,md->mn", X[None, :, :] - T[:, None, :], B[:, :, 0])
        h = np.sqrt(np.maximum(D ** 2 - a ** 2, 0.0))
        near = (np.where(diff, h, np.inf).min(1) < tau)
        W, bias = fit_linear(X, y, n_classes=k)
        rows.append({"n2": n2, "tau": tau, "m": m, "r_min": float(r.min()), "E_adv": float(res.wins(tau).mean()),
                     "line_within_tau_of_wrong": float(near.mean()), "bound": float(per_point.mean()),
                     "D_nat": res.rates(tau)["D_nat"],
                     "E_adv_nearest_neighbour": float(np.isfinite(res.tau_star).mean()),
                     "E_adv_linear": float(linear_adversary_wins(W, bias, T, ty, B).mean())})
    return rows
