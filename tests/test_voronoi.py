"""Voronoi constraints: neighbour search, the constrained attack never leaves the cell, exact L2 projection."""

import numpy as np
import pytest
import torch
from torch import nn

from advrep.voronoi.constraints import cell_violation, other_class_neighbours, project_onto_cell, voronoi_attack


def _two_d(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
    y = (x[:, 1] > 0.4 * np.sin(3 * x[:, 0])).astype(np.int64) + 2 * (x[:, 0] > 0.5)
    return x, y


def test_neighbours_match_brute_force():
    x, y = _two_d()
    m = 5
    idx = other_class_neighbours(x, y, x, y, m)
    classes = np.unique(y)
    assert idx.shape == (len(x), m * (len(classes) - 1))
    for i in range(0, len(x), 17):
        want = []
        for c in classes:
            if c == y[i]:
                continue
            members = np.flatnonzero(y == c)
            d = np.linalg.norm(x[members] - x[i], axis=1)
            want += list(members[np.argsort(d, kind="stable")[:m]])
        assert set(idx[i]) == set(want)
        assert not (y[idx[i]] == y[i]).any()  # same-class samples impose no constraint


def test_cell_violation():
    x = torch.zeros(1, 2)
    z = torch.tensor([[[2.0, 0.0], [0.0, 4.0]]])
    assert cell_violation(torch.tensor([[0.9, 0.0]]), x, z).item() < 0
    assert cell_violation(torch.tensor([[1.1, 0.0]]), x, z).item() > 0
    assert cell_violation(torch.tensor([[1.0, 0.0]]), x, z).item() == pytest.approx(0.0)


def _brute_force_outside(x, y, xt, it, i):
    others = torch.from_numpy(x[y != y[i]])
    return bool(((it[i] - xt[i]).norm() > (it[i] - others).norm(dim=1) + 1e-5).any())


def _trained(x, y, classes):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, classes))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model


def test_heuristic_iterates_never_leave_the_brute_force_cell():
    """The paper's heuristic (m = 10 nearest of each other class, found once at x) on 2-D data with a trained model:
    no iterate ever leaves the cell that ALL other-class samples define, and it follows the exact check's path."""
    from advrep.voronoi.constraints import ExactCell

    x, y = _two_d()
    model = _trained(x, y, 4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    z = torch.from_numpy(x[other_class_neighbours(x, y, x, y, 10)])
    xh, path = voronoi_attack(model, xt, yt, z, steps=60, alpha=0.02, box=None, return_path=True)
    assert not any(_brute_force_outside(x, y, xt, it, i) for it in path for i in range(len(x)))
    assert ((xh - xt).norm(dim=1) > 0).float().mean() > 0.5  # the attack does move (points at a face cannot)
    assert model.training  # mode restored
    xe = voronoi_attack(model, xt, yt, ExactCell(xt, yt), steps=60, alpha=0.02, box=None)
    assert torch.allclose(xh, xe)


def test_exact_check_holds_even_for_wandering_iterates():
    """With an untrained model iterates wander away from the class boundary, where the m-nearest heuristic can
    miss far faces; the exact check never leaves the cell."""
    from advrep.voronoi.constraints import ExactCell

    x, y = _two_d()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 4))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    _, path = voronoi_attack(model, xt, yt, ExactCell(xt, yt), steps=60, alpha=0.02, box=None, return_path=True)
    assert not any(_brute_force_outside(x, y, xt, it, i) for it in path for i in range(len(x)))


def test_exact_projection_is_a_projection():
    rng = np.random.default_rng(1)
    x = np.zeros(3)
    z = rng.normal(size=(6, 3)) * 2
    for _ in range(5):
        v = rng.normal(size=3) * 3
        u = project_onto_cell(v, x, z)
        assert (np.linalg.norm(u - x) <= np.linalg.norm(u - z, axis=1) + 1e-6).all()
        # no feasible point is closer to v (random feasible points: projections of random points... and x itself)
        for q in [x] + [project_onto_cell(rng.normal(size=3) * 3, x, z) for _ in range(5)]:
            assert np.linalg.norm(v - u) <= np.linalg.norm(v - q) + 1e-6
    inside = 0.1 * z[0]
    assert np.allclose(project_onto_cell(inside, x, z), inside, atol=1e-6)
