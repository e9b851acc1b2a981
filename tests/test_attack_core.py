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


def _plain_maximize(loss_fn, x, *, eps, alpha, steps, norm, init, generator=None):
    """The textbook loop, written out literally (one fresh tensor per operation): the reference for maximize."""
    from advrep.attacks.core import _per_sample, start_delta

    delta = start_delta(x, eps, norm, init, generator)
    for step in range(steps):
        delta = delta.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(x + delta).sum(), delta)
        a = alpha(step) if callable(alpha) else alpha
        delta = delta.detach() + _per_sample(a, x) * steepest_ascent(grad, norm)
        delta = clamp_box(x, project(delta, eps, norm))
    return (x + delta).detach()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("alpha_kind", ["float", "tensor", "callable"])
@pytest.mark.parametrize("init", ["random", None, "tensor"])
def test_maximize_iterates_equal_the_plain_loop_bit_for_bit(norm, alpha_kind, init):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.rand(32, 3, 6, 6)
    y = torch.randint(0, 5, (32,))
    eps = torch.rand(32) * (0.1 if norm == "linf" else 1.0)
    eps[:3] = 0.0  # a zero radius: the iterate must stay at x
    alpha = {"float": 0.013, "tensor": eps / 3, "callable": lambda s: 0.02 / (s + 1)}[alpha_kind]
    start = torch.randn_like(x) * 0.05 if init == "tensor" else init
    loss = lambda z: nn.functional.cross_entropy(model(z), y, reduction="none")  # noqa: E731
    ours = maximize(loss, x, eps=eps, alpha=alpha, steps=7, norm=norm, init=start,
                    generator=torch.Generator().manual_seed(5))
    ref = _plain_maximize(loss, x, eps=eps, alpha=alpha, steps=7, norm=norm, init=start,
                          generator=torch.Generator().manual_seed(5))
    assert torch.equal(ours, ref)
    assert torch.equal(ours[:3], x[:3])
    assert (lp_norm(ours - x, norm) <= eps + 1e-6).all() and ours.min() >= 0 and ours.max() <= 1


class _Tap(torch.autograd.Function):
    """Identity that counts the backward passes through it."""

    @staticmethod
    def forward(ctx, out, counter):
        ctx.counter = counter
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        ctx.counter.backward_passes += 1
        return grad, None


class _Counting(nn.Module):
    """Counts forward passes (with their batch sizes) and backward passes of the wrapped model."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.forwards: list[tuple[int, bool]] = []  # (batch size, with a graph)
        self.backward_passes = 0

    def forward(self, z):
        out = self.model(z)
        self.forwards.append((z.shape[0], out.requires_grad))
        return _Tap.apply(out, self) if out.requires_grad else out


def test_maximize_does_exactly_one_forward_and_one_backward_per_step():
    torch.manual_seed(0)
    model = _Counting(nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 3)))
    x = torch.rand(8, 3, 4, 4)
    y = torch.randint(0, 3, (8,))
    maximize(lambda z: nn.functional.cross_entropy(model(z), y, reduction="none"), x, eps=0.1, alpha=0.02,
             steps=6, init="random")
    assert model.forwards == [(8, True)] * 6 and model.backward_passes == 6
    # gradients flow only into the perturbation: the weights get none
    assert all(p.grad is None for p in model.parameters())


def test_pgd_spends_k_gradient_passes_plus_the_clean_check_and_the_final_verdict():
    from advrep.attacks import run_attack

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.rand(64, 3, 4, 4)
    with torch.no_grad():
        y = net(x).argmax(1)  # all correct at x
    model = _Counting(net)
    k = 7
    r = run_attack("pgd", model, x, y, eps=1e-6, steps=k)  # nothing can break: every sample runs all k steps
    assert not r.success.any()
    # clean check (no graph), k forward+backward passes on the whole batch, one verdict at the final iterate
    assert model.forwards == [(64, False)] + [(64, True)] * k + [(64, False)]
    assert model.backward_passes == k
    assert r.model_calls.tolist() == [k + 1] * 64
    assert torch.equal(r.success, model.model(r.x_adv).argmax(1) != y)
