"""abstain paper (Balcan, Blum, Sharma, Zhang): Algorithm 1, the exact random-subspace adversary, the linear
protocol, data-driven tau and the Table 1 layout -- checked against brute force and independent solvers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from advrep.abstain import adversary as adv
from advrep.abstain import (classify, evaluate_features, exact_nearest, figure1_rows, linear_adversary_wins,
                            linear_adversary_wins_lp, linear_predict, nearest_other_label_distance, online_exp_weights,
                            preprocess, random_subspaces, table1_rows, tau_star, tau_star_naive, tune_tau_batch)
from advrep.abstain.qp import candidate_value_cvxpy, project_polyhedron
from advrep.abstain.theory import theorem22_rows
from advrep.abstain.tuning import objective

LAYOUT = Path(__file__).resolve().parents[1] / "src/advrep/published/abstain.layout.yaml"


def small_problem(seed=0, n=40, d=5, m=12, k=3, scale=2.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * scale, rng.integers(0, k, n), rng.normal(size=(m, d)) * scale,
            rng.integers(0, k, m))


def clustered(seed=0, n=2000, m=60, d=64, k=10, spread=0.35):
    rng = np.random.default_rng(seed)
    cen = rng.normal(size=(k, d))
    y, ty = rng.integers(0, k, n), rng.integers(0, k, m)
    return (cen[y] + spread * rng.normal(size=(n, d)), y, cen[ty] + spread * rng.normal(size=(m, d)), ty)


def brute_grid(X, y, x, yx, B, coords, chunk=200_000):
    """min distance to a wrong-class nearest point over the grid points ``x + coords @ B.T`` of the subspace."""
    best = math.inf
    for s in range(0, len(coords), chunk):
        E = x[None, :] + coords[s:s + chunk] @ B.T
        D = ((E[:, None, :] - X[None, :, :]) ** 2).sum(-1)
        nn = D.argmin(1)
        w = y[nn] != yx
        if w.any():
            best = min(best, float(np.sqrt(D[w, nn[w]].min())))
    return best


def brute_line(X, y, x, yx, b, lim, step):
    """Dense grid of the line x + t b, |t| <= lim."""
    return brute_grid(X, y, x, yx, b[:, None], np.arange(-lim, lim + step / 2, step)[:, None])


def brute_plane(X, y, x, yx, B, lim, step):
    """Dense square grid of the plane x + B t, |t_i| <= lim."""
    g = np.arange(-lim, lim + step / 2, step)
    G1, G2 = np.meshgrid(g, g)
    return brute_grid(X, y, x, yx, B, np.stack([G1.ravel(), G2.ravel()], 1))


# --------------------------------------------------------------------------------------------------- subspaces
def test_random_subspaces_orthonormal_seeded_prefix_stable():
    B = random_subspaces(7, 9, 3, seed=4)
    assert B.shape == (7, 9, 3)
    assert np.allclose(np.einsum("mdi,mdj->mij", B, B), np.eye(3)[None], atol=1e-12)
    assert np.array_equal(B, random_subspaces(7, 9, 3, seed=4))
    assert np.array_equal(B[:4], random_subspaces(4, 9, 3, seed=4))
    assert not np.allclose(B, random_subspaces(7, 9, 3, seed=5))
    # Haar: a fixed unit vector's squared projection onto a random n3-plane has mean n3 / d
    P = random_subspaces(4000, 9, 3, seed=1)
    assert abs(float((P[:, 0, :] ** 2).sum(1).mean()) - 3 / 9) < 0.02


# --------------------------------------------------------------------------------------------------- Algorithm 1
def test_preprocess_matches_bruteforce_and_separates_classes():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 8))
    y = rng.integers(0, 4, 300)
    D = np.linalg.norm(X[:, None] - X[None], axis=2)
    other = np.where(y[:, None] != y[None], D, np.inf).min(1)
    near = nearest_other_label_distance(X, y)
    assert np.allclose(near, other, rtol=0, atol=1e-12)
    u = np.unique(other)
    mids = 0.5 * (u[1:] + u[:-1])  # thresholds strictly between distinct distances: no rounding ambiguity
    for sigma in (0.0, mids[len(mids) // 2], mids[int(0.9 * len(mids))], mids[5]):
        keep = preprocess(X, y, sigma)
        assert np.array_equal(keep, ~(other < sigma))
        assert 0 < keep.sum() <= len(keep)
        k = np.flatnonzero(keep)
        Dk = D[np.ix_(k, k)]
        diff = y[k][:, None] != y[k][None]
        assert not (diff & (Dk < sigma)).any()
    assert preprocess(X, y, near[7])[7]  # strict "<": a point exactly at distance sigma is kept
    assert not preprocess(X, y, np.nextafter(near[7], np.inf))[7]


def test_classify_and_exact_nearest_match_bruteforce():
    X, y, T, ty = clustered(seed=1, n=1500, m=200, d=32)
    D = np.linalg.norm(T[:, None] - X[None], axis=2)
    nb = exact_nearest(T, X)
    assert np.allclose(nb.distance, D.min(1), atol=1e-12)
    assert np.array_equal(nb.index, D.argmin(1))
    tau = float(np.median(D.min(1)))
    pred = classify(T, X, y, tau)
    expect = np.where(D.min(1) < tau, y[D.argmin(1)], -1)
    assert np.array_equal(pred, expect)
    assert 0 < (pred == -1).sum() < len(pred)


# ------------------------------------------------------------------------------------- exact adversary vs brute force
@pytest.mark.parametrize("seed", [0, 1])
def test_tau_star_n3_1_matches_dense_line_search(seed):
    X, y, T, ty = small_problem(seed)
    B = random_subspaces(len(T), X.shape[1], 1, seed + 10)
    res = tau_star(X, y, T, ty, subspaces=B, k0=8)
    step = 4e-4
    for m in range(len(T)):
        bf = brute_line(X, y, T[m], ty[m], B[m, :, 0], lim=25.0, step=step)
        ts = res.tau_star[m]
        if ts < 15.0:  # |t| <= max ||x_k - x|| + tau*: the optimum lies inside the searched range
            assert ts <= bf + 1e-9, (m, ts, bf)
            assert bf <= ts + step, (m, ts, bf)
        else:
            assert bf > 15.0 - step


def test_tau_star_n3_2_matches_dense_plane_search():
    X, y, T, ty = small_problem(5, m=3)
    B = random_subspaces(len(T), X.shape[1], 2, 3)
    res = tau_star(X, y, T, ty, subspaces=B, k0=8, n3=2)
    step = 0.015
    for m in range(len(T)):
        bf = brute_plane(X, y, T[m], ty[m], B[m], lim=8.0, step=step)
        assert res.tau_star[m] <= bf + 1e-9
        assert bf <= res.tau_star[m] + step * math.sqrt(2)


def test_closed_form_candidate_values_equal_cvxpy():
    X, y, T, ty = small_problem(2, m=3)
    B = random_subspaces(3, X.shape[1], 1, 0)
    n_finite = 0
    for m in range(3):
        c1, v1 = adv.candidate_values(X, y, T[m], ty[m], B[m], solver="closed_form")
        c2, v2 = adv.candidate_values(X, y, T[m], ty[m], B[m], solver="cvxpy")
        assert np.array_equal(c1, c2)
        assert np.array_equal(np.isinf(v1), np.isinf(v2))  # same cells miss the line
        fin = np.isfinite(v1)
        n_finite += fin.sum()
        assert np.allclose(v1[fin], v2[fin], atol=1e-6)
    assert n_finite >= 4


@pytest.mark.parametrize("n3", [2, 3])
def test_active_set_candidate_values_equal_cvxpy(n3):
    X, y, T, ty = small_problem(4, m=2)
    B = random_subspaces(2, X.shape[1], n3, 1)
    for m in range(2):
        _, v1 = adv.candidate_values(X, y, T[m], ty[m], B[m], solver="active_set")
        _, v2 = adv.candidate_values(X, y, T[m], ty[m], B[m], solver="cvxpy")
        assert np.array_equal(np.isinf(v1), np.isinf(v2))
        assert np.allclose(v1[np.isfinite(v1)], v2[np.isfinite(v2)], atol=1e-6)


def test_active_set_projection_and_infeasibility():
    rng = np.random.default_rng(0)
    for _ in range(30):
        G = rng.normal(size=(12, 3))
        h = rng.normal(size=12) + 0.5
        u0 = rng.normal(size=3) * 3
        t = project_polyhedron(u0, G, h)
        import cvxpy as cp
        v = cp.Variable(3)
        p = cp.Problem(cp.Minimize(cp.sum_squares(v - u0)), [G @ v <= h])
        p.solve(solver=cp.CLARABEL)
        if p.status == "infeasible":
            assert t is None
        else:
            assert t is not None and np.allclose(t, v.value, atol=1e-6)
    # {t <= -1} ∩ {t >= 1}: empty
    assert project_polyhedron(np.zeros(1), np.array([[1.0], [-1.0]]), np.array([-1.0, -1.0])) is None


@pytest.mark.parametrize("k0", [2, 8, 64])
def test_pruned_equals_unpruned_n3_1(k0):
    X, y, T, ty = small_problem(7, n=60, m=25)
    B = random_subspaces(len(T), X.shape[1], 1, 2)
    naive = tau_star_naive(X, y, T, ty, subspaces=B)
    for method in ("hull", "scan"):
        res = tau_star(X, y, T, ty, subspaces=B, k0=k0, line_method=method)
        assert np.allclose(res.tau_star, naive, rtol=1e-12, atol=1e-12), method


def test_pruned_equals_unpruned_clustered_high_dim():
    X, y, T, ty = clustered(seed=2, n=2000, m=30, d=96)
    B = random_subspaces(len(T), X.shape[1], 1, 0)
    naive = tau_star_naive(X, y, T, ty, subspaces=B)
    fast = tau_star(X, y, T, ty, subspaces=B, k0=32)
    assert np.allclose(fast.tau_star, naive, rtol=1e-12)
    assert fast.stats["hull_rows"] + fast.stats["certified_level1"] == len(T)


def test_multi_subset_pass_equals_separate_runs():
    X, y, T, ty = clustered(seed=4, n=1200, m=50, d=24, spread=0.6)
    near = nearest_other_label_distance(X, y)
    keeps = [None, preprocess(X, y, float(np.quantile(near, 0.3)), nearest_other=near),
             preprocess(X, y, float(np.quantile(near, 0.8)), nearest_other=near)]
    B = random_subspaces(len(T), X.shape[1], 1, 0)
    multi = adv.tau_star_multi(X, y, T, ty, keeps, subspaces=B, k0=16, chunk=17)
    for keep, res in zip(keeps, multi):
        k = np.ones(len(X), bool) if keep is None else keep
        one = tau_star(X[k], y[k], T, ty, subspaces=B, k0=16)
        assert res.n_train == k.sum()
        assert np.allclose(res.tau_star, one.tau_star, rtol=1e-9)
        assert np.allclose(res.d_nn, one.d_nn, rtol=1e-9) and np.array_equal(res.nn_label, one.nn_label)
    assert (multi[2].rates(np.inf)["E_nat"] <= multi[0].rates(np.inf)["E_nat"])


def test_pruned_equals_unpruned_n3_2():
    X, y, T, ty = small_problem(8, n=50, m=10)
    B = random_subspaces(len(T), X.shape[1], 2, 2)
    naive = tau_star_naive(X, y, T, ty, subspaces=B, solver="active_set", n3=2)
    res = tau_star(X, y, T, ty, subspaces=B, k0=4, n3=2)
    assert np.allclose(res.tau_star, naive, rtol=1e-9)
    res_cvx = tau_star(X[:30], y[:30], T[:3], ty[:3], subspaces=B[:3], k0=4, n3=2, solver="cvxpy")
    ref = tau_star_naive(X[:30], y[:30], T[:3], ty[:3], subspaces=B[:3], solver="cvxpy", n3=2)
    assert np.allclose(res_cvx.tau_star, ref, atol=1e-6)


def test_same_class_constraints_suffice_lemma1():
    X, y, T, ty = small_problem(9, n=50, m=8)
    B = random_subspaces(len(T), X.shape[1], 1, 0)
    for m in range(len(T)):
        _, full = adv.candidate_values(X, y, T[m], ty[m], B[m])
        _, relaxed = adv.candidate_values(X, y, T[m], ty[m], B[m], same_class_only=True)
        assert (relaxed <= full + 1e-12).all()
        assert math.isclose(relaxed.min(), full.min(), rel_tol=1e-12)


def test_hull_handles_duplicate_points_as_ties_against_defender():
    X, y, T, ty = small_problem(11, n=30, m=6)
    # every training point duplicated with the next label: the whole line is a tie between twins
    X2 = np.concatenate([X, X])
    y2 = np.concatenate([y, (y + 1) % 3])
    B = random_subspaces(len(T), X.shape[1], 1, 0)
    res = tau_star(X2, y2, T, ty, subspaces=B, k0=4)
    naive = tau_star_naive(X2, y2, T, ty, subspaces=B)
    assert np.allclose(res.tau_star, naive)
    # ties go to the adversary: every cell is shared with a wrong twin, so tau* is the distance from the line to
    # the nearest training point
    a = np.einsum("mnd,md->mn", X[None] - T[:, None], B[:, :, 0])
    h = np.sqrt(((X[None] - T[:, None]) ** 2).sum(-1) - a ** 2)
    assert np.allclose(res.tau_star, h.min(1))
    assert (res.tau_star < res.d_nn).all()


def test_line_hull_equals_per_candidate_intervals_random_and_lattice():
    """Lemma 5 against the definition on 600 random lines, a third of them through an integer lattice with an
    axis-aligned or random direction (exact duplicates, equal projections, collinear lifted points, ties)."""
    rng = np.random.default_rng(0)
    for it in range(600):
        N, d = int(rng.integers(1, 200)), int(rng.choice([2, 3, 8, 64]))
        kind = it % 3
        if kind == 0:
            X, x = rng.normal(size=(N, d)) * rng.uniform(0.1, 10), rng.normal(size=d)
        elif kind == 1:
            X, x = rng.integers(-3, 4, size=(N, d)).astype(float), rng.integers(-3, 4, size=d).astype(float)
        else:
            cen = rng.normal(size=(5, d))
            X, x = cen[rng.integers(0, 5, N)] + 0.05 * rng.normal(size=(N, d)), rng.normal(size=d)
        wrong = rng.integers(0, 3, N) != 0
        b = rng.normal(size=d)
        b /= np.linalg.norm(b)
        if kind == 1 and it % 2:
            b = np.eye(d)[0]
        D = X - x
        a, q = D @ b, (D * D).sum(1)
        fast = adv.line_tau_star2(a, q, wrong)
        c = np.flatnonzero(wrong)
        slow = float(adv.line_values2(a[c], q[c], np.maximum(q[c] - a[c] ** 2, 0), a, q).min()) if len(c) else math.inf
        assert fast == slow or abs(fast - slow) <= 1e-9 * (1 + slow), (it, fast, slow)


def test_rates_monotone_and_robust_error_at_least_natural():
    X, y, T, ty = clustered(seed=3, n=2000, m=300, d=16, spread=0.5)
    res = tau_star(X, y, T, ty, seed=1)
    taus = np.linspace(0, 1.5 * np.nanmax(res.tau_star[np.isfinite(res.tau_star)]), 400)
    r = [res.rates(t) for t in taus]
    e_adv = np.array([x["E_adv"] for x in r])
    d_nat = np.array([x["D_nat"] for x in r])
    e_nat = np.array([x["E_nat"] for x in r])
    assert (np.diff(e_adv) >= 0).all() and (np.diff(d_nat) <= 0).all()
    assert (e_adv >= e_nat).all()
    assert e_adv[0] == 0 and d_nat[0] == 1 and d_nat[-1] == 0 and 0 < e_adv[len(taus) // 3] < 1
    nb = exact_nearest(T, X)
    assert np.allclose(nb.distance, res.d_nn, atol=1e-9)


# --------------------------------------------------------------------------------------------------- linear protocol
def test_linear_adversary_closed_form_lp_and_bruteforce():
    rng = np.random.default_rng(0)
    d, C, M = 5, 3, 15
    W, b = rng.normal(size=(C, d)), rng.normal(size=C)
    T = rng.normal(size=(M, d))
    ty = linear_predict(W, b, T)  # correctly classified points: a win needs a real move
    for n3 in (1, 2):
        B = random_subspaces(M, d, n3, 3)
        wins = linear_adversary_wins(W, b, T, ty, B)
        assert wins.all()
        assert np.array_equal(wins, linear_adversary_wins_lp(W, b, T, ty, B))
    # a subspace orthogonal to every score difference cannot change the prediction: no win
    Bs = np.zeros((M, d, 1))
    for m in range(M):
        D = (W - W[ty[m]]).T  # d x C
        q, _ = np.linalg.qr(np.concatenate([D, rng.normal(size=(d, d))], 1))
        Bs[m, :, 0] = q[:, C]
    wins = linear_adversary_wins(W, b, T, ty, Bs)
    assert not wins.any()
    assert np.array_equal(wins, linear_adversary_wins_lp(W, b, T, ty, Bs))
    # brute force along the random lines: a wrong label shows up within |t| <= 200
    B = random_subspaces(M, d, 1, 3)
    ts = np.linspace(-200, 200, 400_001)
    for m in range(M):
        E = T[m][None] + ts[:, None] * B[m, :, 0][None]
        assert (linear_predict(W, b, E) != ty[m]).any()


# --------------------------------------------------------------------------------------------------------- tuning
def test_batch_tuning_equals_fine_grid():
    rng = np.random.default_rng(0)
    tau_star_v = np.round(rng.uniform(0, 5, 400), 2)
    tau_star_v[rng.uniform(size=400) < 0.1] = np.inf
    d_nn = np.round(rng.uniform(0.5, 4, 400), 2)
    grid = np.arange(0, 7, 0.001) + 0.0004  # every gap between multiples of 0.01 contains grid points
    grid = np.r_[0.0, grid]
    for c in (0.1, 0.3, 1.0, 3.0):
        tr = tune_tau_batch(tau_star_v, d_nn, c)
        gg = objective(tau_star_v, d_nn, c, grid)
        assert math.isclose(tr.g, gg.min(), abs_tol=1e-12)
        assert math.isclose(float(objective(tau_star_v, d_nn, c, [tr.tau])[0]), tr.g, abs_tol=1e-12)
        assert tr.lo <= tr.tau <= tr.hi
    # an optimum beyond every breakpoint: nothing abstains there and every finite tau* counts
    ts2, dn2 = np.round(rng.uniform(0, 2, 300), 2), np.round(rng.uniform(1, 4, 300), 2)
    tr = tune_tau_batch(ts2, dn2, 10.0)
    assert tr.lo == dn2.max() and tr.hi == math.inf and tr.tau > dn2.max()
    assert math.isclose(tr.g, objective(ts2, dn2, 10.0, grid).min(), abs_tol=1e-12)
    tr = tune_tau_batch(tau_star_v, d_nn, 0.3, tau_max=2.0)
    assert tr.tau <= 2.0 and math.isclose(tr.g, objective(tau_star_v, d_nn, 0.3, grid[grid <= 2.0]).min())


def test_online_exp_weights_regret_sublinear():
    rng = np.random.default_rng(1)
    n = 4_000
    tau_star_v = rng.gamma(4.0, 0.5, n)
    d_nn = rng.gamma(3.0, 0.4, n)
    res = online_exp_weights(tau_star_v, d_nn, 0.5, batch_size=2, tau_max=8.0, seed=0)
    T = res.T[-1]
    per_round = [res.regret[k - 1] / k for k in (T // 16, T // 4, T)]
    assert per_round[0] > per_round[1] > per_round[2]
    assert per_round[2] < 0.25 * per_round[0]
    assert res.regret[-1] <= 2.0 * res.loss_range * math.sqrt(T * math.log(T))
    assert (res.best_fixed <= res.expected_loss + 1e-9).all()
    assert np.all((res.taus >= 0) & (res.taus <= 8.0))


# -------------------------------------------------------------------------------------------------- Theorems 2.1/2.2
def test_theorem22_bound_and_no_abstention_errors():
    rows = theorem22_rows(n2_values=(2, 4, 8, 16), test_per_class=50, m_per_class=40)
    e = [r["E_adv"] for r in rows]
    assert e[0] > e[-1] and e[-1] == 0.0
    for r in rows:
        assert r["E_adv"] <= r["line_within_tau_of_wrong"] + 1e-12
        if r["bound"] < 1:
            assert r["E_adv"] <= r["bound"]
        assert r["E_adv_nearest_neighbour"] >= 0.8
        assert r["E_adv_linear"] == 1.0


# ---------------------------------------------------------------------------------------------------------- Table 1
def test_table1_rows_layout_and_values():
    layout = yaml.safe_load(LAYOUT.read_text())["table1"]
    X, y, T, ty = clustered(seed=5, n=800, m=100, d=16, k=4, spread=0.9)
    results = {kind: evaluate_features(X, y, T, ty, seed=s, taus=(3.0, 2.0))
               for kind, s in (("Self-supervised", 0), ("Supervised", 1))}
    rows = table1_rows(results)
    want = [(r, c) for r in layout["rows"] for c in layout["columns"] if [r, c] not in layout["blanks"]]
    assert [(r["row"], r["column"]) for r in rows] == want
    assert all(r["unit"] == "percent" and 0 <= r["value"] <= 100 for r in rows)
    cell = {(r["row"], r["column"]): r["value"] for r in rows}
    for kind in ("Self-supervised", "Supervised"):
        lin = [cell[(f"{kind} / Linear Protocol (sigma={s})", "E_adv")] for s in ("0", "0.9tau", "tau")]
        assert lin == [100.0] * 3
        res = results[kind]["attacks"][0.0]
        assert cell[(f"{kind} / Ours (tau=3.0, sigma=0)", "E_adv")] == pytest.approx(100 * res.rates(3.0)["E_adv"])
        for lab in ("0", "0.9tau", "tau"):
            for tau in ("3.0", "2.0"):
                row = f"{kind} / Ours (tau={tau}, sigma={lab})"
                assert cell[(row, "E_adv")] >= cell[(row, "E_nat")]
    kept = results["Self-supervised"]["kept"]
    assert kept[0.0] == 800 and kept[3.0] <= kept[2.7] <= kept[0.0]
    f1 = figure1_rows(results["Self-supervised"]["attacks"][0.0])
    assert [(r["row"], r["column"]) for r in f1] == [(r, c) for r in yaml.safe_load(LAYOUT.read_text())["figure1"]
                                                     ["rows"] for c in ("A_adv", "D_nat")]
    assert f1[1]["value"] == 1.0
    from advrep.abstain import long_format, tune_and_evaluate
    tuned = tune_and_evaluate(results["Supervised"]["attacks"][0.0], costs=(0.2, 1.0))
    lf = long_format(tuned, "c", units={"tau": "distance"})
    assert {r["row"] for r in lf} == {"c=0.2", "c=1.0"}
    assert {"tau", "test_E_adv", "test_D_nat"} <= {r["column"] for r in lf}
    assert all(t["test_g"] >= t["oracle_test_g"] - 1e-12 for t in tuned)
