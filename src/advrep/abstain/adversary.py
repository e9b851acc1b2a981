"""The exact random-subspace adversary against Algorithm 1 (paper Section 2 threat model L43, robust error L65/L85,
"exact computation of adversarial examples using a convex optimization program in n3 dimensions and m constraints"
L111).

Definitions.  Test point ``x = F(x)`` with label ``y``, orthonormal basis ``B`` (d x n3) of its random subspace ``S``,
kept training points ``x_k`` with labels ``y_k``.  Algorithm 1 with threshold ``tau`` is fooled iff some
``e in x + S`` has a wrong-class nearest training point at distance ``< tau`` (ties in the nearest point are broken
against the defender).  With ``Vor(x_i)`` the closed Voronoi cell of ``x_i`` among ALL kept training points,

    tau*(x, S) = min_{i : y_i != y}  min { ||e - x_i|| : e in (x + S) ∩ Vor(x_i) }          (program P_i)

and the adversary wins at threshold ``tau`` iff ``tau*(x, S) < tau``; one exact pass therefore gives ``E_adv(tau)``
for every ``tau``.  ``tau* = inf`` when no wrong-class cell meets ``x + S`` (the adversary never wins).

Subspace coordinates (Lemma 0).  Put ``u_k = B^T (x_k - x)`` (R^n3), ``q_k = ||x_k - x||^2``,
``h_k^2 = q_k - ||u_k||^2``
(``h_k`` = distance from ``x_k`` to the affine subspace).  For ``e = x + B t``:
``||e - x_k||^2 = ||t - u_k||^2 + h_k^2``, so the cell constraint ``||e - x_i||^2 <= ||e - x_j||^2`` is the LINEAR
constraint ``2 (u_j - u_i) . t <= q_j - q_i`` and ``P_i`` is ``h_i^2 + dist(u_i, {t : those constraints})^2``
(a projection onto a polyhedron in ``R^n3``).  For ``n3 = 1`` (``u_k = a_k`` scalars) each constraint is a half-line,
their intersection is an interval ``[lo_i, hi_i]`` and the minimiser is ``clip(a_i, lo_i, hi_i)``.

Exact pruning (each lemma is exercised by a test against the unpruned program):

* Lemma 1 (same-class constraints suffice).  Replacing ``Vor(x_i)`` by the larger cell ``C_i`` cut out only by the
  points of the test point's own class ``y`` leaves ``tau*`` unchanged.  Proof: ``C_i ⊇ Vor(x_i)`` gives ``<=``.
  Conversely let ``e`` attain the relaxed optimum ``r = ||e - x_i||`` and let ``x_k`` be the wrong-class point nearest
  to ``e``: ``||e - x_k|| <= r`` and every same-class ``x_j`` has ``||e - x_j|| >= r``, so ``x_k`` is a nearest point of
  ``e`` overall, ``e in Vor(x_k)``, and ``tau* <= ||e - x_k|| <= r``.

* Lemma 2 (candidate lower bound).  ``P_i >= h_i``; candidates are visited in increasing ``h_i`` and the scan stops
  once ``h_i >= best``.

* Lemma 3 (constraint pruning by a bound ``U``).  Let ``P_i^U`` keep only the constraints with ``h_j < U``.  If
  ``P_i^U < U`` then ``P_i^U = P_i``; otherwise ``P_i >= U``.  Proof: dropping constraints can only lower the value;
  if the relaxed minimiser ``e`` has ``||e - x_i|| < U`` then every dropped ``j`` has ``||e - x_j|| >= h_j >= U >
  ||e - x_i||``, so ``e`` is feasible for ``P_i``.  We use ``U = min(best, V)``.

* Lemma 4 (level restriction).  Let ``P ⊇ {k : h_k < V}`` and ``r_P`` the value of the problem on ``P`` only (its
  wrong-class candidates, its same-class constraints).  If ``r_P < V`` then ``r_P = tau*``; if ``r_P >= V`` then
  ``tau* >= V``.  Proof: (i) at the minimiser ``e`` of ``r_P`` (candidate ``i``), points outside ``P`` are at distance
  ``>= h_k >= V > r_P`` and same-class points in ``P`` at ``>= r_P``, so ``e`` is feasible for candidate ``i``'s full
  program: ``tau* <= r_P``.  (ii) if ``tau* < V`` its candidate ``i*`` has ``h_{i*} <= tau* < V`` so ``i* in P``, and
  its minimiser satisfies every constraint, in particular those in ``P``: ``r_P <= tau*``.  Combine (i) and (ii).
  ``P`` is taken as the ``K`` points of smallest computed ``h`` and ``V^2`` as the next computed ``h^2`` minus a
  rounding margin; ``K`` grows (x4) until ``r_P < V`` or ``P`` is everything (then ``V = inf``).

* Lemma 5 (n3 = 1, lifting).  On a line the Voronoi diagram of all training points is read off the lower convex
  hull of the lifted points ``(a_k, q_k)`` (see :func:`line_lower_hull`), so ``tau*`` for one test point costs one
  ``O(N log N)`` hull instead of one program per candidate.  The ``h``-bounds of Lemmas 2-4 are weak in 512-d when
  features concentrate (``tau*`` can be many times every ``h_k``, so nothing is pruned); the hull does not depend on
  them.

* Natural point.  ``t = 0`` (``e = x``) is feasible for the cell of ``x``'s nearest training point, so when that point
  is of a wrong class ``tau* <= d_nn(x)``; we apply this bound explicitly, which makes ``E_adv >= E_nat`` hold
  bit-for-bit (L109: "the robust error is always at least as large as the natural error").

Arithmetic.  ``q`` and ``u`` come from float64 matrix products on centred features (error ~1e-13 relative, far
below the margin ``MARGIN_REL`` used in Lemma 4).  ``B`` is orthonormal to ~1e-15.

The fast ``n3 = 1`` path (:func:`tau_star`): the ``N``-wide float64 products are formed for ``chunk`` test points at a
time (memory ``O(chunk * N)``); a batched torch first level solves the problem on the ``k0`` points of smallest
``h`` with the closed-form intervals and certifies it by Lemma 4; every test point not certified goes through the
exact lifted hull (Lemma 5) -- or, with ``line_method="scan"``, through growing level sets with the Lemma 2/3
candidate scan.  General ``n3`` (default ``solver="cutting_plane"``, :mod:`advrep.abstain.cutting`) visits the
candidates in increasing half-space lower bound (Lemma 6) and solves each by constraint generation: a projection on a
few constraints, checked against all of them with one product; ``solver="active_set"`` is the previous exact path, the
level-set scan with one projection per visited candidate on every level constraint
(:func:`advrep.abstain.qp.project_polyhedron`, or cvxpy): the benchmark's peer and a test reference.
Chunks shrink so that one block of ``q, u, h2`` and products holds at most ``MAX_CHUNK_DOUBLES`` doubles.
:func:`tau_star_naive` is the definition itself (every
wrong-class candidate, every other point as a constraint): the baseline and the test reference.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .cutting import point_tau2
from .qp import candidate_value_cvxpy, polyhedron_value2
from .subspace import random_subspaces

SOLVERS = ("cutting_plane", "active_set", "cvxpy")  # n3 >= 2
MAX_CHUNK_DOUBLES = 2 ** 26  # q, u, h2 and the product of one chunk: at most ~512 MiB (chunk shrinks with N, n3)
MARGIN_REL = 1e-9  # rounding margin on h^2, relative to (max ||x_k - c||^2 + ||x - c||^2), c = training mean


@dataclass
class AttackResult:
    """Per test point: ``tau_star`` (inf = never wins), natural nearest distance/label, and run statistics."""

    tau_star: np.ndarray
    d_nn: np.ndarray
    nn_label: np.ndarray
    test_labels: np.ndarray
    n_train: int
    n3: int
    stats: dict = field(default_factory=dict)

    def wins(self, tau: float) -> np.ndarray:
        """Adversary wins against Algorithm 1 at threshold ``tau``: ``tau* < tau``."""
        return self.tau_star < tau

    def rates(self, tau: float) -> dict[str, float]:
        """``E_nat``, ``E_adv``, ``D_nat`` (fractions) at threshold ``tau`` (L85, L109)."""
        answered = self.d_nn < tau
        wrong = self.nn_label != self.test_labels
        return {"E_nat": float(np.mean(answered & wrong)), "E_adv": float(np.mean(self.wins(tau))),
                "D_nat": float(np.mean(~answered))}

    def subset(self, idx) -> "AttackResult":
        return AttackResult(self.tau_star[idx], self.d_nn[idx], self.nn_label[idx], self.test_labels[idx],
                            self.n_train, self.n3, dict(self.stats))


# ----------------------------------------------------------------------------------------------------- n3 = 1 kernel
def line_values2(a_c, q_c, h2_c, a_s, q_s) -> np.ndarray:
    """Squared values of the line programs ``P_i`` (n3 = 1) for candidates ``c`` against constraint points ``s``.

    Constraint ``j`` on ``e(t) = x + t b``: ``2 (a_j - a_i) t <= q_j - q_i``; upper bound if ``a_j > a_i``, lower bound
    if ``a_j < a_i``, and ``q_i <= q_j`` if ``a_j == a_i``.  Value ``h_i^2 + (clip(a_i, lo, hi) - a_i)^2`` or ``inf``.
    Works on numpy arrays with any leading batch shape of ``a_c`` (..., C) and ``a_s`` (..., S).
    """
    da = a_s[..., None, :] - a_c[..., :, None]
    dq = q_s[..., None, :] - q_c[..., :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = dq / (2.0 * da)
    hi = np.where(da > 0, bound, np.inf).min(-1, initial=np.inf)
    lo = np.where(da < 0, bound, -np.inf).max(-1, initial=-np.inf)
    bad = ((da == 0) & (dq < 0)).any(-1)
    feas = (lo <= hi) & ~bad
    tc = np.clip(a_c, lo, np.maximum(lo, hi))
    return np.where(feas, h2_c + (tc - a_c) ** 2, np.inf)


def _line_values2_torch(a_c, q_c, h2_c, cmask, a_s, q_s, smask):
    """Batched torch version of :func:`line_values2` with masks: rows (B, K); ``cmask`` marks candidates (wrong
    class), ``smask`` constraints (same class).  Returns the min over candidates of the squared value, (B,)."""
    import torch

    inf = torch.tensor(math.inf, dtype=a_c.dtype)
    da = a_s[:, None, :] - a_c[:, :, None]
    dq = q_s[:, None, :] - q_c[:, :, None]
    bound = dq / (2.0 * da)
    sm = smask[:, None, :]
    hi = torch.where(sm & (da > 0), bound, inf).amin(-1)
    lo = torch.where(sm & (da < 0), bound, -inf).amax(-1)
    bad = (sm & (da == 0) & (dq < 0)).any(-1)
    feas = (lo <= hi) & ~bad & cmask
    tc = torch.minimum(torch.maximum(a_c, lo), torch.maximum(lo, hi))
    v2 = torch.where(feas, h2_c + (tc - a_c) ** 2, inf)
    return v2.amin(-1)


# ------------------------------------------------------------------------------- n3 = 1: Voronoi diagram on the line
def _below_polyline(a: np.ndarray, q: np.ndarray, levels: int = 6) -> np.ndarray:
    """Indices of the points on or below a quickhull polyline through points of the set (the rest are provably not
    lower-hull vertices: each lies strictly above a chord between two points of the set whose ``a`` range covers it).

    Pivots start as {min a, min q, max a}; each level adds, per polyline segment, the point deepest below it.
    """
    idx = np.arange(len(a))
    piv = np.unique(np.r_[np.argmin(a), np.argmin(q), np.argmax(a)])
    for _ in range(levels):
        pa, pq = a[piv], q[piv]
        order = np.argsort(pa, kind="stable")
        pa, pq, piv = pa[order], pq[order], piv[order]
        if len(piv) < 2 or pa[0] == pa[-1]:
            break
        aa, qq = a[idx], q[idx]
        seg = np.clip(np.searchsorted(pa, aa, side="right") - 1, 0, len(pa) - 2)
        width = pa[seg + 1] - pa[seg]
        with np.errstate(divide="ignore", invalid="ignore"):
            chord = pq[seg] + (pq[seg + 1] - pq[seg]) * np.where(width > 0, (aa - pa[seg]) / width, 0.0)
        depth = qq - chord
        depth[aa == pa[seg + 1]] = (qq - pq[seg + 1])[aa == pa[seg + 1]]  # exact at the right end (no rounding)
        keep = depth <= 0
        idx, depth, seg = idx[keep], depth[keep], seg[keep]
        if len(idx) <= 64:
            break
        # deepest point of every segment becomes a pivot
        o = np.lexsort((depth, seg))
        firsts = o[np.r_[True, seg[o][1:] != seg[o][:-1]]]
        new = idx[firsts[depth[firsts] < 0]]
        if len(new) == 0:
            break
        piv = np.unique(np.r_[piv, new])
    return idx


def _lower_hull(a: np.ndarray, q: np.ndarray, wrong: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower-hull vertices of the lifted points (see :func:`line_lower_hull`) as ``(indices, wrong_any)``.

    Exact duplicates ``(a, q)`` collapse onto one representative whose flag is True if ANY duplicate is wrong-class
    (the duplicates tie everywhere on the line; ties go to the adversary).
    """
    sub = _below_polyline(a, q)
    o = sub[np.lexsort((q[sub], a[sub]))]
    a_s, q_s, w_s = a[o], q[o], wrong[o]
    new_a = np.r_[True, a_s[1:] != a_s[:-1]]
    # after sorting by (a, q) the first point of an a-group has the lowest q; later ones with equal q are duplicates
    start = np.maximum.accumulate(np.where(new_a, np.arange(len(o)), 0))
    lowest = q_s == q_s[start]
    grp = np.cumsum(new_a) - 1
    w_any = np.zeros(int(grp[-1]) + 1 if len(grp) else 0, dtype=bool)
    np.logical_or.at(w_any, grp[lowest], w_s[lowest])
    idx = np.flatnonzero(new_a)  # one representative per distinct a: the strict chord test below is well defined
    while len(idx) >= 3:
        x0, x1, x2 = a_s[idx[:-2]], a_s[idx[1:-1]], a_s[idx[2:]]
        y0, y1, y2 = q_s[idx[:-2]], q_s[idx[1:-1]], q_s[idx[2:]]
        above = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0) < 0
        if not above.any():
            break
        keep = np.ones(len(idx), dtype=bool)
        keep[1:-1] = ~above
        idx = idx[keep]
    return o[idx], w_any[grp[idx]]


def line_lower_hull(a: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Indices of the lower convex hull of the lifted points ``(a_k, q_k)``, in increasing ``a`` (one index per
    distinct point).

    Lifting (Lemma 5).  On the line ``e(t) = x + t b``: ``||e - x_k||^2 = t^2 + (q_k - 2 a_k t)``, so the nearest
    training point at ``t`` minimises the linear function ``q_k - 2 t a_k``, i.e. it is the vertex of the lower convex
    hull of ``{(a_k, q_k)}`` supporting slope ``2t``.  Hull vertex ``l`` (of ``L``) owns exactly the interval
    ``[beta_{l-1}, beta_l]`` with ``beta_l = (q_{l+1} - q_l) / (2 (a_{l+1} - a_l))`` (half the hull edge slopes,
    increasing by convexity; ``beta_{-1} = -inf``, ``beta_{L-1} = +inf``); a point strictly above the hull owns
    nothing.  A point lying exactly on a hull edge owns the single breakpoint where it ties with the edge's endpoints:
    it is kept in the returned chain (the chord test deletes only points strictly above), with a zero-length
    interval, so a wrong-class point there wins the tie (ties go to the adversary).  This is the partition of the
    per-candidate intervals ``[lo_i, hi_i]`` of :func:`line_values2`, computed for all candidates at once in
    ``O(N log N)``.

    Construction: discard points above a quickhull polyline (:func:`_below_polyline`), sort by ``(a, q)``, keep one
    lowest-``q`` point per distinct ``a`` (exact duplicates collapse; they would shield each other from the chord
    test), then repeatedly delete every point lying strictly above the chord of its current neighbours (a point above
    a chord of two points of the set is never on the lower hull, so deleting all of them at once is safe); when no
    point is deleted the chain is locally, hence globally, convex.
    """
    return _lower_hull(a, q, np.zeros(len(a), dtype=bool))[0]


def line_tau_star2(a: np.ndarray, q: np.ndarray, wrong: np.ndarray) -> float:
    """Exact ``tau*^2`` on a line from the lifted lower hull (:func:`line_lower_hull`), all points at once.

    ``a``: projections on the direction, ``q``: squared distances to ``x``, ``wrong``: wrong-class mask.
    A wrong-class vertex ``l`` contributes ``h_l^2 + (clip(a_l, beta_{l-1}, beta_l) - a_l)^2``.
    """
    v, w = _lower_hull(a, q, wrong)
    av, qv = a[v], q[v]
    h2 = np.maximum(qv - av * av, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = np.diff(qv) / (2.0 * np.diff(av))
    lo = np.r_[-np.inf, beta]
    hi = np.r_[beta, np.inf]
    best = math.inf
    if w.any():
        tc = np.clip(av, lo, np.maximum(lo, hi))
        best = float((h2 + (tc - av) ** 2)[w].min())
    return best


# ------------------------------------------------------------------------------------------- per-point exact scan
def _values2_general(u, q, h2, cand, cons, solver: str, x=None, B=None, X=None):
    """Squared ``P_i`` values (constraints ``cons``) for each candidate in ``cand`` (general n3)."""
    out = np.empty(len(cand))
    for n, i in enumerate(cand):
        if solver == "cvxpy":
            v = candidate_value_cvxpy(x, B, X[i], X[cons])
            out[n] = v * v
        else:
            G = 2.0 * (u[cons] - u[i])
            hh = q[cons] - q[i]
            out[n] = h2[i] + polyhedron_value2(u[i], G, hh)
    return out


def _scan_level(u, q, h2, same, P_sorted, V2, *, solver, budget=4_000_000, x=None, B=None, X=None):
    """Best squared value on the level set ``P_sorted`` (indices in increasing ``h2``), Lemmas 1-3 applied.

    Returns ``(best2, n_candidates_visited)``; ``best2 < V2`` certifies ``tau*^2 = best2`` (Lemma 4).
    """
    inP_same = same[P_sorted]
    cand = P_sorted[~inP_same]
    cons = P_sorted[inP_same]
    cons_h2 = h2[cons]
    best2 = math.inf
    visited = 0
    start = 0
    n1 = u.ndim == 1
    while start < len(cand):
        U2 = min(best2, V2)
        ncons = int(np.searchsorted(cons_h2, U2, side="left"))  # constraints with h_j^2 < U^2 (Lemma 3)
        chunk = max(1, budget // max(ncons, 1)) if n1 else 1
        c = cand[start:start + chunk]
        c = c[h2[c] < U2]  # Lemma 2 (and Lemma 4: h_i >= V cannot give a certified value)
        if len(c) == 0:
            break
        sel = cons[:ncons]
        if n1:
            v2 = line_values2(u[c], q[c], h2[c], u[sel], q[sel])
        else:
            v2 = _values2_general(u, q, h2, c, sel, solver, x=x, B=B, X=X)
        visited += len(c)
        best2 = min(best2, float(v2.min()))
        start += chunk
    return best2, visited


def _solve_point(u, q, h2, same, margin2, *, k_start, solver, order=None, x=None, B=None, X=None):
    """Exact ``tau*^2`` for one test point by growing level sets (Lemma 4).  Returns ``(tau2, levels, visited)``."""
    N = len(q)
    if order is None:
        order = np.argsort(h2, kind="stable")
    K = min(max(k_start, 1), N)
    levels = visited = 0
    while True:
        levels += 1
        V2 = math.inf if K >= N else float(h2[order[K]]) - margin2
        best2, vis = _scan_level(u, q, h2, same, order[:K], V2, solver=solver, x=x, B=B, X=X)
        visited += vis
        if best2 < V2 or K >= N:
            return (best2 if best2 < V2 else math.inf), levels, visited
        K = min(4 * K, N)


# -------------------------------------------------------------------------------------------------- public API
def _prepare(train_feats, train_labels, test_feats, test_labels, subspaces, n3, seed):
    X = np.asarray(train_feats, dtype=np.float64)
    T = np.asarray(test_feats, dtype=np.float64)
    centre = X.mean(0) if len(X) else np.zeros(T.shape[1])
    X = np.ascontiguousarray(X - centre)
    T = np.ascontiguousarray(T - centre)
    yl = np.asarray(train_labels)
    ty = np.asarray(test_labels)
    if subspaces is None:
        subspaces = random_subspaces(len(T), T.shape[1], n3, seed)
    Bs = np.asarray(subspaces, dtype=np.float64)
    if Bs.ndim == 2:
        Bs = Bs[:, :, None]
    if Bs.shape[:2] != T.shape:
        raise ValueError(f"subspaces shape {Bs.shape} does not match test features {T.shape}")
    return X, yl, T, ty, Bs


def _rows(X, xx, T, Bs, r0, r1):
    """Float64 ``q`` (B, N), ``u`` (B, N, n3), ``h2`` (B, N) for test points ``r0:r1``."""
    t = T[r0:r1]
    Bc = Bs[r0:r1]
    nb, d, n3 = Bc.shape
    stacked = np.concatenate([t, Bc.transpose(0, 2, 1).reshape(nb * n3, d)], 0)
    prod = stacked @ X.T
    tt = (t * t).sum(1)
    q = np.maximum(tt[:, None] + xx[None, :] - 2.0 * prod[:nb], 0.0)
    bx = np.einsum("bdk,bd->bk", Bc, t)
    u = prod[nb:].reshape(nb, n3, -1).transpose(0, 2, 1) - bx[:, None, :]
    h2 = np.maximum(q - (u * u).sum(-1), 0.0)
    return q, u, h2, tt


def _solve_chunk(q, u, h2, tt, yl, ty, X, Bs, T, out, r0, *, k0, solver, line_method, margin_scale):
    """Exact ``tau*^2``, ``d_nn`` and ``nn_label`` for the test points ``r0 : r0 + len(q)`` into ``out`` (dict)."""
    import torch

    nb, N = q.shape
    n3 = u.shape[2]
    st = out["stats"]
    rows = np.arange(nb)
    sl_out = slice(r0, r0 + nb)
    if N == 0:
        return
    margin2 = MARGIN_REL * (margin_scale + tt)
    nn = q.argmin(1)
    d_nn = np.sqrt(q[rows, nn])
    nn_label = yl[nn]
    same = yl[None, :] == ty[:, None]
    tau2 = np.full(nb, math.inf)
    done = np.zeros(nb, dtype=bool)
    if n3 == 1 and 0 < k0 < N:
        # Level 1 for the whole chunk at once (Lemma 4 with P = the k0 smallest h).
        vals, idx = torch.topk(torch.from_numpy(h2), k0 + 1, dim=1, largest=False, sorted=True)
        V2 = vals[:, k0].numpy() - margin2
        P = idx[:, :k0]
        aP = torch.from_numpy(np.ascontiguousarray(u[:, :, 0])).gather(1, P)
        qP = torch.from_numpy(q).gather(1, P)
        sP = torch.from_numpy(same).gather(1, P)
        h2P = vals[:, :k0]
        best = np.empty(nb)
        sub = max(1, 2_000_000 // (k0 * k0))
        for s0 in range(0, nb, sub):
            sl = slice(s0, s0 + sub)
            best[sl] = _line_values2_torch(aP[sl], qP[sl], h2P[sl], ~sP[sl], aP[sl], qP[sl], sP[sl]).numpy()
        done = best < V2
        tau2[done] = best[done]
        st["certified_level1"] += int(done.sum())
    wrong_nn = nn_label != ty
    for r in np.flatnonzero(~done):
        if n3 > 1 and solver == "cutting_plane":
            # bound-ordered candidates + constraint generation (advrep.abstain.cutting), seeded with the natural point
            tau2[r] = point_tau2(u[r], q[r], h2[r], same[r], float(q[r, nn[r]]) if wrong_nn[r] else math.inf,
                                 stats=st)
            continue
        if n3 == 1 and line_method == "hull":
            tau2[r] = line_tau_star2(u[r, :, 0], q[r], ~same[r])
            st["hull_rows"] += 1
            continue
        uu = u[r, :, 0] if n3 == 1 else u[r]
        v, lev, vis = _solve_point(uu, q[r], h2[r], same[r], float(margin2[r]), k_start=4 * max(k0, 1),
                                   solver=solver, x=T[r0 + r], B=Bs[r0 + r], X=X)
        tau2[r] = v
        st["levels"] += lev
        st["visited"] += vis
    # Natural point bound (module docstring): x itself is misclassified by its nearest point.
    tau2[wrong_nn] = np.minimum(tau2[wrong_nn], d_nn[wrong_nn] ** 2)
    out["tau2"][sl_out] = tau2
    out["d_nn"][sl_out] = d_nn
    out["nn_label"][sl_out] = nn_label


def tau_star_multi(train_feats, train_labels, test_feats, test_labels, keeps, *, n3: int = 1, seed: int = 0,
                   subspaces: np.ndarray | None = None, k0: int = 128, chunk: int = 256,
                   solver: str = "cutting_plane", line_method: str = "hull", threads: int | None = None,
                   progress: bool = False) -> list[AttackResult]:
    """:func:`tau_star` for several kept subsets of one training set (e.g. Algorithm 1's preprocessing at several
    sigma) with the same subspaces: the ``N``-wide products are formed once per chunk and sliced per subset.

    ``keeps``: list of boolean masks over the training points (``None`` = all).  Returns one result per mask.
    """
    import torch

    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    X, yl, T, ty, Bs = _prepare(train_feats, train_labels, test_feats, test_labels, subspaces, n3, seed)
    n3 = Bs.shape[2]
    M = len(T)
    cols = [np.arange(len(X)) if k is None else np.flatnonzero(np.asarray(k, dtype=bool)) for k in keeps]
    outs = [{"tau2": np.full(M, math.inf), "d_nn": np.full(M, math.inf), "nn_label": np.full(M, -1, dtype=np.int64),
             "stats": {"certified_level1": 0, "hull_rows": 0, "levels": 0, "visited": 0, "qp_solves": 0}}
             for _ in cols]
    if len(X):
        xx = (X * X).sum(1)
        max_xx = float(xx.max())
        chunk = max(1, min(chunk, MAX_CHUNK_DOUBLES // (len(X) * (2 * n3 + 3))))
        for r0 in range(0, M, chunk):
            r1 = min(M, r0 + chunk)
            q, u, h2, tt = _rows(X, xx, T, Bs, r0, r1)
            for c, out in zip(cols, outs):
                whole = len(c) == len(X)
                qc, uc, h2c = (q, u, h2) if whole else (q[:, c], u[:, c], h2[:, c])
                _solve_chunk(qc, uc, h2c, tt, yl[c], ty[r0:r1], X[c], Bs, T, out, r0, k0=k0, solver=solver,
                             line_method=line_method, margin_scale=max_xx)
            if progress:
                print(f"  tau_star: {r1}/{M} test points, {time.perf_counter() - t0:.1f} s", flush=True)
    res = []
    for c, out in zip(cols, outs):
        out["stats"]["seconds"] = time.perf_counter() - t0
        res.append(AttackResult(np.sqrt(out["tau2"]), out["d_nn"], out["nn_label"], ty, len(c), n3, out["stats"]))
    return res


def tau_star(train_feats, train_labels, test_feats, test_labels, *, n3: int = 1, seed: int = 0,
             subspaces: np.ndarray | None = None, k0: int = 128, chunk: int = 256, solver: str = "cutting_plane",
             line_method: str = "hull", threads: int | None = None, progress: bool = False) -> AttackResult:
    """Exact ``tau*(x, S)`` for every test point (see module docstring), plus the natural nearest neighbour.

    ``subspaces``: (M, d, n3) orthonormal bases; drawn by :func:`random_subspaces` from ``seed`` when omitted.
    ``k0``: size of the batched first level (n3 = 1; 0 disables it).  ``chunk``: test points per block of products.
    ``solver`` (n3 >= 2 only): ``"cutting_plane"`` (bound-ordered candidates, constraint generation:
    :mod:`advrep.abstain.cutting`), ``"active_set"`` (the h-ordered level-set scan, one Goldfarb-Idnani projection
    with every level constraint per visited candidate) or ``"cvxpy"`` (that scan with CLARABEL).
    ``line_method`` (n3 = 1, test points not certified by the batched first level): ``"hull"`` (Lemma 5, all points
    at once) or ``"scan"`` (growing level sets with the Lemma 2/3 candidate scan).
    """
    return tau_star_multi(train_feats, train_labels, test_feats, test_labels, [None], n3=n3, seed=seed,
                          subspaces=subspaces, k0=k0, chunk=chunk, solver=solver, line_method=line_method,
                          threads=threads, progress=progress)[0]


def tau_star_naive(train_feats, train_labels, test_feats, test_labels, *, n3: int = 1, seed: int = 0,
                   subspaces: np.ndarray | None = None, solver: str = "closed_form",
                   budget: int = 8_000_000) -> np.ndarray:
    """The definition, unpruned: for every wrong-class candidate ``i`` solve ``P_i`` with EVERY other kept training
    point as a Voronoi constraint (all classes), and take the minimum.  One program per candidate.

    ``solver``: ``"closed_form"`` (n3 = 1 interval formula, vectorised over constraints), ``"active_set"`` or
    ``"cvxpy"`` (original coordinates, CLARABEL).  Returns ``tau*`` per test point (no natural-point shortcut).
    """
    X, yl, T, ty, Bs = _prepare(train_feats, train_labels, test_feats, test_labels, subspaces, n3, seed)
    n3 = Bs.shape[2]
    N = len(X)
    out = np.full(len(T), math.inf)
    if N == 0:
        return out
    xx = (X * X).sum(1)
    for r in range(len(T)):
        q, u, h2, _ = _rows(X, xx, T, Bs, r, r + 1)
        q, u, h2 = q[0], u[0], h2[0]
        cand = np.flatnonzero(yl != ty[r])
        best2 = math.inf
        if solver == "closed_form":
            if n3 != 1:
                raise ValueError("closed_form needs n3 = 1")
            a = u[:, 0]
            step = max(1, budget // N)
            for s in range(0, len(cand), step):
                c = cand[s:s + step]
                # all points as constraints; j = i contributes the vacuous 0 <= 0
                v2 = line_values2(a[c], q[c], h2[c], a, q)
                best2 = min(best2, float(v2.min()))
        else:
            for i in cand:
                others = np.delete(np.arange(N), i)
                if solver == "cvxpy":
                    v = candidate_value_cvxpy(T[r], Bs[r], X[i], X[others])
                    v2 = v * v
                else:
                    v2 = h2[i] + polyhedron_value2(u[i], 2.0 * (u[others] - u[i]), q[others] - q[i])
                best2 = min(best2, v2)
        out[r] = math.sqrt(best2)
    return out


def candidate_values(train_feats, train_labels, x, y, B, *, solver: str = "closed_form",
                     same_class_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Value of ``P_i`` for EVERY wrong-class candidate of one test point (diagnostics and tests).

    Returns ``(candidate indices, values)``; constraints are all other points, or only the test point's own class
    with ``same_class_only`` (Lemma 1's relaxed cells ``C_i``).
    """
    X, yl, T, ty, Bs = _prepare(train_feats, train_labels, np.asarray(x)[None], np.asarray([y]),
                                np.asarray(B)[None], None, 0)
    xx = (X * X).sum(1)
    q, u, h2, _ = _rows(X, xx, T, Bs, 0, 1)
    q, u, h2 = q[0], u[0], h2[0]
    cand = np.flatnonzero(yl != y)
    vals = np.empty(len(cand))
    for n, i in enumerate(cand):
        cons = np.flatnonzero(yl == y) if same_class_only else np.delete(np.arange(len(X)), i)
        if solver == "closed_form":
            v2 = float(line_values2(u[i:i + 1, 0], q[i:i + 1], h2[i:i + 1], u[cons, 0], q[cons])[0])
        elif solver == "cvxpy":
            v = candidate_value_cvxpy(T[0], Bs[0], X[i], X[cons])
            v2 = v * v
        else:
            v2 = h2[i] + polyhedron_value2(u[i], 2.0 * (u[cons] - u[i]), q[cons] - q[i])
        vals[n] = math.sqrt(v2)
    return cand, vals
