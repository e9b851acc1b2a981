"""abstain: the cutting-plane adversary (``solver="cutting_plane"``, :mod:`advrep.abstain.cutting`) for n3 >= 2
against the previous exact solver (``solver="active_set"``), the unpruned definition and brute force (dense sampling
of the subspace, ties counted for the adversary), including empty cells, ties and training points in the subspace."""

from __future__ import annotations

import math

import numpy as np
import pytest

from advrep.abstain import adversary as adv
from advrep.abstain import preprocess, nearest_other_label_distance, random_subspaces, tau_star, tau_star_naive
from advrep.abstain.cutting import candidate_value2, half_space_bounds2, point_tau2
from advrep.abstain.qp import polyhedron_value2

from test_abstain import clustered, small_problem


def brute_tau(X, y, x, yx, B, lim, step, chunk=100_000):
    """min over the grid points ``e = x + B t`` (|t_i| <= lim) whose nearest training points include a wrong-class
    one (ties go to the adversary) of the distance to that wrong-class point."""
    n3 = B.shape[1]
    g = np.arange(-lim, lim + step / 2, step)
    coords = np.stack([c.ravel() for c in np.meshgrid(*([g] * n3), indexing="ij")], 1)
    best = math.inf
    for s in range(0, len(coords), chunk):
        E = x[None, :] + coords[s:s + chunk] @ B.T
        D = ((E[:, None, :] - X[None, :, :]) ** 2).sum(-1)
        dmin = D.min(1, keepdims=True)
        tie = D <= dmin + 1e-9 * (1 + dmin)
        wrong = tie & (y[None, :] != yx)
        if wrong.any():
            best = min(best, float(np.sqrt(np.where(wrong, D, np.inf).min())))
    return best


def rows(X, y, T, ty, B):
    Xc, yl, Tc, tyl, Bs = adv._prepare(X, y, T, ty, B, None, 0)
    q, u, h2, _ = adv._rows(Xc, (Xc * Xc).sum(1), Tc, Bs, 0, len(Tc))
    return q, u, h2, yl, tyl


# ------------------------------------------------------------------------------------- equals the previous solver
@pytest.mark.parametrize("n3", [2, 3])
def test_equals_previous_solver_and_definition_small(n3):
    X, y, T, ty = small_problem(8, n=50, m=10)
    B = random_subspaces(len(T), X.shape[1], n3, 2)
    new = tau_star(X, y, T, ty, subspaces=B, k0=4, n3=n3)
    old = tau_star(X, y, T, ty, subspaces=B, k0=4, n3=n3, solver="active_set")
    naive = tau_star_naive(X, y, T, ty, subspaces=B, solver="active_set", n3=n3)
    assert np.allclose(new.tau_star, old.tau_star, rtol=1e-9, atol=0)
    assert np.allclose(new.tau_star, np.minimum(naive, np.where(new.nn_label != ty, new.d_nn, np.inf)), rtol=1e-9)
    assert np.isfinite(new.tau_star).sum() >= 5


@pytest.mark.parametrize("n3,seed", [(2, 0), (2, 1), (3, 2), (5, 3)])
def test_equals_previous_solver_clustered_high_dim(n3, seed):
    """Concentrated 96-d features, where tau* is many times every h (the regime the h-ordered scan is slow in)."""
    X, y, T, ty = clustered(seed=seed, n=1500, m=8, d=96)
    B = random_subspaces(len(T), X.shape[1], n3, seed)
    new = tau_star(X, y, T, ty, subspaces=B, n3=n3)
    old = tau_star(X, y, T, ty, subspaces=B, n3=n3, solver="active_set")
    assert np.allclose(new.tau_star, old.tau_star, rtol=1e-9, atol=0)
    assert new.stats["visited"] < old.stats["visited"]
    h = np.sqrt(rows(X, y, T, ty, B)[2].min(1))
    assert (new.tau_star > 2 * h).all()  # the h bound (Lemma 2) is weak here, Lemma 6 is not


def test_n3_1_point_solver_equals_line_hull():
    """The cutting-plane point solver is dimension-free: at n3 = 1 it equals the lifted-hull path (Lemma 5)."""
    for seed in (0, 1, 7):
        X, y, T, ty = small_problem(seed, n=60, m=25)
        B = random_subspaces(len(T), X.shape[1], 1, seed + 10)
        res = tau_star(X, y, T, ty, subspaces=B, k0=8)
        q, u, h2, yl, tyl = rows(X, y, T, ty, B)
        for r in range(len(T)):
            nn = int(q[r].argmin())
            b2 = float(q[r, nn]) if yl[nn] != tyl[r] else math.inf
            v = math.sqrt(point_tau2(u[r], q[r], h2[r], yl == tyl[r], b2))
            assert v == res.tau_star[r] or math.isclose(v, res.tau_star[r], rel_tol=1e-9), (seed, r)


def test_multi_subset_pass_equals_separate_runs_n3_2():
    X, y, T, ty = clustered(seed=4, n=800, m=20, d=24, spread=0.6)
    near = nearest_other_label_distance(X, y)
    keeps = [None, preprocess(X, y, float(np.quantile(near, 0.5)), nearest_other=near)]
    B = random_subspaces(len(T), X.shape[1], 2, 0)
    multi = adv.tau_star_multi(X, y, T, ty, keeps, n3=2, subspaces=B, chunk=7)
    for keep, res in zip(keeps, multi):
        k = np.ones(len(X), bool) if keep is None else keep
        old = tau_star(X[k], y[k], T, ty, n3=2, subspaces=B, solver="active_set")
        assert np.allclose(res.tau_star, old.tau_star, rtol=1e-9)


# ---------------------------------------------------------------------------------------------- brute force
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plane_matches_dense_sampling(seed):
    X, y, T, ty = small_problem(seed + 20, n=30, d=4, m=3)
    B = random_subspaces(len(T), X.shape[1], 2, seed)
    res = tau_star(X, y, T, ty, subspaces=B, n3=2)
    step = 0.03
    for m in range(len(T)):
        bf = brute_tau(X, y, T[m], ty[m], B[m], lim=9.0, step=step)
        assert res.tau_star[m] <= bf + 1e-9, (m, res.tau_star[m], bf)
        assert bf <= res.tau_star[m] + step * math.sqrt(2), (m, res.tau_star[m], bf)


def test_3d_subspace_matches_dense_sampling():
    X, y, T, ty = small_problem(31, n=20, d=5, m=2, scale=1.0)
    B = random_subspaces(len(T), X.shape[1], 3, 5)
    res = tau_star(X, y, T, ty, subspaces=B, n3=3)
    step = 0.06
    for m in range(len(T)):
        bf = brute_tau(X, y, T[m], ty[m], B[m], lim=3.0, step=step)
        assert res.tau_star[m] <= bf + 1e-9, (m, res.tau_star[m], bf)
        assert bf <= res.tau_star[m] + step * math.sqrt(3), (m, res.tau_star[m], bf)


def test_ties_lattice_and_duplicates_go_to_the_adversary():
    """Integer lattice in R^3 with an axis-aligned plane through a lattice point: exact ties everywhere; plus
    duplicated training points with a different label (the twins tie on the whole plane)."""
    rng = np.random.default_rng(0)
    X = rng.integers(-2, 3, size=(25, 3)).astype(float)
    y = rng.integers(0, 3, 25)
    T = rng.integers(-2, 3, size=(4, 3)).astype(float) + 0.5 * np.array([0, 0, 1.0])
    ty = rng.integers(0, 3, 4)
    B = np.repeat(np.eye(3)[None, :, :2], 4, 0)  # x + span(e1, e2)
    res = tau_star(X, y, T, ty, subspaces=B, n3=2)
    old = tau_star(X, y, T, ty, subspaces=B, n3=2, solver="active_set")
    assert np.allclose(res.tau_star, old.tau_star, rtol=1e-9)
    step = 0.05  # the grid contains every lattice tie point (half-integers)
    for m in range(len(T)):
        bf = brute_tau(X, y, T[m], ty[m], B[m], lim=4.0, step=step)
        assert res.tau_star[m] <= bf + 1e-9 and bf <= res.tau_star[m] + step * math.sqrt(2), (m, res.tau_star[m], bf)
    X2, y2 = np.concatenate([X, X]), np.concatenate([y, (y + 1) % 3])
    res2 = tau_star(X2, y2, T, ty, subspaces=B, n3=2)
    q, u, h2, _, _ = rows(X2, y2, T, ty, B)
    assert np.allclose(res2.tau_star, np.sqrt(h2.min(1)))  # every cell shared with a wrong twin
    # a test point ON a training point of its class that has a wrong-class twin: tau* = 0 whichever twin the natural
    # nearest neighbour picks (the bound's 0/0 case: u_i = u_j = 0, h_i = h_j = 0)
    for first in (0, 1):
        Xt = np.concatenate([X[:1], X[:1], X[1:]])
        yt = np.r_[[ty[0], ty[0] + 1][first], [ty[0] + 1, ty[0]][first], y[1:]] % 3
        rt = tau_star(Xt, yt, X[:1], ty[:1] % 3, subspaces=B[:1], n3=2)
        assert rt.tau_star[0] == 0.0 and rt.d_nn[0] == 0.0


def test_training_points_in_the_subspace_and_empty_cells():
    """Some training points lie in x + S (h = 0); a wrong-class point surrounded by same-class points has an empty
    cell in S, and a test point whose class surrounds every wrong point is never beaten (tau* = inf)."""
    d = 4
    B = np.zeros((1, d, 2))
    B[0, 0, 0] = B[0, 1, 1] = 1.0
    x = np.zeros(d)
    ring = np.array([[np.cos(a), np.sin(a), 0, 0] for a in np.linspace(0, 2 * np.pi, 12, endpoint=False)]) * 3
    inside = np.array([[0.5, 0.2, 0.0, 0.0]])  # in the subspace, h = 0
    far = np.array([[0.0, 0.0, 2.0, 0.0], [2.0, 2.0, 0.0, 5.0]])  # wrong class, off the plane: empty cells there
    X = np.concatenate([ring, inside, far])
    y = np.r_[np.zeros(12, int), 1, 1, 1]
    res = tau_star(X, y, x[None], np.array([0]), subspaces=B, n3=2)
    bf = brute_tau(X, y, x, 0, B[0], lim=5.0, step=0.01)
    assert res.tau_star[0] == 0.0 and bf < 1e-9  # the in-plane wrong point is reached exactly
    # without the in-plane point: the two far points' cells
    X1, y1 = np.concatenate([ring, far]), np.r_[np.zeros(12, int), 1, 1]
    r1 = tau_star(X1, y1, x[None], np.array([0]), subspaces=B, n3=2)
    old = tau_star(X1, y1, x[None], np.array([0]), subspaces=B, n3=2, solver="active_set")
    b1 = brute_tau(X1, y1, x, 0, B[0], lim=5.0, step=0.01)
    assert math.isclose(r1.tau_star[0], old.tau_star[0], rel_tol=1e-9)
    assert r1.tau_star[0] <= b1 + 1e-9 and b1 <= r1.tau_star[0] + 0.01 * math.sqrt(2)
    # a wrong point far above the plane, walled in by same-class points between it and the plane: empty cell
    wall = np.array([[i, j, 1.0, 0.0] for i in np.linspace(-6, 6, 13) for j in np.linspace(-6, 6, 13)])
    X2 = np.concatenate([wall, ring, [[0.0, 0.0, 30.0, 0.0]]])
    y2 = np.r_[np.zeros(len(wall) + 12, int), 1]
    r2 = tau_star(X2, y2, x[None], np.array([0]), subspaces=B, n3=2)
    old2 = tau_star_naive(X2, y2, x[None], np.array([0]), subspaces=B, n3=2, solver="active_set")
    assert r2.tau_star[0] == math.inf and old2[0] == math.inf


# -------------------------------------------------------------------------------------------- the pieces
def test_half_space_bound_is_a_lower_bound_and_candidate_value_exact():
    X, y, T, ty = clustered(seed=6, n=600, m=4, d=32)
    for n3 in (2, 4):
        B = random_subspaces(len(T), X.shape[1], n3, 1)
        q, u, h2, yl, tyl = rows(X, y, T, ty, B)
        for r in range(len(T)):
            S, C = np.flatnonzero(yl == tyl[r]), np.flatnonzero(yl != tyl[r])
            a0 = S[np.argsort(h2[r, S])[:16]]
            lb = half_space_bounds2(u[r, C], h2[r, C], u[r, a0], h2[r, a0])
            for n in range(0, len(C), 37):
                i = C[n]
                full = h2[r, i] + polyhedron_value2(u[r, i], 2 * (u[r, S] - u[r, i]), q[r, S] - q[r, i])
                work = np.isin(S, a0)
                cg = candidate_value2(u[r, i], q[r, i], h2[r, i], u[r, S], q[r, S], work, math.inf)
                assert lb[n] <= full * (1 + 1e-12)
                assert cg == full or math.isclose(cg, full, rel_tol=1e-9), (n3, r, n, cg, full)


def test_unknown_solver_is_refused():
    X, y, T, ty = small_problem(0, m=2)
    with pytest.raises(ValueError, match="unknown solver 'qp'"):
        tau_star(X, y, T, ty, n3=2, solver="qp")
