"""The exact random-subspace adversary for any ``n3`` by bound-ordered candidates and constraint generation.

Same quantity as :func:`advrep.abstain.adversary._solve_point` (module docstring of :mod:`advrep.abstain.adversary`
for the notation ``u_k, q_k, h_k``): with Lemma 1 only the test point's own class ``S`` constrains a wrong-class
candidate ``i``, and

    P_i = h_i^2 + dist(u_i, C_i)^2,   C_i = {t : 2 (u_j - u_i) . t <= q_j - q_i  for every j in S},
    tau*^2 = min_i P_i.

The old scan orders candidates by ``h_i`` (Lemma 2), a weak bound in 512-d where ``tau*`` is many times every ``h``;
here two facts make the search small and every program tiny.

* Lemma 6 (half-space bound).  For any subset ``A ⊆ S`` the program on ``A`` alone is a lower bound on ``P_i`` (fewer
  constraints, larger feasible set).  With one constraint ``j``: at ``t = u_i`` it is violated by
  ``s_ij = h_i^2 - h_j^2 - ||u_i - u_j||^2`` (``||e - x_i||^2 <= ||e - x_j||^2`` at the foot of ``x_i``), and the
  distance from ``u_i`` to that half-space is ``max(s_ij, 0) / (2 ||u_i - u_j||)`` (``inf`` if ``u_i = u_j`` and
  ``s_ij > 0``).  So ``LB_i = h_i^2 + max_{j in A0} (max(s_ij, 0) / (2 ||u_i - u_j||))^2 <= P_i`` for the ``k_lb``
  same-class points ``A0`` of smallest ``h``, computed for every candidate at once.  Candidates are visited in
  increasing ``LB_i``; the scan stops when ``LB_i >= best`` (every later candidate is no better).

* Constraint generation (exactness).  ``P_i`` is solved on a working set ``A`` (starting from ``A0``) by the exact
  projection :func:`advrep.abstain.qp.project_polyhedron`; the solution ``t_A`` is checked against EVERY constraint
  of ``S`` with one matrix-vector product.  If none is violated, ``t_A`` is feasible for the full program and optimal
  for a relaxation of it, hence optimal: ``P_i = h_i^2 + ||t_A - u_i||^2``.  Otherwise the most violated constraints
  join ``A`` and the projection is repeated (finitely many rounds: ``A`` only grows).  Since every working-set value
  is a lower bound, a candidate is abandoned as soon as it reaches ``best``; an empty working-set polyhedron proves
  ``C_i`` empty.

Ties go to the adversary as in the definition: cells are closed (``<=``), a duplicate same-class point gives the
vacuous ``0 . t <= 0``.  Violation is measured as a distance in ``t`` (constraint rows normalised) against the same
relative tolerance as the projection (``tol * (1 + max|u_i| + max|h_A|)``).
"""

from __future__ import annotations

import math

import numpy as np

from .qp import project_polyhedron

TOL = 1e-10  # the projection's default tolerance (qp.project_polyhedron)


def half_space_bounds2(u_c, h2_c, u_a, h2_a, *, block_elems: int = 16384) -> np.ndarray:
    """Lemma 6: squared lower bounds ``LB_i`` of candidates ``c`` (rows) from the constraint points ``a``.

    ``u_c`` (C, n3), ``h2_c`` (C,), ``u_a`` (A, n3), ``h2_a`` (A,).  Returns (C,); one constraint that alone is
    infeasible (``u_i = u_j``, ``s_ij > 0``) gives a huge or infinite bound.  ``||u_i - u_j||^2`` comes from one
    matrix product; to stay a bound under rounding, ``s_ij`` is lowered and ``||u_i - u_j||^2`` raised by
    ``1e-12 (||u_i||^2 + ||u_j||^2 + h_i^2 + h_j^2)`` (far above the ~1e-15 relative error of the expansion).
    """
    out = h2_c.astype(np.float64, copy=True)
    if len(u_a) == 0:
        return out
    cc = (u_c * u_c).sum(1)
    aa = (u_a * u_a).sum(1)
    block = max(1, block_elems // len(u_a))
    for r0 in range(0, len(u_c), block):  # cache-sized blocks: no page-faulting of large temporaries
        sl = slice(r0, r0 + block)
        dd = cc[sl, None] + aa[None, :] - 2.0 * (u_c[sl] @ u_a.T)
        slack = 1e-12 * ((cc[sl] + h2_c[sl])[:, None] + (aa + h2_a)[None, :])
        s = h2_c[sl, None] - h2_a[None, :] - dd - slack
        np.maximum(s, 0.0, out=s)
        np.maximum(dd, 0.0, out=dd)
        dd += slack
        s *= s
        with np.errstate(divide="ignore"):  # s > 0 = dd: one constraint alone is infeasible (inf)
            out[sl] += np.divide(s, 4.0 * dd, out=np.zeros_like(s), where=s > 0).max(1)
    return out


def candidate_value2(ui, qi, h2i, uS, qS, work, bound2, *, add: int = 8, tol: float = TOL,
                     stats: dict | None = None) -> float:
    """``P_i`` by constraint generation, or any value ``>= bound2`` once the candidate provably cannot beat it.

    ``ui, qi, h2i``: the candidate; ``uS`` (|S|, n3), ``qS``: every constraint point (same class); ``work``: bool
    mask over ``S``, the starting working set (modified in place).
    """
    Gs = 2.0 * (uS - ui)  # (|S|, n3) every constraint row
    hs = qS - qi
    norms = np.sqrt((Gs * Gs).sum(1))
    while True:
        if stats is not None:
            stats["qp_solves"] = stats.get("qp_solves", 0) + 1
        Ga, ha = Gs[work], hs[work]
        t = project_polyhedron(ui, Ga, ha, tol=tol)
        if t is None:
            return math.inf  # the working-set polyhedron is empty, so is C_i
        d = t - ui
        v2 = float(h2i + d @ d)
        if v2 >= bound2:
            return v2  # a lower bound already no better than the incumbent
        with np.errstate(divide="ignore", invalid="ignore"):
            viol = np.where(norms > 0, (Gs @ t - hs) / norms, np.where(hs < 0, np.inf, -np.inf))
        an = norms[work]
        scale = 1.0 + float(np.abs(ui).max(initial=0.0)) + float(np.abs(ha[an > 0] / an[an > 0]).max(initial=0.0))
        viol[work] = -np.inf
        bad = np.flatnonzero(viol > tol * scale)
        if len(bad) == 0:
            return v2
        if len(bad) > add:
            bad = bad[np.argpartition(-viol[bad], add - 1)[:add]]
        work[bad] = True


def point_tau2(u, q, h2, same, best2: float = math.inf, *, tiers=(16, 256), seed_visits: int = 4, add: int = 8,
               stats: dict | None = None) -> float:
    """Exact ``tau*^2`` of one test point (``inf``: no wrong-class cell meets the subspace), at most ``best2``.

    ``u`` (N, n3), ``q``, ``h2`` (N,), ``same`` (N,) bool: training point of the test point's class.
    ``best2``: an upper bound already known (e.g. the natural point's ``d_nn^2``); the result is ``min(best2, tau*^2)``.
    ``tiers``: Lemma 6 bounds from the ``k`` same-class points of smallest ``h``, for growing ``k``: the first for every
    candidate, each next one only for the candidates still below the incumbent (found by solving the ``seed_visits``
    lowest first-tier candidates).  The first tier's points are every program's starting working set.
    """
    S = np.flatnonzero(same)
    C = np.flatnonzero(~same)
    if len(C) == 0:
        return best2
    if len(S) == 0:
        return min(best2, float(h2[C].min()))  # no constraint: the foot of the nearest wrong point
    uS, qS, h2S = u[S], q[S], h2[S]
    by_h = np.argsort(h2S, kind="stable")[:max(tiers)]
    a0 = by_h[:tiers[0]]
    uC, qC, h2C = u[C], q[C], h2[C]
    lb = half_space_bounds2(uC, h2C, uS[a0], h2S[a0])
    visited = 0
    done = np.zeros(len(C), dtype=bool)

    def visit(n):
        nonlocal best2, visited
        visited += 1
        done[n] = True
        work = np.zeros(len(S), dtype=bool)
        work[a0] = True
        v2 = candidate_value2(uC[n], qC[n], h2C[n], uS, qS, work, best2, add=add, stats=stats)
        best2 = min(best2, v2)

    live = np.flatnonzero(lb < best2)
    for n in live[np.argsort(lb[live], kind="stable")[:seed_visits]]:
        if lb[n] < best2:
            visit(n)
    for k in tiers[1:]:
        live = live[(lb[live] < best2) & ~done[live]]
        if len(live) == 0:
            break
        a = by_h[:k]
        lb[live] = np.maximum(lb[live], half_space_bounds2(uC[live], h2C[live], uS[a], h2S[a]))
    live = live[(lb[live] < best2) & ~done[live]]
    for n in live[np.argsort(lb[live], kind="stable")]:
        if not lb[n] < best2:
            break
        visit(n)
    if stats is not None:
        stats["visited"] = stats.get("visited", 0) + visited
    return best2
