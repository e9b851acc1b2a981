"""The sonet paper's ODE models (``advrep.models.ode``): the skew-symmetric block and its stability theorem,
torchdiffeq's solvers as the paper uses them, nfe counts and accepted grids, solver swaps, adjoint gradients,
failures, and the registered ``sonet`` / ``soblock`` / ``odenet``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchdiffeq import odeint

from advrep.models import create_model, model_info
from advrep.models.ode import (ODESolverError, SkewConvBlock, SkewConvFunc, SkewLinearFunc, SolverSettings, SONet,
                               nfe, ode_blocks, record_grids, repeat_channels, reset_nfe, solver_override,
                               with_solver)
from advrep.models.resnet import BasicBlock

ODE_MODELS = ["sonet", "soblock", "odenet"]
IMAGE_SHAPES = [(1, 28, 28), (3, 32, 32)]


def small_sonet(**kw) -> nn.Module:
    """A 1-channel 16x16 SONet of width 2 (6 ODE blocks: stem, 4 stages, head), seeded."""
    torch.manual_seed(0)
    return create_model("sonet", in_shape=(1, 16, 16), num_classes=10, width=2, seed=0, **kw)


def flat_jacobian(field, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The Jacobian of ``(y, z) -> field(0, (y, z))`` as one square matrix over the flattened state."""
    ny = y.numel()

    def flat(w):
        dy, dz = field(torch.tensor(0.0), (w[:ny].view_as(y), w[ny:].view_as(z)))
        return torch.cat([dy.flatten(), dz.flatten()])

    return torch.autograd.functional.jacobian(flat, torch.cat([y.flatten(), z.flatten()]))


def free_field(f: SkewConvFunc, w2: torch.Tensor):
    """Eq. (3) without the theorem's condition: ``W2`` is an independent kernel instead of ``-W1^T``."""

    def field(t, state):
        y, z = state
        dy = F.leaky_relu(f.conv(z) - f.gamma * y, 0.01)
        dz = F.leaky_relu(F.conv_transpose2d(y, w2, stride=f.stride, padding=1) - f.gamma * z, 0.01)
        return dy, dz

    return field


# --------------------------------------------------------------------------------------- the skew block itself

def test_skew_block_has_half_the_conv_weights_of_a_basic_block():
    for c in (8, 16, 64):
        skew = SkewConvBlock(c, c, 1)
        basic = BasicBlock(c, c, 1)
        basic_conv = sum(m.weight.numel() for m in basic.modules() if isinstance(m, nn.Conv2d))
        skew_conv = skew.func.kernel.numel()            # the only conv weight: W and W^T share it
        assert basic_conv == 2 * 9 * c * c and skew_conv == 9 * c * c
        assert 2 * skew_conv == basic_conv
        assert [n for n, _ in skew.named_parameters() if "norm" not in n] == ["func.kernel"]


@pytest.mark.parametrize("cin,cout,stride,size", [(3, 5, 1, 6), (4, 6, 2, 8), (4, 6, 2, 7), (6, 4, 2, 5)])
def test_conv_transpose_is_the_adjoint_of_conv(cin, cout, stride, size):
    """<W u, v> = <u, W^T v> to float64 precision, so A = [[0, -W^T], [W, 0]] has <A w, w> = 0 for every w; on odd
    sizes too (output_padding)."""
    torch.manual_seed(1)
    f = SkewConvFunc(cin, cout, stride).double()
    for _ in range(3):
        u = torch.randn(2, cin, size, size, dtype=torch.float64)
        wu = f.conv(u)
        v = torch.randn_like(wu)
        wtv = f.conv_t(v, u.shape[-2:])
        assert wtv.shape == u.shape
        lhs, rhs = (wu * v).sum(), (u * wtv).sum()
        assert abs(lhs - rhs) <= 1e-12 * (wu.norm() * v.norm())
        # <A w, w> for w = (y, z) with y in the output space, z in the input space
        y, z = torch.randn_like(wu), torch.randn_like(u)
        a_y, a_z = f.conv(z), -f.conv_t(y, z.shape[-2:])
        assert abs((a_y * y).sum() + (a_z * z).sum()) <= 1e-12 * (y.norm() ** 2 + z.norm() ** 2)


def test_linear_part_is_a_skew_symmetric_matrix():
    torch.manual_seed(2)
    f = SkewConvFunc(2, 3, 2).double()
    y, z = torch.randn(1, 3, 2, 2, dtype=torch.float64), torch.randn(1, 2, 4, 4, dtype=torch.float64)
    a = flat_jacobian(lambda t, s: (f.conv(s[1]), -f.conv_t(s[0], s[1].shape[-2:])), y, z)
    assert a.shape == (12 + 32, 12 + 32) and a.abs().max() > 0.05
    torch.testing.assert_close(a, -a.T, rtol=0, atol=1e-14)


@pytest.mark.parametrize("stride", [1, 2])
def test_stability_theorem_eigenvalues(stride):
    """Bare field (norm=False), random weights and states, LeakyReLU (sigma' in {0.01, 1} > 0), gamma > 0: every
    eigenvalue of J = D (A - gamma I) has real part in [-gamma, -0.01 gamma] (J ~ D^1/2 (A - gamma I) D^1/2, whose
    Hermitian part is -gamma D).  The same field with an independent W2 has eigenvalues with positive real part."""
    gamma, n_pos = 0.1, 0
    for seed in range(4):
        torch.manual_seed(seed)
        f = SkewConvFunc(2, 3, stride, gamma=gamma, norm=False).double()
        z = torch.randn(1, 2, 4, 4, dtype=torch.float64)
        y = torch.randn(1, 3, 4 // stride, 4 // stride, dtype=torch.float64)
        with torch.no_grad():
            re = torch.linalg.eigvals(flat_jacobian(f, y, z)).real
        assert re.max() <= -0.01 * gamma + 1e-10
        assert re.min() >= -gamma - 1e-10
        w2 = torch.empty_like(f.kernel)
        nn.init.kaiming_uniform_(w2, a=math.sqrt(5))
        with torch.no_grad():
            re_free = torch.linalg.eigvals(flat_jacobian(free_field(f, w2), y, z)).real
        n_pos += int(re_free.max() > 0.05)
    assert n_pos >= 1


def test_stability_theorem_trajectories_stay_close():
    """Two nearby initial states of the bare skew block stay within a bounded factor of their initial distance over
    [0, 10]; with an independent W2 (same weights' scale) they separate by orders of magnitude."""
    t = torch.linspace(0, 10, 21, dtype=torch.float64)
    ratios_skew, ratios_free = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        f = SkewConvFunc(2, 3, 1, gamma=0.1, norm=False).double()
        w2 = torch.empty_like(f.kernel)
        nn.init.kaiming_uniform_(w2, a=math.sqrt(5))
        with torch.no_grad():
            f.kernel.mul_(4)
            w2.mul_(4)
            y, z = torch.randn(1, 3, 4, 4, dtype=torch.float64), torch.randn(1, 2, 4, 4, dtype=torch.float64)
            # both trajectories in one batch: one (shared) adaptive grid, so the solver's errors hardly enter the
            # distance between them
            y = torch.cat([y, y + 1e-4 * torch.randn_like(y)])
            z = torch.cat([z, z + 1e-4 * torch.randn_like(z)])
            for field, out in ((f, ratios_skew), (free_field(f, w2), ratios_free)):
                sol_y, sol_z = odeint(field, (y, z), t, rtol=1e-7, atol=1e-9, method="dopri5")
                diff = torch.cat([(sol_y[:, 0] - sol_y[:, 1]).flatten(1), (sol_z[:, 0] - sol_z[:, 1]).flatten(1)], 1)
                dist = diff.norm(dim=1)
                out.append((dist.max() / dist[0]).item())
    assert max(ratios_skew) < 10, ratios_skew                      # observed <= 6
    assert max(ratios_free) > 1000 and all(fr > sk for fr, sk in zip(ratios_free, ratios_skew)), ratios_free


def test_head_field_is_stable_too():
    """The authors' head (activation before the linear map) has J = [[-g, W D_z], [-W^T D_y, -g]], similar to a
    skew matrix minus g I: every eigenvalue has real part -g."""
    torch.manual_seed(3)
    f = SkewLinearFunc(12, 5, gamma=0.2).double()
    y, z = torch.randn(1, 12, dtype=torch.float64), torch.randn(1, 5, dtype=torch.float64)
    with torch.no_grad():
        re = torch.linalg.eigvals(flat_jacobian(f, y, z)).real
    torch.testing.assert_close(re, torch.full_like(re, -0.2), rtol=0, atol=1e-10)


def test_initial_state_repeats_channels_and_downsamples():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    assert [int(c) for c in repeat_channels(x, 8)[0, :, 0, 0] // 36] == [0, 1, 2, 0, 1, 2, 0, 1]
    assert torch.equal(repeat_channels(x, 2), x[:, :2])
    y0, z0 = SkewConvBlock(3, 8, 2).initial_state(x)
    assert z0 is x and torch.equal(y0, repeat_channels(x[:, :, ::2, ::2], 8))


# ---------------------------------------------------------------------------------------- torchdiffeq solvers

def test_torchdiffeq_rk4_is_the_three_eighths_rule():
    def f(t, y):
        return -y ** 2 + torch.sin(3 * t) * y

    t0, h, y0 = 0.3, 0.5, torch.tensor([0.8], dtype=torch.float64)
    t0_ = torch.tensor(t0, dtype=torch.float64)
    k1 = f(t0_, y0)
    k2 = f(t0_ + h / 3, y0 + h * k1 / 3)
    k3 = f(t0_ + 2 * h / 3, y0 + h * (k2 - k1 / 3))
    k4 = f(t0_ + h, y0 + h * (k1 - k2 + k3))
    three_eighths = y0 + h * (k1 + 3 * k2 + 3 * k3 + k4) / 8
    c2 = f(t0_ + h / 2, y0 + h * k1 / 2)
    c3 = f(t0_ + h / 2, y0 + h * c2 / 2)
    c4 = f(t0_ + h, y0 + h * c3)
    classical = y0 + h * (k1 + 2 * c2 + 2 * c3 + c4) / 6
    t = torch.tensor([t0, t0 + h], dtype=torch.float64)
    for options in ({"step_size": h}, SolverSettings("rk4", step_size=h).options()):
        got = odeint(f, y0, t, method="rk4", options=options)[-1]
        torch.testing.assert_close(got, three_eighths, rtol=0, atol=1e-15)
    assert (classical - three_eighths).abs() > 1e-6


def test_fixed_grid_counts_steps_exactly():
    grid = SolverSettings("rk4", step_size=0.05).options()["grid_constructor"]
    for dtype in (torch.float32, torch.float64):
        g = grid(None, None, torch.tensor([0.0, 1.0], dtype=dtype))
        assert len(g) == 21 and g[0] == 0 and g[-1] == 1 and (g.diff() > 0).all()
    g = grid(None, None, torch.tensor([1.0, 0.0]))                  # the adjoint pass integrates from 1 to 0
    assert len(g) == 21 and g[0] == 1 and g[-1] == 0 and (g.diff() < 0).all()
    g = SolverSettings("euler", step_size=0.3).options()["grid_constructor"](None, None, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(g, torch.tensor([0.0, 0.3, 0.6, 0.9, 1.0]))


# ------------------------------------------------------------------------------------------- nfe and grids

@pytest.mark.parametrize("solver,per_block", [("euler", 1), ("rk4", 4)])
def test_nfe_fixed_step_h1(solver, per_block):
    m = small_sonet(solver=solver)
    blocks = ode_blocks(m)
    assert len(blocks) == 6 and all(b.settings.step_size == 1.0 for b in blocks)
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        m(x)
        assert nfe(m) == per_block * len(blocks)
        assert [b.func.nfe for b in blocks] == [per_block] * len(blocks)
        m(x)
        assert nfe(m) == 2 * per_block * len(blocks)
    reset_nfe(m)
    assert nfe(m) == 0


def test_dopri5_grids_are_recorded_per_forward_and_block():
    m = small_sonet()
    blocks = ode_blocks(m)
    x = torch.rand(4, 1, 16, 16)
    with record_grids(m) as rec, torch.no_grad():
        m(x)
        m(x[:1])
    assert len(rec.grids) == 2 and all(len(fwd) == len(blocks) for fwd in rec.grids)
    assert rec.labels[0] == [b.label for b in blocks] == ["sonet.stem"] + [
        f"sonet.layer{i}.0" for i in range(1, 5)] + ["sonet.head"]
    for fwd, raw in zip(rec.grids, rec.raw):
        for g, r in zip(fwd, raw):
            assert g[0] == 0.0 and g[-1] == 1.0 and len(g) >= 2
            assert all(a < b for a, b in zip(g, g[1:]))
            assert r[:-1] == g[:-1] and r[-1] >= 1.0            # the last step may end past 1 (interpolated)
    assert rec.last is rec.grids[-1] and rec.steps()[0] == [len(g) - 1 for g in rec.grids[0]]
    assert all(b._recorder is None for b in blocks) and not m._forward_pre_hooks
    assert not any(hasattr(b.func, "callback_accept_step") for b in blocks)
    with record_grids(m) as rec, solver_override(m, "rk4", step_size=0.25), torch.no_grad():   # fixed grid
        m(x)
    assert rec.grids[0] == [[0.0, 0.25, 0.5, 0.75, 1.0]] * len(blocks)


def test_smaller_tol_takes_at_least_as_many_steps():
    torch.manual_seed(4)
    block = SkewConvBlock(2, 4, 1)
    x = torch.randn(2, 2, 8, 8)
    steps = []
    for tol in (0.1, 1e-2, 1e-3, 1e-4, 1e-5):
        block.settings = SolverSettings("dopri5", tol=tol)
        with record_grids(block) as rec, torch.no_grad():
            block(x)
        steps.append(rec.steps()[0][0])
    assert steps == sorted(steps) and steps[-1] > steps[0], steps
    m = small_sonet()
    totals = []
    for tol in (0.1, 1e-4):
        with record_grids(m) as rec, solver_override(m, tol=tol), torch.no_grad():
            m(torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
        totals.append(sum(rec.steps()[0]))
    assert totals[1] >= totals[0]


# ------------------------------------------------------------------------------------------------ solver swaps

def test_solver_override_restores_also_on_exception():
    m = small_sonet()
    before = [b.settings for b in ode_blocks(m)]
    x = torch.rand(2, 1, 16, 16)
    with solver_override(m, "euler") as same, torch.no_grad():
        assert same is m and all(b.settings.solver == "euler" and b.settings.tol == 0.1 for b in ode_blocks(m))
        reset_nfe(m)
        m(x)
        assert nfe(m) == 6
    assert [b.settings for b in ode_blocks(m)] == before
    with pytest.raises(KeyError):
        with solver_override(m, "rk4", step_size=0.5, adjoint=True):
            assert all(b.settings.step_size == 0.5 and b.settings.adjoint for b in ode_blocks(m))
            raise KeyError("boom")
    assert [b.settings for b in ode_blocks(m)] == before
    with pytest.raises(ValueError, match="unknown ODE solver"):
        with solver_override(m, "rk45"):
            pass
    assert [b.settings for b in ode_blocks(m)] == before


def test_with_solver_shares_parameters_and_agrees_on_a_fine_grid():
    m = small_sonet().eval()
    fine = with_solver(m, "rk4", step_size=0.05)
    precise = with_solver(m, "dopri5", tol=1e-4)
    for twin in (fine, precise):
        pairs = list(zip(m.parameters(), twin.parameters()))
        assert pairs and all(a is b and a.data_ptr() == b.data_ptr() for a, b in pairs)
        assert all(a is b for a, b in zip(m.buffers(), twin.buffers()))
    assert all(b.settings == SolverSettings() for b in ode_blocks(m))
    assert all(b.settings.solver == "rk4" and b.settings.step_size == 0.05 for b in ode_blocks(fine))
    x = torch.rand(3, 1, 16, 16)
    reset_nfe(fine)
    y_fine = fine(x)
    assert nfe(fine) == 6 * 20 * 4 and nfe(m) == 0
    with torch.no_grad():
        y_precise = precise(x)
        torch.testing.assert_close(y_fine, y_precise, rtol=0, atol=2e-2)   # observed <= 7e-3 (float32, 6 blocks)
        assert (with_solver(m, "rk4")(x) - y_precise).abs().max() > 0.1  # h = 1 is far off: the check discriminates
    y_fine.sum().backward()                                      # gradients land on the shared parameters
    assert all(p.grad is not None for p in m.parameters())


def test_adjoint_gradients_match_backprop():
    """odeint_adjoint (the adjoint ODE solved back from t = 1 on the same rk4 grid, the state reconstructed
    backwards) against backpropagation through the solver's steps: they differ by discretisation error only, which
    shrinks with the step (slower than h^4: LeakyReLU's kink makes the field only piecewise smooth)."""
    m = small_sonet(solver="rk4").double()
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errors = []
    for h in (0.05, 0.02):
        grads = []
        for adjoint in (False, True):
            with solver_override(m, step_size=h, adjoint=adjoint):
                assert all(b.settings.adjoint is adjoint for b in ode_blocks(m))
                m.zero_grad()
                xi = x.clone().requires_grad_(True)
                F.cross_entropy(m(xi), torch.tensor([1, 7])).backward()
                grads.append(torch.cat([xi.grad.flatten()] + [p.grad.flatten() for p in m.parameters()]))
        assert grads[0].abs().max() > 0
        errors.append(((grads[1] - grads[0]).norm() / grads[0].norm()).item())
    assert errors[1] < errors[0] and errors[1] < 1e-2, errors        # observed 7e-3, then 2e-3


# ------------------------------------------------------------------------------------------------- failures

def test_solver_failures_raise_odesolvererror():
    x = torch.rand(2, 1, 16, 16)
    m = small_sonet()
    with torch.no_grad():
        m.core.stem.func.kernel[0, 0, 0, 0] = float("nan")
    for solver, match in (("dopri5", "solver='dopri5', tol=0.1"), ("euler", "solver='euler', step_size=1")):
        with solver_override(m, solver), pytest.raises(ODESolverError, match=match) as err, torch.no_grad():
            m(x)
        assert "sonet.stem" in str(err.value) and "tol" in str(err.value)
        assert isinstance(err.value, RuntimeError)
    m = small_sonet(tol=1e-9, max_num_steps=2)
    with pytest.raises(ODESolverError, match="max_num_steps") as err, torch.no_grad():
        m(x)
    assert "sonet.stem" in str(err.value) and "tol=1e-09" in str(err.value)


def test_invalid_settings_are_rejected():
    for kw, match in (({"solver": "rk45"}, "unknown ODE solver"), ({"tol": 0.0}, "tol"), ({"tol": -1e-3}, "tol"),
                      ({"gamma": -0.1}, "gamma"), ({"step_size": 0.0}, "step_size"),
                      ({"step_size": 2.0}, "step_size"), ({"max_num_steps": 0}, "max_num_steps")):
        with pytest.raises(ValueError, match=match):
            create_model("sonet", in_shape=(1, 16, 16), num_classes=10, width=2, **kw)
    with pytest.raises(ValueError, match="multiple of 8"):
        create_model("odenet", in_shape=(3, 32, 32), num_classes=10, width=54)   # odenet()'s own default
    with pytest.raises(ValueError, match="gamma"):
        create_model("soblock", in_shape=(3, 32, 32), num_classes=10, width=4, gamma=float("nan"))


# --------------------------------------------------------------------------------------- registered models

def test_architectures():
    so = create_model("sonet", in_shape=(3, 32, 32), num_classes=10, width="tiny").core
    assert isinstance(so, SONet) and len(ode_blocks(so)) == 6
    assert [b.func.kernel.shape[-1] for b in ode_blocks(so)[:5]] == [3, 3, 4, 4, 4]   # 4x4 kernels at stride 2
    assert not any(isinstance(mod, (nn.BatchNorm2d, nn.Conv2d)) for mod in so.modules())
    assert len(ode_blocks(create_model("sonet", in_shape=(3, 32, 32), num_classes=10, width=2,
                                       blocks=(2, 2, 2, 2)).core)) == 10
    sob = create_model("soblock", in_shape=(3, 32, 32), num_classes=10, width=8).core
    ref = create_model("resnet10", in_shape=(3, 32, 32), num_classes=10, width=8).core
    assert isinstance(sob.conv1, SkewConvBlock) and len(ode_blocks(sob)) == 1
    assert ({k for k in sob.state_dict() if not k.startswith("conv1.")} ==
            {k for k in ref.state_dict() if not k.startswith("conv1.")})          # the rest is ResNet10
    on = create_model("odenet", in_shape=(3, 32, 32), num_classes=10).core
    assert len(ode_blocks(on)) == 10 and on.linear.in_features == 64 * 9
    assert len(ode_blocks(create_model("odenet", in_shape=(3, 32, 32), num_classes=10, width="tiny").core)) == 2
    for name in ODE_MODELS:
        assert model_info(name).default_width == 64 and model_info(name).width_doc


@pytest.mark.parametrize("name", ODE_MODELS)
@pytest.mark.parametrize("shape", IMAGE_SHAPES, ids=["28x28x1", "32x32x3"])
def test_registered_models_build_and_train(name, shape):
    m = create_model(name, in_shape=shape, num_classes=10, width="tiny", seed=0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(16, *shape, generator=g), torch.randint(0, 10, (16,), generator=g)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    losses = []
    m.train()
    for _ in range(4):
        opt.zero_grad()
        out = m(x)
        assert out.shape == (16, 10) and torch.isfinite(out).all()
        loss = F.cross_entropy(out, y)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
