"""Shared attack mechanics: projections are projections, iterates never leave the ball or the box."""

import pytest
import torch
from torch import nn

from advrep.attacks.core import (CallCounter, clamp_box, eval_mode, lp_norm, maximize, project, random_start,
                                 steepest_ascent)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_project_is_the_euclidean_projection(norm):
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(64, 3, 4, 4, generator=g)
    eps = torch.rand(64, generator=g) * 2
    p = project(delta, eps, norm)
    assert (lp_norm(p, norm) <= eps + 1e-6).all()
    inside = lp_norm(delta, norm) <= eps
    assert torch.equal(p[inside], delta[inside])  # points inside are fixed
    assert torch.allclose(project(p, eps, norm), p)  # idempotent
    # no other point of the ball is closer (checked against random feasible points)
    for _ in range(20):
        q = project(torch.randn(64, 3, 4, 4, generator=g) * 3, eps, norm)
        assert ((delta - p).flatten(1).norm(dim=1) <= (delta - q).flatten(1).norm(dim=1) + 1e-5).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_and_steepest_ascent(norm):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(128, 1, 5, 5, generator=g)
    d = random_start(x, 0.3, norm, g)
    assert (lp_norm(d, norm) <= 0.3 + 1e-6).all() and ((x + d) >= 0).all() and ((x + d) <= 1).all()
    grad = torch.randn(128, 1, 5, 5, generator=g)
    s = steepest_ascent(grad, norm)
    assert torch.allclose(lp_norm(s, norm), torch.ones(128))
    # it maximises <grad, s> over the unit ball: better than random unit directions
    r = steepest_ascent(torch.randn(128, 1, 5, 5, generator=g), norm)
    assert ((grad * s).flatten(1).sum(1) >= (grad * r).flatten(1).sum(1) - 1e-5).all()


def test_clamp_box():
    x = torch.tensor([[0.0, 0.5, 1.0]])
    assert torch.allclose(x + clamp_box(x, torch.tensor([[-0.2, 0.7, 0.3]])), torch.tensor([[0.0, 1.0, 1.0]]))


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_maximize_stays_feasible_and_increases_the_loss(norm, eps):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 3))
    x = torch.rand(16, 3, 4, 4)
    y = torch.randint(0, 3, (16,))
    loss = lambda z: nn.functional.cross_entropy(model(z), y, reduction="none")  # noqa: E731
    seen = []

    def check(step, xa):
        assert (lp_norm(xa - x, norm) <= eps + 1e-6).all() and xa.min() >= 0 and xa.max() <= 1
        seen.append(step)

    xa = maximize(loss, x, eps=eps, alpha=eps / 4, steps=10, norm=norm, init=None, on_step=check)
    assert seen == list(range(10))
    assert loss(xa).mean() > loss(x).mean()


def test_eval_mode_restores_and_counter_counts():
    m = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    m.train()
    with eval_mode(m):
        assert not m.training
    assert m.training
    c = CallCounter(m, batch_size=4)
    c(torch.zeros(4, 2))
    c.active = torch.tensor([True, False, True, False])
    c(torch.zeros(2, 2))
    assert c.counts.tolist() == [2, 1, 2, 1]
