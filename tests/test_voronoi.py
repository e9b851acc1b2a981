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


# ---------------------------------------------------------------- neighbours computed once per training set


def _brute_force_neighbours(x, y, m):
    d = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=2)
    out = []
    for i in range(len(x)):
        row = []
        for c in np.unique(y):
            if c != y[i]:
                members = np.flatnonzero(y == c)
                row += list(members[np.argsort(d[i, members], kind="stable")[:m]])
        out.append(row)
    return np.array(out)


def test_all_neighbours_match_brute_force_and_are_cached_on_disk(tmp_path, monkeypatch):
    from advrep.voronoi.constraints import NeighbourIndex

    x, y = _two_d()
    m = 4
    index = NeighbourIndex(x, y)
    nb = index.all_neighbours(m, cache_dir=tmp_path, chunk=37)  # chunks that do not divide the set
    want = _brute_force_neighbours(x, y, m)
    assert nb.shape == want.shape == (len(x), m * 3)
    assert all(set(a) == set(b) for a, b in zip(nb, want))
    assert np.array_equal(nb, index.query(x, y, m))  # the table is the per-batch query, answered once
    for p in (2.0, float("inf")):
        d = index.neighbour_distances(m, p, cache_dir=tmp_path)
        assert np.allclose(d, np.linalg.norm(x[:, None, :] - x[nb], ord=p, axis=2), rtol=1e-6, atol=1e-7)
    files = sorted(f.name for f in tmp_path.iterdir())
    assert len(files) == 3 and all(f.startswith("voronoi-") and f.endswith(".npy") for f in files)

    # a resumed run (new index over the same data) reads the files instead of searching
    again = NeighbourIndex(x, y)
    monkeypatch.setattr(NeighbourIndex, "query", lambda *a, **k: pytest.fail("searched again despite the cache"))
    assert np.array_equal(again.all_neighbours(m, cache_dir=tmp_path), nb)
    assert np.array_equal(again.neighbour_distances(m, 2.0, cache_dir=tmp_path), index.neighbour_distances(m, 2.0))
    monkeypatch.undo()
    # other data, other labels or another m: other files
    x2 = x.copy()
    x2[0, 0] += 1e-3
    y2 = y.copy()
    y2[0] = (y2[0] + 1) % 4
    assert len({NeighbourIndex(x2, y).fingerprint(), NeighbourIndex(x, y2).fingerprint(), index.fingerprint()}) == 3
    NeighbourIndex(x2, y).all_neighbours(m, cache_dir=tmp_path)
    index.all_neighbours(m + 1, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 5
    # a damaged cache file is recomputed, not trusted
    path = index.cache_file(tmp_path, f"neighbours-m{m}")
    np.save(path, np.zeros((3, 3), dtype=np.int64))
    assert np.array_equal(NeighbourIndex(x, y).all_neighbours(m, cache_dir=tmp_path), nb)


@pytest.mark.parametrize("p", [2.0, float("inf")])
def test_skipping_far_constraints_never_changes_the_decision(p):
    """NeighbourCells checks only constraints within reach (triangle inequality); its decision equals the full
    check (cell_violation <= 0) for iterates at every distance from x, including points on the faces."""
    from advrep.voronoi.constraints import NeighbourCells

    g = torch.Generator().manual_seed(0)
    b, k, dim = 64, 12, 20
    x = torch.rand(b, dim, generator=g)
    z = torch.rand(b, k, dim, generator=g)
    cells = NeighbourCells.from_samples(z, x, p)
    checked = 0
    for r in (0.01, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0):
        u = x + r * (2 * torch.rand(b, dim, generator=g) - 1)
        full = cell_violation(u, x, z, p) <= 0
        assert torch.equal(cells.inside(u), full)
        rows = torch.arange(0, b, 3)
        assert torch.equal(cells.inside(u[rows], rows), full[rows])
        checked += int(full.sum())
    assert 0 < checked < 7 * b  # both outcomes occur
    # on the segment from x to a neighbour the triangle inequality is tight: just before / beyond its midpoint
    for t in (0.45, 0.499, 0.501, 0.55):
        u = x + t * (z[:, 3] - x)
        full = cell_violation(u, x, z, p) <= 0
        assert torch.equal(cells.inside(u), full)
        if t > 0.5:
            assert not full.any()
    # iterates exactly on a bisector (L2): on the face counts as inside, like cell_violation
    if p == 2.0:
        mid = (x + z[:, 0]) / 2
        assert torch.equal(cells.inside(mid), cell_violation(mid, x, z, p) <= 0)


@pytest.mark.parametrize("p", [2.0, float("inf"), 1.0])
def test_path_bounds_never_change_the_decision_along_random_walks(p):
    """check_step (constraints skipped while the path since their last check is shorter than the distance to their
    face) decides every step of random walks exactly like the full check, with steps of every size, subsets of
    samples per step, and rejected steps (the walk goes on from the last accepted iterate)."""
    from advrep.voronoi.constraints import NeighbourCells

    g = torch.Generator().manual_seed(1)
    b, k, dim = 48, 10, 16
    x = torch.rand(b, dim, generator=g)
    z = torch.rand(b, k, dim, generator=g)
    z[0, 0] = x[0]  # a duplicate of x in another class: a constraint that always holds
    cells = NeighbourCells.from_samples(z, x, p)
    last = x.clone()
    decided = torch.zeros(2, dtype=torch.long)
    for step in range(120):
        rows = torch.randperm(b, generator=g)[: int(torch.randint(1, b + 1, (), generator=g))]
        if step % 4 == 0:
            rows = torch.arange(b)  # passed as None: all samples
        size = 0.1 ** (0.5 * float(torch.randint(1, 5, (), generator=g)))  # 0.32 ... 0.01
        toward = z[rows, int(torch.randint(k, (), generator=g))] - x[rows]  # drift toward a face
        u = last[rows] + size * (torch.randn(len(rows), dim, generator=g) / dim ** 0.5 + 0.5 * toward)
        ok = cells.check_step(u, None if step % 4 == 0 else rows)
        assert torch.equal(ok, cell_violation(u, x[rows], z[rows], p) <= 0), step
        last[rows[ok]] = u[ok]
        decided += torch.stack([ok.sum(), (~ok).sum()])
    assert decided.min() > 20  # both outcomes, many times
    cells.start()  # a new path from x
    assert torch.equal(cells.check_step(x + 0.0), torch.ones(b, dtype=torch.bool))


def _indexed_ctx(index):
    from advrep.train import EpochContext

    c = EpochContext()
    c.index = index
    return c


@pytest.mark.parametrize("p", [2.0, float("inf")])
def test_cached_neighbours_give_the_same_adversarial_examples_as_per_batch_queries(p):
    from advrep.voronoi.constraints import NeighbourIndex
    from advrep.voronoi.training import VoronoiAT

    x, y = _two_d()
    model = _trained(x, y, 4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    obj = VoronoiAT(NeighbourIndex(x, y), m=10, steps=40, alpha=0.02, step_norm="l2", p=p, box=None)
    rows = torch.from_numpy(np.random.default_rng(0).choice(len(x), 128, replace=False))
    queried = obj.perturb(model, xt[rows], yt[rows], None)
    assert not obj.index._neighbours  # the per-batch path builds no table
    cached = obj.perturb(model, xt[rows], yt[rows], _indexed_ctx(rows))
    assert obj.index._neighbours  # ... the indexed one does
    assert torch.equal(cached, queried)
    assert ((cached - xt[rows]).norm(dim=1) > 0).float().mean() > 0.5
    assert not torch.equal(cached, xt[rows])
    # "augmented" rows (input != the training sample at its index) are searched per batch, like unindexed inputs
    xa = xt[rows].clone()
    xa[::2] += 0.03
    assert torch.equal(obj.perturb(model, xa, yt[rows], _indexed_ctx(rows)), obj.perturb(model, xa, yt[rows], None))
    with pytest.raises(ValueError, match="outside the training set"):
        obj.perturb(model, xt[rows], yt[rows], _indexed_ctx(rows + len(x)))


def test_exact_constraint_option_never_leaves_the_brute_force_cell():
    from advrep.voronoi.constraints import ExactCell, NeighbourIndex
    from advrep.voronoi.training import VoronoiAT

    x, y = _two_d()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 4))  # untrained: iterates wander
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    obj = VoronoiAT(NeighbourIndex(x, y), m=2, steps=60, alpha=0.02, box=None, constraint="exact")
    assert isinstance(obj.cells(xt, yt), ExactCell)
    adv, path = obj.perturb(model, xt, yt, _indexed_ctx(torch.arange(len(x))), return_path=True)
    assert not any(_brute_force_outside(x, y, xt, it, i) for it in path for i in range(len(x)))
    assert ((adv - xt).norm(dim=1) > 0).float().mean() > 0.5
    # the m = 2 heuristic lets some of the same iterates out: the option matters here
    heur = VoronoiAT(NeighbourIndex(x, y), m=2, steps=60, alpha=0.02, box=None)
    _, hpath = heur.perturb(model, xt, yt, None, return_path=True)
    assert any(_brute_force_outside(x, y, xt, it, i) for it in hpath for i in range(len(x)))
    with pytest.raises(ValueError, match="L2"):
        VoronoiAT(NeighbourIndex(x, y), steps=1, alpha=0.1, p=float("inf"), constraint="exact")
    with pytest.raises(ValueError, match="constraint must be"):
        VoronoiAT(NeighbourIndex(x, y), steps=1, alpha=0.1, constraint="nearest")


@pytest.mark.parametrize("constraint", ["m_nearest", "exact"])
def test_projected_steps_stay_in_the_cell_and_go_on(constraint):
    """on_violation='project': a step leaving the cell is replaced by its QP projection onto the cell; iterates
    never leave the cell (the m-nearest one, or the brute-force one for 'exact'), and samples keep moving along the
    faces where the stopping rule would have frozen them."""
    from advrep.voronoi.constraints import NeighbourIndex
    from advrep.voronoi.training import VoronoiAT

    x, y = _two_d(60)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 4))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    index = NeighbourIndex(x, y)
    kw = dict(m=3, steps=10, alpha=0.08, box=None, constraint=constraint)
    stop, stop_path = VoronoiAT(index, **kw).perturb(model, xt, yt, return_path=True)
    proj, path = VoronoiAT(index, on_violation="project", **kw).perturb(model, xt, yt, return_path=True)
    if constraint == "exact":
        assert not any(_brute_force_outside(x, y, xt, it, i) for it in path for i in range(len(x)))
    else:
        z = torch.from_numpy(x[index.query(x, y, 3)])
        assert max(float(cell_violation(it, xt, z).max()) for it in path) <= 1e-6
    # stopped samples froze at their last iterate; projected ones went on along the faces
    assert ((proj - stop).norm(dim=1) > 1e-3).sum() >= 5
    moving = [int(((p[-1] - p[-2]).norm(dim=1) > 0).sum()) for p in (path, stop_path)]
    assert moving[0] >= moving[1] + 5
    with pytest.raises(ValueError, match="L2"):
        VoronoiAT(index, steps=1, alpha=0.1, p=float("inf"), on_violation="project")


def test_voronoi_training_with_indices_equals_per_batch_search_and_resumes_bit_identically(tmp_path):
    """fit() with an index-yielding loader: the cached route trains the very same weights as the per-batch search,
    and a run killed mid-epoch resumes to the uninterrupted run's weights bit for bit."""
    from torch.utils.data import DataLoader, TensorDataset

    from advrep.train import Hook, fit
    from advrep.train.loop import IndexedDataset
    from advrep.voronoi.constraints import NeighbourIndex
    from advrep.voronoi.training import VoronoiAT

    x, y = _two_d(200)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    index = NeighbourIndex(x, y)

    def run(tmp, indexed, objective=None):
        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 4))
        data = IndexedDataset(TensorDataset(xt, yt)) if indexed else TensorDataset(xt, yt)
        objective = objective or VoronoiAT(index, m=5, steps=8, alpha=0.05, box=None, cache_dir=tmp_path / "nb")
        return fit(model, DataLoader(data, batch_size=32, shuffle=True), objective=objective, epochs=3, seed=1,
                   optimizer={"name": "adam", "lr": 0.01}, checkpoint_dir=tmp, progress=False)

    queried = run(tmp_path / "q", indexed=False)
    cached = run(tmp_path / "c", indexed=True)
    assert len(list((tmp_path / "nb").iterdir())) == 2  # neighbours and their L2 distances, cached once
    base = VoronoiAT(index, m=5, steps=8, alpha=0.05, box=None, cache_dir=tmp_path / "nb")

    def killer(model, xb, yb, c):
        assert c.index is not None
        if c.epoch == 1 and c.batch == 3:
            raise RuntimeError("killed")
        return base(model, xb, yb, c)

    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "k", indexed=True, objective=Hook(killer))
    resumed = run(tmp_path / "k", indexed=True)
    assert resumed.resumed_from == 1
    for other in (queried, resumed):
        a, b = cached.model.state_dict(), other.model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert [h["loss"] for h in other.history] == [h["loss"] for h in cached.history]
