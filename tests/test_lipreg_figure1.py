"""Tests for advrep.lipreg.figure1: the exact Lipschitz-regularised solution of (2.7) on synthetic data."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy.optimize import linprog

from advrep.lipreg import figure1 as f1


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------
def _tiny_problem(seed: int, n: int = 6):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 2))
    y = rng.choice([-1.0, 1.0], size=n)
    return x, y


def _linprog_l1(x, y, lam):
    """Independent LP for min (1/n) sum t_i + lam L, t_i >= |u_i - y_i|, |u_i - u_j| <= L d_ij (dense, HiGHS)."""
    n = len(y)
    # variables z = [u (n), t (n), L (1)]
    c = np.concatenate([np.zeros(n), np.full(n, 1.0 / n), [lam]])
    A, b = [], []
    for i in range(n):
        r = np.zeros(2 * n + 1); r[i] = 1; r[n + i] = -1; A.append(r); b.append(y[i])     # u_i - t_i <= y_i
        r = np.zeros(2 * n + 1); r[i] = -1; r[n + i] = -1; A.append(r); b.append(-y[i])   # -u_i - t_i <= -y_i
    for i in range(n):
        for j in range(i + 1, n):
            dij = math.dist(x[i], x[j])
            for s in (1.0, -1.0):
                r = np.zeros(2 * n + 1); r[i] = s; r[j] = -s; r[-1] = -dij; A.append(r); b.append(0.0)
    bounds = [(None, None)] * (2 * n) + [(0, None)]
    res = linprog(c, A_ub=np.array(A), b_ub=np.array(b), bounds=bounds, method="highs")
    assert res.status == 0, res.message
    return res.fun, res.x[:n]


# ---------------------------------------------------------------------------------------------------------------------
# (1) optimality of the cvxpy solution
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("lam", [0.003, 0.05, 0.3])
def test_l1_solution_matches_independent_linprog(seed, lam):
    x, y = _tiny_problem(seed)
    sol = f1.solve_lipschitz_regularised(x, y, lam, loss="l1")
    ref, _ = _linprog_l1(x, y, lam)
    assert sol["solver"] == "CLARABEL"
    assert sol["objective"] == pytest.approx(ref, abs=1e-6)
    # the returned u really attains it, with L recomputed from u alone (McShane-Whitney constant)
    assert f1.objective_value(x, sol["u"], y, lam, "l1") == pytest.approx(ref, abs=1e-6)
    assert sol["L"] == pytest.approx(f1.lipschitz_constant(x, sol["u"]))


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_no_random_perturbation_lowers_the_objective(loss):
    rng = np.random.default_rng(7)
    data = f1.make_synthetic(40, seed=3, corrupt_fraction=0.1)
    x, y, lam = data["x"], data["y"], 0.02
    sol = f1.solve_lipschitz_regularised(x, y, lam, loss=loss)
    best = f1.objective_value(x, sol["u"], y, lam, loss)
    assert best == pytest.approx(sol["objective"], abs=1e-6)
    for scale in (1e-3, 1e-2, 1e-1, 1.0):
        for _ in range(200):
            u = sol["u"] + scale * rng.standard_normal(len(y))
            # every u is feasible once L = Lip(u); (2.7) over all functions equals this objective
            assert f1.objective_value(x, u, y, lam, loss) >= best - 1e-7
    # a non-trivial comparison point: the exact fit and a constant are both worse (or equal)
    assert f1.objective_value(x, y, y, lam, loss) >= best - 1e-7
    assert f1.objective_value(x, np.zeros_like(y), y, lam, loss) >= best - 1e-7


# ---------------------------------------------------------------------------------------------------------------------
# (2) the McShane-Whitney extension
# ---------------------------------------------------------------------------------------------------------------------
def test_extension_interpolates_and_is_L_lipschitz():
    rng = np.random.default_rng(11)
    data = f1.make_synthetic(60, seed=5, corrupt_fraction=0.1)
    sol = f1.solve_lipschitz_regularised(data["x"], data["y"], 0.02)
    x, u, L = data["x"], sol["u"], sol["L"]
    assert L > 0
    np.testing.assert_allclose(f1.extension(x, u, L, x), u, atol=1e-9)

    a = rng.uniform(-1.2, 1.2, size=(4000, 2))
    b = np.concatenate([a[:2000] + rng.normal(scale=0.05, size=(2000, 2)),      # close pairs: local slope
                        rng.uniform(-1.2, 1.2, size=(2000, 2))])               # far pairs
    fa, fb = f1.extension(x, u, L, a), f1.extension(x, u, L, b)
    assert np.all(np.abs(fa - fb) <= L * np.linalg.norm(a - b, axis=1) + 1e-9)
    # mixed pairs (data point, random point)
    k = rng.integers(0, len(x), size=4000)
    assert np.all(np.abs(u[k] - fa) <= L * np.linalg.norm(x[k] - a, axis=1) + 1e-9)
    # the constant is attained (not over-smoothed): some pair of data points has slope L
    i, j = np.triu_indices(len(x), 1)
    assert np.max(np.abs(u[i] - u[j]) / np.linalg.norm(x[i] - x[j], axis=1)) == pytest.approx(L)


def test_extension_on_arbitrary_values_and_grid_shape():
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=(25, 2))
    u = rng.normal(size=25)
    L = f1.lipschitz_constant(x, u)
    gx, gy, grid = f1.make_grid(31)
    g = f1.extension(x, u, L, grid, chunk=97)  # chunking must not change the result
    assert g.shape == (31, 31)
    np.testing.assert_allclose(g.ravel(), f1.extension(x, u, L, grid.reshape(-1, 2)), atol=0)
    np.testing.assert_allclose(f1.extension(x, u, L, x), u, atol=1e-12)
    # neighbouring grid cells: slope at most L
    h = gx[0, 1] - gx[0, 0]
    assert np.max(np.abs(np.diff(g, axis=0))) <= L * h + 1e-9
    assert np.max(np.abs(np.diff(g, axis=1))) <= L * h + 1e-9


# ---------------------------------------------------------------------------------------------------------------------
# (3) limits in lambda
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_tiny_lambda_fits_labels_exactly_and_huge_lambda_is_constant(loss):
    data = f1.make_synthetic(30, seed=2, corrupt_fraction=0.1)
    x, y = data["x"], data["y"]
    lam_tiny = 1e-9 if loss == "l2" else 1e-7   # L2: the misfit is quadratic, u_i = y_i - O(lam n L) only
    tiny = f1.solve_lipschitz_regularised(x, y, lam_tiny, loss=loss)
    np.testing.assert_allclose(tiny["u"], y, atol=1e-4)
    assert np.all(np.sign(tiny["u"]) == y)
    assert tiny["L"] == pytest.approx(f1.lipschitz_constant(x, y), rel=1e-3)

    huge = f1.solve_lipschitz_regularised(x, y, 10.0, loss=loss)
    assert np.ptp(huge["u"]) < 1e-6
    assert huge["L"] < 1e-5
    if loss == "l2":   # the best constant under the squared loss is the mean label
        assert huge["u"].mean() == pytest.approx(y.mean(), abs=1e-6)
    else:              # and under the absolute loss a median
        c = huge["u"].mean()
        assert np.sum(y < c - 1e-6) <= len(y) / 2 and np.sum(y > c + 1e-6) <= len(y) / 2


# ---------------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------------
def test_make_synthetic_is_deterministic_and_corrupts_the_requested_fraction():
    a = f1.make_synthetic(200, seed=4, corrupt_fraction=0.1)
    b = f1.make_synthetic(200, seed=4, corrupt_fraction=0.1)
    c = f1.make_synthetic(200, seed=4, corrupt_fraction=0.0)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a["x"], c["x"])          # both panels use the same points
    np.testing.assert_array_equal(a["y_true"], c["y"])
    assert a["x"].shape == (200, 2) and a["corrupted"].dtype == bool
    assert a["corrupted"].sum() == 20
    assert np.all(a["y"][a["corrupted"]] == -a["y_true"][a["corrupted"]])
    assert np.all(a["y"][~a["corrupted"]] == a["y_true"][~a["corrupted"]])
    assert set(np.unique(a["y"])) == {-1.0, 1.0}
    assert 0.3 < np.mean(a["y_true"] > 0) < 0.7                   # both classes well represented
    assert not np.array_equal(a["x"], f1.make_synthetic(200, seed=5)["x"])


# ---------------------------------------------------------------------------------------------------------------------
# (4) the paper's claim and (5) run(): one default run shared by both
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("figure1")
    # all defaults (n, lam, 10% corruption, seed, loss); only the plotting grid is coarser to save time -- the
    # statistics do not depend on the grid.
    rows = f1.run(out / "figure1.csv", out / "figure1.png", grid_size=81)
    return out, rows


def _stat(rows, panel, column):
    (v,) = [r["value"] for r in rows if r["row"] == panel and r["column"] == column]
    return v


def test_default_run_reproduces_the_caption(default_run):
    _, rows = default_run
    # Left: "the solution value matches the labels perfectly on a large portion of the data set"
    assert _stat(rows, "clean labels", f1.STAT_MATCHED) > 0.9
    # Right: "10% of the data is corrupted by incorrect labels; the regularized solution corrects the errors"
    assert _stat(rows, "corrupted labels", f1.STAT_N_CORRUPTED) == round(0.1 * f1.DEFAULT_N)
    assert _stat(rows, "corrupted labels", f1.STAT_CORRECTED) > 0.5
    assert _stat(rows, "corrupted labels", f1.STAT_TRUE) > 0.9
    # the clean panel has no corrupted-labels statistic
    assert not [r for r in rows if r["row"] == "clean labels" and r["column"] == f1.STAT_CORRECTED]


def test_correction_is_due_to_the_regularisation():
    """Control: with a vanishing lambda the corrupted labels are reproduced, not corrected."""
    data = f1.make_synthetic(f1.DEFAULT_N, f1.DEFAULT_SEED, f1.DEFAULT_CORRUPT_FRACTION)
    sol = f1.solve_lipschitz_regularised(data["x"], data["y"], 1e-4)
    bad = data["corrupted"]
    assert np.mean(np.sign(sol["u"][bad]) == data["y_true"][bad]) < 0.2


def test_run_writes_csv_and_figure_atomically(default_run):
    out, rows = default_run
    # no temp files left behind
    assert sorted(p.name for p in out.iterdir()) == ["figure1.csv", "figure1.png", "figure1.provenance.json"]
    prov = json.loads((out / "figure1.provenance.json").read_text())
    assert prov["target"] == "figure1" and prov["settings"]["lam"] == f1.DEFAULT_LAM and prov["seed"] == 0
    assert (out / "figure1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "figure1.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == ("row", "column", "value", "unit", "status", "comparable", "reason")
        got = list(reader)
    assert len(got) == len(rows)
    assert {r["row"] for r in got} == set(f1.PANELS)
    for g, r in zip(got, rows):
        assert (g["row"], g["column"], g["unit"]) == (r["row"], r["column"], r["unit"])
        assert float(g["value"]) == pytest.approx(float(r["value"]), rel=1e-12)
        assert (g["status"], g["comparable"], g["reason"]) == ("ok", "True", "")
        assert (r["status"], r["comparable"], r["reason"]) == ("ok", True, "")
    required = {f1.STAT_MATCHED, f1.STAT_LIP, f1.STAT_LOSS}
    for panel in f1.PANELS:
        assert required <= {r["column"] for r in got if r["row"] == panel}
    assert any(r["row"] == "corrupted labels" and r["column"] == f1.STAT_CORRECTED for r in got)


def test_run_writes_nothing_on_failure(tmp_path):
    with pytest.raises(ValueError):
        f1.run(tmp_path / "a.csv", tmp_path / "a.png", n=20, grid_size=11, loss="l3")
    assert list(tmp_path.iterdir()) == []


def test_pdf_output(tmp_path):
    rows, arrays = f1.figure1_data(n=40, lam=0.02, corrupt_fraction=0.1, seed=1, grid_size=21, loss="l2")
    f1.plot_figure1(arrays, tmp_path / "fig.pdf")
    assert (tmp_path / "fig.pdf").read_bytes()[:5] == b"%PDF-"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.pdf"]


def test_run_routes_every_output_through_atomic_path(tmp_path, monkeypatch):
    from advrep.io import atomic_path as real_atomic_path

    seen = []

    def recording(path, *a, **k):
        seen.append(str(path))
        return real_atomic_path(path, *a, **k)

    monkeypatch.setattr(f1, "atomic_path", recording)
    f1.run(tmp_path / "s.csv", tmp_path / "s.png", n=30, lam=0.02, corrupt_fraction=0.1, seed=0, grid_size=11,
           loss="l1")
    assert str(tmp_path / "s.png") in seen  # the figure; the CSV and sidecar go through advrep.provenance
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv", "s.png", "s.provenance.json"]
