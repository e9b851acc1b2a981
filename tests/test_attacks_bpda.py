"""BPDA-PGD (``bpda_pgd``): without a surrogate it is PGD bit for bit; against a model whose input gradient is zero
almost everywhere (its input quantised to 8 levels) plain PGD does nothing while BPDA with the un-quantised network
as surrogate breaks most samples; the attack contract holds (ball, box, verdicts of the defended model), the
defended model is never differentiated, and surrogate passes are not counted as model calls."""

import pytest
import torch
from torch import nn

from advrep.attacks import ATTACKS, BPDAPGD, PGD, eval_mode, lp_norm, run_attack
from conftest import digits01

EPS = {"linf": 0.1, "l2": 0.5}


class Quantized(nn.Module):
    """``net(round(levels * x) / levels)``: the input gradient is exactly zero almost everywhere."""

    def __init__(self, net: nn.Module, levels: int = 8):
        super().__init__()
        self.net, self.levels = net, levels

    def forward(self, z):
        return self.net(torch.round(z * self.levels) / self.levels)


class Log(nn.Module):
    """Records every forward: its input, whether autograd was on and the module's mode."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.inputs, self.grad, self.modes = model, [], [], []

    def forward(self, z):
        self.inputs.append(z.detach().clone())
        self.grad.append(torch.is_grad_enabled() and z.requires_grad)
        self.modes.append(self.training)
        return self.model(z)


@pytest.fixture(scope="module")
def data():
    x, y = digits01()
    return x[:1200], y[:1200], x[1200:1400], y[1200:1400]


@pytest.fixture(scope="module")
def mlp(data):
    xtr, ytr, xte, yte = data
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xtr), ytr).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(xte).argmax(1) == yte).float().mean() > 0.9
    return model


def _acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _success(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) != y


@pytest.mark.parametrize("norm,params", [("linf", {}), ("l2", {}), ("linf", {"restarts": 2, "loss": "margin"}),
                                         ("l2", {"random_start": False, "alpha": 0.1, "steps": 7, "seed": 5})])
def test_without_surrogate_it_is_pgd_bit_for_bit(mlp, data, norm, params):
    x, y = data[2][:100], data[3][:100]
    ref = run_attack("pgd", mlp, x, y, eps=EPS[norm], norm=norm, **params)
    got = run_attack("bpda_pgd", mlp, x, y, eps=EPS[norm], norm=norm, gradient_model=None, **params)
    assert 0 < ref.success.sum() < len(x)
    assert torch.equal(got.x_adv, ref.x_adv)
    assert torch.equal(got.success, ref.success)
    assert torch.equal(got.model_calls, ref.model_calls)
    assert ATTACKS["bpda_pgd"] is BPDAPGD and issubclass(BPDAPGD, PGD)


def test_the_model_itself_as_surrogate_gives_pgd(mlp, data):
    """Same gradient, taken through a separate forward of the unbroken rows only: same attack."""
    x, y = data[2][:100], data[3][:100]
    ref = run_attack("pgd", mlp, x, y, eps=0.1, steps=8)
    got = run_attack("bpda_pgd", mlp, x, y, eps=0.1, steps=8, gradient_model=mlp)
    assert 0 < ref.success.sum() < len(x)
    assert torch.equal(got.success, ref.success) and torch.equal(got.model_calls, ref.model_calls)
    assert torch.allclose(got.x_adv, ref.x_adv, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_bpda_breaks_a_masked_gradient_that_resists_pgd(mlp, data, norm):
    x, y = data[2], data[3]
    eps = EPS[norm]
    defended = Quantized(mlp)
    clean = _acc(defended, x, y)
    assert clean > 0.9
    z = x.clone().requires_grad_(True)  # the gradient really is masked
    nn.functional.cross_entropy(defended(z), y).backward()
    assert torch.count_nonzero(z.grad) == 0
    pgd = run_attack("pgd", defended, x, y, eps=eps, norm=norm, steps=10)
    bpda = run_attack("bpda_pgd", defended, x, y, eps=eps, norm=norm, steps=10, gradient_model=mlp)
    robust_pgd = 1 - pgd.success.float().mean().item()
    robust_bpda = 1 - bpda.success.float().mean().item()
    assert robust_pgd >= clean - 0.05  # only the random start moves anything
    assert robust_bpda <= robust_pgd - 0.5  # measured: linf 0.955 -> 0.17, l2 0.94 -> 0.32
    assert torch.equal(bpda.success, _success(defended, bpda.x_adv, y))  # the defended model's verdict


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_contract_ball_box_verdicts_and_no_backward_through_the_model(mlp, data, norm):
    x, y = data[2][:64], data[3][:64]
    eps = EPS[norm]
    defended = Log(Quantized(mlp))
    wrong = _success(defended, x, y)
    assert wrong.any() and (~wrong).any()
    defended.inputs.clear(), defended.grad.clear()
    r = run_attack("bpda_pgd", defended, x, y, eps=eps, norm=norm, steps=6, restarts=2, gradient_model=mlp)
    assert r.x_adv.shape == x.shape and r.success.shape == r.model_calls.shape == y.shape
    assert (lp_norm(r.x_adv - x, norm) <= eps * (1 + 1e-6) + 1e-6).all()
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    assert torch.equal(r.success, _success(defended, r.x_adv, y))  # a fresh forward of the defended model
    assert r.success[wrong].all() and (r.model_calls[wrong] == 0).all() and torch.equal(r.x_adv[wrong], x[wrong])
    assert (r.model_calls[~wrong] > 0).all()
    assert r.success[~wrong].any() and (~r.success).any()
    assert (r.model_calls[~wrong & ~r.success] == 2 * (6 + 1)).all()  # PGD's count: steps + 1 per restart
    assert not any(defended.grad)  # verdicts only: the defended model is never differentiated
    for z in defended.inputs:  # and never queried outside the box or the ball
        assert z.min() >= 0 and z.max() <= 1
        if z.shape[0] == len(x):
            assert (lp_norm(z - x, norm) <= eps * (1 + 1e-6) + 1e-6).all()


def test_surrogate_passes_are_not_model_calls(mlp, data):
    """One surrogate forward per ascent step per unbroken sample: model_calls - 1 per attacked sample (1 restart)."""
    x, y = data[2][:100], data[3][:100]
    defended = Quantized(mlp)
    surrogate = Log(mlp)
    ok = ~_success(defended, x, y)
    r = run_attack("bpda_pgd", defended, x, y, eps=0.1, steps=10, gradient_model=surrogate)
    assert r.success[ok].any() and (~r.success[ok]).any()
    rows = sum(z.shape[0] for z in surrogate.inputs)
    assert rows == int((r.model_calls[ok] - 1).sum())
    assert all(surrogate.grad)  # differentiated, every time


def test_surrogate_runs_in_eval_mode_and_its_mode_is_restored(mlp, data):
    x, y = data[2][:32], data[3][:32]
    torch.manual_seed(1)
    bn = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        bn.train()(data[0])  # some running statistics
    stats = bn[2].running_mean.clone(), int(bn[2].num_batches_tracked)
    surrogate = Log(bn)
    surrogate.train()
    run_attack("bpda_pgd", Quantized(mlp), x, y, eps=0.1, steps=3, gradient_model=surrogate)
    assert surrogate.modes and not any(surrogate.modes)
    assert surrogate.training and bn[2].training
    assert torch.equal(bn[2].running_mean, stats[0]) and int(bn[2].num_batches_tracked) == stats[1]
    # a plain callable works too
    with eval_mode(mlp):
        r = run_attack("bpda_pgd", Quantized(mlp), x, y, eps=0.1, steps=3, gradient_model=lambda z: mlp(z))
    assert torch.equal(r.success, _success(Quantized(mlp), r.x_adv, y))
    with pytest.raises(TypeError):
        BPDAPGD(mlp, eps=0.1, gradient_model="not a model")
    assert "gradient_model='Log'" in repr(BPDAPGD(mlp, eps=0.1, gradient_model=surrogate))
