"""voronoi Figure 3 (PLANES), issue 15 part 1: rule out our own errors.

Data geometry beyond tests/test_data.py::test_planes (nearest training points of a test point, codimension from the
data's rank, the two planes parallel and 2 apart, the radius-1 balls covering the planes), the inner attacks of both
training methods on models trained at the config's figure3 settings, NAUC's grid against eq. 5, and the hand-written
parts of benchmarks/voronoi_planes_eval_strength.py (the row-space model, the line search).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from advrep.data.synthetic import PLANES_DEFAULTS, make_planes, planes_axes
from advrep.evaluate import nauc
from advrep.voronoi import planes
from advrep.voronoi.constraints import NeighbourIndex

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("voronoi_planes_eval_strength",
                                                  ROOT / "benchmarks" / "voronoi_planes_eval_strength.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


B = _bench()


@pytest.fixture(scope="module")
def settings() -> planes.PlanesSettings:
    """Today's figure3 settings from config/config.yaml (through advrep.config), with few epochs."""
    return dataclasses.replace(planes._settings(B.figure3_settings()), epochs=4, retrainings=1)


def _data(codim):
    x_tr, y_tr, x_te, y_te = make_planes(codim)
    return x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64)


def _trained(method, codim, s, tmp_path, objective_cls):
    """A model trained by planes.train_one, and the very objective instance it trained with."""
    made = []
    real = getattr(planes, objective_cls)

    def spy(*a, **k):
        made.append(real(*a, **k))
        return made[-1]

    x_tr, y_tr, *_ = _data(codim)
    with mock.patch.object(planes, objective_cls, spy):
        model = planes.train_one(method, x_tr, y_tr, s, seed=0, checkpoint_dir=tmp_path / method)
    assert len(made) == 1
    return model, made[0]


# ------------------------------------------------------------------------------------------------------- data
def _dists(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sqrt(np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0.0))


@pytest.mark.parametrize("codim", [10, 500])
def test_planes_geometry(codim):
    x_tr, y_tr, x_te, y_te = _data(codim)
    dim = x_tr.shape[1]
    side, gap, extent = PLANES_DEFAULTS["side"], PLANES_DEFAULTS["gap"], PLANES_DEFAULTS["extent"]
    assert math.isclose(side, math.sqrt(2)) and gap == 2.0
    # counts per class: one point per grid vertex (train) / cell centre (test), on each plane
    n_v, n_c = (len(a) for a in planes_axes(extent, side))
    assert n_v == math.floor(2 * extent / side) + 1 and n_c == n_v - 1
    for y, n in ((y_tr, n_v ** 2), (y_te, n_c ** 2)):
        assert np.bincount(y).tolist() == [n, n]
    # codimension d - 2: each class spans a 2-D affine plane of R^d, both the same directions (parallel planes)
    spans = []
    for c in (0, 1):
        for x, y in ((x_tr, y_tr), (x_te, y_te)):
            p = x[y == c].astype(np.float64)
            sv = np.linalg.svd(p - p.mean(0), compute_uv=False)
            assert (sv > 1e-6 * sv[0]).sum() == 2
            spans.append(np.linalg.svd(p - p.mean(0), full_matrices=False)[2][:2])
    for v in spans[1:]:
        assert np.allclose(np.linalg.svd(np.vstack([spans[0], v]), compute_uv=False)[2:], 0, atol=1e-6)
    assert dim - 2 == codim
    # the planes are gap = 2 apart: the offset between them is normal to both and has length 2
    off = x_tr[y_tr == 1].mean(0).astype(np.float64) - x_tr[y_tr == 0].mean(0)
    assert np.allclose(spans[0] @ off, 0, atol=1e-6) and math.isclose(np.linalg.norm(off), gap, rel_tol=1e-6)
    # grid of side sqrt(2): nearest training neighbour of every vertex at exactly sqrt(2), 2-4 of them
    d_tr = _dists(x_tr, x_tr) + np.where(np.eye(len(x_tr), dtype=bool), np.inf, 0)
    assert np.allclose(d_tr.min(1), side, atol=1e-5)
    assert set(np.isclose(d_tr, side, atol=1e-5).sum(1)) == {2, 3, 4}
    # every test point: exactly 4 nearest training points, at distance 1, all of its class, whose mean it is
    # (the cell's corners); the next ones at sqrt(5) (same class, one cell further; or the other plane's corners)
    d = _dists(x_te, x_tr)
    order = np.argsort(d, axis=1, kind="stable")
    d_sorted = np.take_along_axis(d, order, 1)
    assert np.allclose(d_sorted[:, :4], 1.0, atol=1e-5) and (d_sorted[:, 4] > 1.0 + 1e-3).all()
    assert np.allclose(d_sorted[:, 4], math.sqrt(5), atol=1e-5)
    assert (y_tr[order[:, :4]] == y_te[:, None]).all()
    assert np.allclose(x_tr[order[:, :4]].mean(1), x_te, atol=1e-5)
    other = np.where(y_te[:, None] != y_tr[None], d, np.inf)
    assert np.allclose(other.min(1), math.sqrt(1 + gap ** 2), atol=1e-5)
    assert (np.isclose(other, math.sqrt(1 + gap ** 2), atol=1e-5).sum(1) == 4).all()
    # every test point has a twin on the other plane, straight across at distance 2
    twin = x_te.astype(np.float64).copy()
    twin[:, -1] = gap - twin[:, -1]
    j = _dists(twin, x_te).argmin(1)
    assert np.allclose(x_te[j], twin, atol=1e-6) and (y_te[j] != y_te).all()


def test_radius_one_balls_cover_the_planes():
    """The paper's reason for the sampling: the L2 balls of radius 1 around the training vertices cover the planes
    (-10 <= x1, x2 <= 10; checked on a grid of step 0.02), and so the test points (cell centres, the farthest
    points from the vertices) sit exactly on the balls' boundary."""
    vertices, _ = planes_axes(PLANES_DEFAULTS["extent"], PLANES_DEFAULTS["side"])
    g = np.linspace(-10, 10, 1001)
    # a grid of squares: the nearest vertex is the nearest along each axis
    near = np.abs(g[:, None] - vertices[None]).min(1)
    worst = np.sqrt(near[:, None] ** 2 + near[None, :] ** 2).max()
    assert worst <= 1.0 + 1e-9 and worst > 0.99


# --------------------------------------------------------------------------------------------- inner attacks
@pytest.mark.parametrize("codim", [10, 500])
def test_madry_inner_attack_ends_on_the_sphere_or_stalls(codim, settings, tmp_path):
    """The PGDAT objective train_one builds (figure3: L2, eps 1, 10 steps of 0.25, random start), on the model it
    trained: every training point's adversarial ends on the L2 sphere of radius eps, or its loss no longer grows
    (40 steps from the same start gain < 1e-3)."""
    model, obj = _trained("Madry", codim, settings, tmp_path, "PGDAT")
    assert obj.norm == "l2" and obj.steps == settings.attack_steps and obj.random_start
    assert math.isclose(obj.radius(None)[0] * planes.SPAN, settings.madry_eps, rel_tol=1e-9)
    assert math.isclose(obj.alpha * planes.SPAN, settings.attack_alpha, rel_tol=1e-9)
    x_tr, y_tr, *_ = _data(codim)
    u, y = planes.embed(x_tr), torch.from_numpy(y_tr)
    longer = copy.copy(obj)
    longer.steps = 4 * obj.steps
    torch.manual_seed(1)
    adv = obj.perturb(model, u, y, None)
    torch.manual_seed(1)
    adv_long = longer.perturb(model, u, y, None)  # same random start, then 30 more steps
    eps = obj.radius(None)[0]
    r = (adv - u).norm(dim=1) / eps
    assert (r <= 1 + 1e-4).all()
    with torch.no_grad():
        loss, loss_long = (F.cross_entropy(model(a), y, reduction="none") for a in (adv, adv_long))
    on_sphere = (r - 1).abs() <= 1e-3
    stalled = loss_long - loss <= 1e-3
    assert (on_sphere | stalled).all()
    assert on_sphere.float().mean() > 0.5  # the ball, not a flat loss, is what stops most of them


def test_voronoi_inner_attack_goes_to_the_far_face_of_a_large_cell():
    """Few, far-apart points: class 0 at the origin, its only other-class neighbour at distance L along e1, so the
    cell is the half-space x1 <= L/2 (same-class points constrain nothing).  With a model whose loss grows along
    e1, VoronoiAT walks the whole way: it ends within one step (alpha) of the face, however large L is, while the
    step budget (steps * alpha) exceeds L/2."""
    from advrep.voronoi.training import VoronoiAT

    dim, alpha = 5, 0.25
    model = nn.Linear(dim, 2, bias=False)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[1, 0] = 1.0  # logit_1 - logit_0 = x1: CE of class 0 grows along +e1
    for L in (2.0, 20.0, 60.0):
        x = np.zeros((4, dim), np.float32)
        x[1, 1], x[2, 2] = 3.0, -3.0  # class-0 companions: no constraint on the sample at the origin
        x[3, 0] = L
        y = np.array([0, 0, 0, 1])
        obj = VoronoiAT(NeighbourIndex(x, y), m=1, steps=int(2 * L / alpha), alpha=alpha, box=None)
        adv = obj.perturb(model, torch.from_numpy(x[:1]), torch.from_numpy(y[:1]))
        moved = float(adv[0].norm())
        assert L / 2 - alpha - 1e-5 <= moved <= L / 2 + 1e-5, (L, moved)
        assert float(adv[0, 0]) == pytest.approx(moved, rel=1e-6)  # along e1, towards the other class


def test_voronoi_inner_attack_on_planes_reaches_the_cell_face(settings, tmp_path):
    """The VoronoiAT objective train_one builds (figure3: m = 10, 10 L2 steps of 0.25), on the Voronoi model it
    trained (codim 10): the training points' constrained adversarials end within one step of their cell's boundary
    (the cell of the m nearest other-class points; its face to the point straight across is 1 away, the step
    budget 2.5), i.e. the attack is stopped by the cell, not by its budget or a vanishing gradient."""
    model, obj = _trained("Voronoi", 10, settings, tmp_path, "VoronoiAT")
    assert obj.m == settings.m and obj.steps == settings.attack_steps and obj.step_norm == "l2" and obj.p == 2
    alpha = obj.alpha * planes.SPAN
    assert math.isclose(alpha, settings.attack_alpha, rel_tol=1e-9)
    x_tr, y_tr, *_ = _data(10)
    u, y = planes.embed(x_tr), torch.from_numpy(y_tr)
    adv = obj.perturb(model, u, y, None).double()
    z = u[obj.index.query(u.numpy(), y_tr, obj.m)].double()  # (N, m, D)
    ud = u.double()
    # distance to each bisector face (x + z)/2, normal (z - x); negative inside; the cell is their intersection
    normal = z - ud[:, None]
    signed = ((adv[:, None] - (ud[:, None] + z) / 2) * normal).sum(2) / normal.norm(dim=2)
    to_face = -signed.amax(1) * planes.SPAN  # PLANES units
    assert (to_face >= -1e-4).all()  # inside the cell
    assert (to_face <= alpha + 1e-4).float().mean() >= 0.95
    moved = (adv - ud).norm(dim=1) * planes.SPAN
    assert float(moved.median()) >= 1.0 - alpha  # the face across is 1 away


# ------------------------------------------------------------------------------------------------------- NAUC
def test_nauc_grid_matches_eq5_and_the_planes(settings):
    """Eq. 5: (1/eps_max) * integral_0^eps_max acc.  The figure3 grid runs from 0 to eval_eps_max = 1 = half the
    gap between the planes (the data's); nauc is the exact integral of the piecewise-linear curve through the grid
    values (checked by brute-force midpoint integration), normalised by eps_max."""
    eps = np.asarray(settings.eval_eps)
    x_tr, y_tr, *_ = _data(10)
    gap = float(x_tr[y_tr == 1, -1].mean() - x_tr[y_tr == 0, -1].mean())
    assert eps[0] == 0 and math.isclose(eps[-1], settings.eval_eps_max) and settings.eval_eps_max == gap / 2
    assert np.allclose(np.diff(eps), eps[-1] / (len(eps) - 1))
    rng = np.random.default_rng(0)
    fine = (np.arange(1_000_000) + 0.5) / 1_000_000 * eps[-1]
    for _ in range(5):
        acc = np.sort(rng.uniform(0, 1, len(eps)))[::-1]
        brute = np.interp(fine, eps, acc).mean()  # = (1/eps_max) * integral, midpoint rule
        assert nauc(eps, acc) == pytest.approx(brute, abs=1e-9)
        # normalised by eps_max: the same curve on a stretched axis has the same NAUC
        assert nauc(2.5 * eps, acc) == pytest.approx(nauc(eps, acc), abs=1e-12)
    # a curve worked out by hand: 1 up to 0.5, straight down to 0.5 at 0.8, flat after: 0.5 + 0.3 * 0.75 + 0.2 * 0.5
    acc = np.interp(eps, [0, 0.5, 0.8, 1.0], [1, 1, 0.5, 0.5])
    assert nauc(eps, acc) == pytest.approx(0.5 * 1 + 0.3 * (1 + 0.5) / 2 + 0.2 * 0.5, abs=1e-12)


def test_accuracy_at_eps_max_is_at_most_one_half_for_any_classifier(settings, tmp_path):
    """At eps = eps_max = 1 the midpoint between a test point and its twin on the other plane (2 away) is within
    reach of both, and the model gives it one class: one of the two is broken.  So acc(1) <= 1/2 for every model,
    and on the figure3 grid (step h) no model's NAUC exceeds 1 - h/4 (0.975 for 11 points).  Checked on a trained
    model: its midpoint verdicts break at least one of every pair."""
    model, _ = _trained("Madry", 10, settings, tmp_path, "PGDAT")
    _, _, x_te, y_te = _data(10)
    twin = x_te.copy()
    twin[:, -1] = 2.0 - twin[:, -1]
    j = _dists(twin, x_te).argmin(1)
    mid = (x_te + x_te[j]) / 2
    assert np.allclose(np.linalg.norm(mid - x_te, axis=1), settings.eval_eps_max, atol=1e-6)
    with torch.no_grad():
        pred = model(planes.embed(mid)).argmax(1).numpy()
    survives = pred == y_te  # the midpoint keeps x's label
    assert not (survives & survives[j]).any()
    eps = settings.eval_eps
    h = eps[1] - eps[0]
    ceiling = nauc(eps, [1.0] * (len(eps) - 1) + [0.5])
    assert ceiling == pytest.approx(1 - h / 4, abs=1e-12)


# ---------------------------------------------------------------------- the benchmark's hand-written parts
def test_figure3_settings_follow_the_config(tmp_path):
    import yaml

    from advrep.config import resolve

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert B.figure3_settings() == resolve(cfg)["voronoi"]["figure3"]
    assert B.figure3_settings()["madry_eps"] == planes.PAPER["madry_eps"]
    cfg["voronoi"]["figure3"]["eval_steps"] = 777
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert B.figure3_settings(tmp_path / "c.yaml")["eval_steps"] == 777


def test_row_space_model_is_the_same_function_and_norms():
    torch.manual_seed(0)
    model = planes.make_model(502, 100, seed=3).eval()
    rs = B.RowSpaceModel(model)
    assert rs.rank == 100 and rs.dim == 502
    _, _, x_te, y_te = _data(500)
    u = planes.embed(x_te)
    w = rs.project(u)
    with torch.no_grad():
        assert torch.allclose(rs(w), model(u), atol=1e-4, rtol=1e-5)
        dw = torch.randn_like(w) * 0.01
        lifted = rs.lift(u, w, w + dw)
        assert torch.allclose((lifted - u).norm(dim=1), dw.norm(dim=1), rtol=1e-5)
        assert torch.allclose(model(lifted), rs(w + dw), atol=1e-4, rtol=1e-5)
        # a perturbation orthogonal to the rows of fc1 changes nothing: the row space is all that matters
        v = torch.randn_like(u)
        v = v - (v.double() @ rs.q @ rs.q.T).float()
        assert torch.allclose(model(u + 0.01 * v), model(u), atol=1e-4)
    small = planes.make_model(12, 100, seed=3).eval()
    assert B.RowSpaceModel(small).rank == 12  # full rank: a rotation, nothing dropped
    with pytest.raises(ValueError, match="make_model"):
        B.RowSpaceModel(nn.Sequential(nn.Linear(3, 2)))


def test_rowspace_pgd_gives_the_verdicts_of_pgd_on_the_model(settings, tmp_path):
    """Zero-start PGD on the row-space model and on the model itself follow the same iterates (the input gradient
    lies in the row space), so the per-sample verdicts agree (up to float rounding at the boundary)."""
    from advrep.evaluate import robust_accuracy_at

    model, _ = _trained("Madry", 500, settings, tmp_path, "PGDAT")
    _, _, x_te, y_te = _data(500)
    u, y = planes.embed(x_te), torch.from_numpy(y_te)
    eps = [0.0, 0.6, 0.8, 0.9, 1.0]
    broken = B.rowspace_broken(model, u, y, eps, lambda e: [("pgd", {"steps": 20, "alpha": 0.1 * e,
                                                                      "random_start": False})], span=planes.SPAN)
    direct = ~robust_accuracy_at(model, u, y, [e / planes.SPAN for e in eps],
                                 [("pgd", {"steps": 20, "alpha_per_eps": 0.1, "random_start": False})], norm="l2")
    assert (B.closure(direct) != broken).sum() <= 2
    assert broken[-1].mean() > 0.3 and not broken[0].any()


def test_line_search_finds_the_first_grid_point_past_a_known_boundary():
    """A linear model with boundary a.x = b: along a unit direction d (a.d > 0) the boundary is (b - a.x)/(a.d)
    away; the search returns the first grid point at or beyond it, over all directions the nearest, 0 for
    misclassified samples and inf when no ray reaches the boundary within the grid."""
    torch.manual_seed(0)
    dim = 6
    a = torch.randn(dim, dtype=torch.float64)
    a /= a.norm()
    b = 1.0
    model = nn.Linear(dim, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros(dim, dtype=torch.float64), a]))
        model.bias.copy_(torch.tensor([0.0, -b], dtype=torch.float64))
    x = torch.randn(50, dim, dtype=torch.float64) * 0.3
    y = (x @ a > b).long()  # labels of the model itself: none misclassified ...
    y[:3] = 1 - y[:3]  # ... but these three
    dirs = torch.randn(50, 3, dim, dtype=torch.float64)
    dirs /= dirs.norm(dim=2, keepdim=True)
    grid = np.arange(1, 501) / 100.0  # (0, 5]
    dist, which = B.line_search_distance(model, x, y, dirs, grid)
    gap = (b - x @ a)[:, None] / (dirs @ a)  # signed distance to the boundary along each ray
    reach = torch.where(gap > 0, gap, torch.full_like(gap, math.inf))
    for i in range(50):
        if i < 3:
            assert dist[i] == 0 and which[i] == -1
            continue
        true = float(reach[i].min())
        if true > grid[-1]:
            assert dist[i] == math.inf and which[i] == -1
        else:
            assert true - 1e-12 <= dist[i] <= true + 0.01 + 1e-12
            assert float(reach[i, which[i]]) <= dist[i] + 1e-12
    assert np.isfinite(dist[3:]).sum() >= 10 and np.isinf(dist).sum() >= 5
    with pytest.raises(ValueError, match="t_grid"):
        B.line_search_distance(model, x, y, dirs, [0.0, 1.0])


def test_planes_directions_point_across_and_to_the_other_corners():
    x_tr, y_tr, x_te, y_te = _data(10)
    d = B.directions(x_te, y_te, x_tr, y_tr, k=4)
    assert d.shape == (len(x_te), 5, x_te.shape[1])
    assert np.allclose(np.linalg.norm(d, axis=2), 1)
    up = np.where(y_te == 0, 1.0, -1.0)
    assert np.allclose(d[:, 0, -1], up) and np.allclose(d[:, 0, :-1], 0)  # straight across, along x_d
    # the other four: sqrt(5) along each reaches one of the other plane's corners of the cell
    ends = x_te[:, None].astype(np.float64) + math.sqrt(5) * d[:, 1:]
    hit = _dists(ends.reshape(-1, x_te.shape[1]), x_tr).min(1)
    assert np.allclose(hit, 0, atol=1e-5)


def test_distance_verdicts_and_closure():
    eps = np.linspace(0, 1, 11)
    dist = np.array([0.0, 0.3, 0.30000000000000004, 1.0, np.inf, 0.95])
    br = B.from_distance(dist, eps)
    assert br.shape == (11, 6)
    assert br[:, 0].all() and not br[:, 4].any()
    assert br[3, 1] and br[3, 2] and not br[2, 1]  # broken from the grid point equal to its distance on
    assert br[-1, 3] and not br[-2, 3] and br[-1, 5] and not br[-2, 5]
    raw = np.array([[0, 0], [1, 0], [0, 1], [0, 0]], bool)
    assert B.closure(raw).tolist() == [[0, 0], [1, 0], [1, 1], [1, 1]]


def test_today_per_sample_is_evaluate_one(settings, tmp_path):
    model, _ = _trained("Madry", 10, settings, tmp_path, "PGDAT")
    _, _, x_te, y_te = _data(10)
    ok = B.today_per_sample(model, x_te, y_te, settings)
    assert ok.shape == (len(settings.eval_eps), len(y_te)) and ok.dtype == bool
    assert np.array_equal(ok.mean(1), planes.evaluate_one(model, x_te, y_te, settings))


# ------------------------------------------------------------------- the gradient-free probes of evaluate_one
def _dead_relu_model(dim: int, at: float = 0.6) -> nn.Module:
    """Class 1 where x_d > ``at`` (PLANES units), else class 0 (tied logits, argmax 0); on the x_d = 0 plane its
    only hidden unit is off, so the input gradient there is exactly 0: FGM and PGD cannot move those points."""
    lin1, lin2 = nn.Linear(dim, 1), nn.Linear(1, 2)
    with torch.no_grad():
        lin1.weight.zero_()
        lin1.weight[0, -1] = 1.0
        lin1.bias.fill_(-at)
        lin2.weight.copy_(torch.tensor([[0.0], [10.0]]))
        lin2.bias.zero_()
    return nn.Sequential(planes.Unembed(), lin1, nn.ReLU(), lin2).eval()


def test_line_search_breaks_what_zero_gradients_hide(settings):
    x_tr, y_tr, x_te, y_te = _data(10)
    model = _dead_relu_model(x_te.shape[1])
    with torch.no_grad():
        assert (model(planes.embed(x_te)).argmax(1).numpy() == y_te).all()
    s = dataclasses.replace(settings, eval_eps_points=21, eval_line_points=0)
    eps = np.asarray(s.eval_eps)
    grad_only = planes.evaluate_one(model, x_te, y_te, s)
    assert (grad_only == 1.0).all()  # the gradient attacks see nothing: class 0 has zero gradient, class 1 is 1.4 away
    with_line = planes.evaluate_one(model, x_te, y_te, dataclasses.replace(s, eval_line_points=100))
    # class 0 breaks once x_d passes 0.6 (the first probe beyond: 0.61); class 1 (1.4 from the boundary) never does
    assert np.allclose(with_line[eps < 0.6 - 1e-9], 1.0) and np.allclose(with_line[eps > 0.61], 0.5)
    assert nauc(eps, with_line) < nauc(eps, grad_only) - 0.15
    broken = planes.line_search_broken(model, x_te, y_te, eps, 100)
    assert broken.shape == (len(eps), len(y_te)) and not broken[:, y_te == 1].any()
    assert (np.diff(broken.astype(int), axis=0) >= 0).all()  # broken at eps => at every larger eps


def test_across_points_straight_to_the_other_plane():
    _, _, x_te, y_te = _data(10)
    d = planes.across(x_te, y_te)
    assert np.allclose(d[:, -1], np.where(y_te == 0, 1.0, -1.0)) and np.allclose(d[:, :-1], 0)


def test_default_figure3_evaluation_has_the_probes_and_a_grid_that_can_reach_the_paper(settings):
    """The config's figure3 evaluation includes the gradient-free probes, and its grid can show the paper's 0.99:
    the highest NAUC on the grid (acc 1 up to the last point, 1/2 there), widened by one unit of 0.99's last
    digit, reaches it."""
    s = planes._settings(B.figure3_settings())
    assert s.eval_line_points >= 100
    eps = s.eval_eps
    assert nauc(eps, [1.0] * (len(eps) - 1) + [0.5]) + 0.01 >= 0.99
