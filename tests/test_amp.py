"""Mixed precision on the CPU: ``fit(amp="bf16"/"fp16")`` really runs under autocast (and fp16 with a GradScaler
whose state survives a kill and resume), adversarial training under fp16 autocast stays feasible, and the attack
loop's rescue of fp16 input gradients that underflow for confidently classified samples.

torch's CPU autocast supports both bf16 and fp16 (convolutions and linear layers run in the low-precision type,
the cross-entropy in float32) and ``torch.amp.GradScaler("cpu")`` works, so all of this runs without a GPU."""

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import advrep.attacks.core as core
from advrep.attacks.core import lp_norm, maximize
from advrep.train import PGDAT, EpochContext, Hook, evaluate, fit, resolve_amp
from advrep.train.checkpoint import load_checkpoint
from conftest import Killed, ce_input_grad, digits01, killed_at, small_cnn, tensor_loader

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture(scope="module")
def digits():
    return digits01()


cnn, loader = small_cnn, tensor_loader


@contextlib.contextmanager
def one_thread():
    """Module fixtures are set up before the autouse one-thread fixture of conftest: limit them the same way."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


# ---------------------------------------------------------------- resolve_amp


def test_resolve_amp_auto_is_off_on_cpu_and_explicit_types_work_there():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is None
    for off in (None, False, "off", "none", "fp32"):
        assert resolve_amp(off, cpu) is None
    assert resolve_amp("bf16", cpu) is torch.bfloat16 and resolve_amp("bfloat16", cpu) is torch.bfloat16
    assert resolve_amp("fp16", cpu) is torch.float16 and resolve_amp("float16", cpu) is torch.float16
    for bad in ("fp8", "BF16", True, "cuda"):
        with pytest.raises(ValueError, match=r"'auto', 'off', 'bf16', 'fp16'") as err:
            resolve_amp(bad, cpu)
        assert repr(bad) in str(err.value)
    with pytest.raises(ValueError, match="CUDA and CPU only"):
        resolve_amp("fp16", torch.device("meta"))
    assert resolve_amp("auto", torch.device("meta")) is None


# ---------------------------------------------------------------- fit under CPU autocast


def _fit(x, y, tmp, amp, seen=None):
    def ce(model, xb, yb, c):
        logits = model(xb)
        if seen is not None:
            seen.add((logits.dtype, c.amp_dtype, torch.is_autocast_enabled("cpu")))
        return F.cross_entropy(logits, yb), logits

    return fit(cnn(seed=3), loader(x, y), objective=Hook(ce), epochs=3, seed=0, checkpoint_dir=tmp, progress=False,
               amp=amp, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}, val_loader=loader(x, y, 256, False))


@pytest.fixture(scope="module")
def fp32_run(digits, tmp_path_factory):
    x, y = digits[0][:512], digits[1][:512]
    with one_thread():
        return _fit(x, y, tmp_path_factory.mktemp("fp32"), "off")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_fit_under_cpu_autocast_trains_close_to_but_not_equal_to_fp32(digits, tmp_path, fp32_run, amp):
    x, y = digits[0][:512], digits[1][:512]
    seen = set()
    res = _fit(x, y, tmp_path, amp, seen)
    # the objective really ran under autocast: the layers' outputs are in the low-precision type
    assert seen == {(DTYPES[amp], DTYPES[amp], True)}
    # it trains: loss falls, accuracy far above chance (10 classes), like the float32 run
    assert res.history[-1]["loss"] < 0.5 * res.history[0]["loss"]
    assert res.history[-1]["acc"] > 0.9 and res.history[-1]["val_acc"] > 0.9
    assert evaluate(res.model, loader(x, y, 256, False))["acc"] > 0.9
    assert res.history[-1]["val_acc"] == pytest.approx(fp32_run.history[-1]["val_acc"], abs=0.03)
    # final weights close to the float32 run's, but not equal: the low precision changed the arithmetic
    a, b = res.model.state_dict(), fp32_run.model.state_dict()
    weights = [k for k in a if a[k].is_floating_point()]
    assert all(a[k].dtype == torch.float32 for k in weights)  # autocast leaves the parameters in float32
    assert max(rel_diff(a[k], b[k]) for k in weights) < 0.1
    assert not all(torch.equal(a[k], b[k]) for k in weights)
    # provenance: the type is recorded in the result, the last checkpoint and final.pt; the fp32 run records None
    assert res.amp == amp and fp32_run.amp is None
    last, final = load_checkpoint(res.checkpoint), load_checkpoint(res.final)
    assert last["amp"] == amp and final["amp"] == amp
    assert load_checkpoint(fp32_run.final)["amp"] is None
    # fp16 comes with a GradScaler, whose state is checkpointed; bf16 (float32's exponent range) needs none
    if amp == "fp16":
        assert last["scaler"] is not None and last["scaler"]["scale"] > 0
        assert last["scaler"]["_growth_tracker"] > 0  # it counted the (finite) steps it took
    else:
        assert last["scaler"] is None


# ---------------------------------------------------------------- fp16: GradScaler state across a kill and resume


class QuickScaler(torch.amp.GradScaler):
    """A GradScaler that doubles its scale every 2 finite steps (torch's default: 2000): in this short run the scale
    grows from 2**16 until the fp16 gradients overflow, steps are skipped and the scale backs off, so the weights
    depend on the scaler's state, which a resume must restore.  ``updates`` logs (scale before, scale after)."""

    updates: list = []

    def __init__(self, device="cuda", init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5,
                 growth_interval=2, enabled=True):
        super().__init__(device, init_scale, growth_factor, backoff_factor, growth_interval, enabled)

    def update(self, new_scale=None):
        before = self.get_scale()
        super().update(new_scale)
        QuickScaler.updates.append((before, self.get_scale()))


def _fp16_setup(x, y, tmp, objective, callbacks=()):
    return fit(cnn(seed=11), loader(x, y), objective=objective, epochs=3, seed=4, checkpoint_dir=tmp, amp="fp16",
               progress=False, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
               schedule={"name": "cosine", "per": "iteration"}, callbacks=callbacks)


def test_fp16_gradscaler_state_is_checkpointed_and_kill_and_resume_is_bit_identical(digits, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.amp, "GradScaler", QuickScaler)  # what fit builds for fp16
    monkeypatch.setattr(QuickScaler, "updates", [])
    x, y = digits[0][:256], digits[1][:256]
    pgd = {"name": "pgd_at", "eps": 0.1, "alpha": 0.05, "steps": 2}
    scalers = []  # the uninterrupted run's checkpointed scaler state after each epoch
    full = _fp16_setup(x, y, tmp_path / "full", pgd, callbacks=[
        lambda e, r: scalers.append(load_checkpoint(tmp_path / "full" / "last.pt")["scaler"])])
    assert all(s is not None for s in scalers) and len(scalers) == 3
    # the scale grew, and in epochs 1-2 overflowed (skipped steps, backoff): the run depends on the scaler's state
    steps = QuickScaler.updates
    assert len(steps) == 12 and steps[0][0] == 2.0 ** 16 and scalers[0]["scale"] > 2.0 ** 16
    assert any(after < before for before, after in steps[4:])

    with pytest.raises(Killed):
        _fp16_setup(x, y, tmp_path / "cut", killed_at(pgd, epoch=1, batch=2))
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert cut["epoch"] == 1 and cut["amp"] == "fp16" and cut["scaler"] == scalers[0]
    resumed = _fp16_setup(x, y, tmp_path / "cut", pgd)
    assert resumed.resumed_from == 1 and resumed.amp == "fp16"
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["scaler"] == scalers[-1]
    assert full.history[-1]["loss"] < full.history[0]["loss"]  # and it trained


# ---------------------------------------------------------------- adversarial training under fp16 autocast


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_pgd_at_under_fp16_autocast_stays_in_the_ball_and_box(digits, norm, eps):
    x, y = digits[0][:128], digits[1][:128]
    model = cnn(seed=5)
    obj = PGDAT(eps=eps, alpha=eps / 3, steps=4, norm=norm)
    ctx = EpochContext(amp_dtype=torch.float16)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.float16):
        x_adv = obj.perturb(model, x, y, ctx)
        loss, logits = obj(model, x, y, ctx)
    assert x_adv.dtype == torch.float32 and x_adv.shape == x.shape
    assert (lp_norm(x_adv - x, norm) <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv != x).any()
    assert logits.dtype == torch.float16 and loss.dtype == torch.float32 and math.isfinite(float(loss.detach()))
    assert model.training
    with torch.no_grad():  # the attack raised the loss it ascends
        clean = F.cross_entropy(model.eval()(x), y)
        adv = F.cross_entropy(model(x_adv), y)
    assert adv > clean


# ---------------------------------------------------------------- fp16 input-gradient underflow in attacks


@pytest.fixture(scope="module")
def confident(digits):
    """A small CNN fitted to 256 digits, its last layer then multiplied by 3: logit margins of ~18-37, so the
    cross-entropy gradient at the logits (~exp(-margin)) is below fp16's smallest subnormal (2**-24 ~ 6e-8) for most
    samples, while float32 still resolves it."""
    x, y = digits[0][:256], digits[1][:256]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    with one_thread():
        for _ in range(100):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    with torch.no_grad():
        model[3].weight.mul_(3)
        model[3].bias.mul_(3)
    model.eval()
    return model, x, y


_grads = ce_input_grad


def test_fp16_autocast_input_gradients_underflow_and_maximize_rescues_them(confident):
    """Reproduced with torch's real CPU fp16 autocast (no construction needed): the unscaled input gradient is
    exactly 0 for most samples, so sign(grad) = 0; the rescued one is nonzero everywhere and has the float32 signs."""
    model, x, y = confident
    with torch.no_grad():
        assert (model(x).argmax(1) == y).all()
    g32, g16, rescued = (_grads(model, x, y, how) for how in ("fp32", "fp16", "rescued"))
    zero = lambda g: g.flatten(1).abs().amax(1) == 0  # noqa: E731
    assert not zero(g32).any()  # float32 resolves every sample's gradient
    assert zero(g16).float().mean() > 0.5  # fp16 loses most of them entirely
    assert not zero(rescued).any() and torch.isfinite(rescued).all()
    rows = zero(g16)
    agree = (rescued.sign() == g32.sign()).float().flatten(1).mean(1)
    assert agree[rows].mean() > 0.99  # the direction is float32's, up to fp16 rounding
    # rows that did not underflow are left as they were
    normal = g16.flatten(1).abs().amax(1) >= 2.0 ** -14
    assert normal.any() and torch.equal(rescued[normal], g16[normal])


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.6)])
def test_pgd_under_fp16_autocast_moves_like_fp32_pgd(confident, monkeypatch, norm, eps):
    model, x, y = confident
    loss = lambda z: F.cross_entropy(model(z), y, reduction="none")  # noqa: E731

    def attack(amp):
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
            x_adv = maximize(loss, x, eps=eps, alpha=eps / 4, steps=8, norm=norm, init=None)
        with torch.no_grad():
            moved = lp_norm(x_adv - x, norm) > 0
            return x_adv, moved, loss(x_adv), model(x_adv).argmax(1) != y

    _, moved32, loss32, fooled32 = attack(False)
    x16, moved16, loss16, fooled16 = attack(True)
    assert moved32.all() and moved16.all()
    assert (lp_norm(x16 - x, norm) <= eps + 1e-6).all() and x16.min() >= 0 and x16.max() <= 1
    assert loss16.mean() > 0.9 * loss32.mean() and loss16.mean() > 10 * loss(x).detach().mean()
    assert abs(fooled16.float().mean() - fooled32.float().mean()) < 0.05
    # without the rescue (the plain fp16 gradient) most samples never move and the loss barely rises
    monkeypatch.setattr(core, "_input_grad", lambda l, z: torch.autograd.grad(l.sum(), z)[0])
    _, moved_plain, loss_plain, _ = attack(True)
    assert moved_plain.float().mean() < 0.5
    assert loss_plain.mean() < 0.7 * loss32.mean()


def test_input_grad_is_the_plain_gradient_without_fp16_autocast(confident):
    """float32 and bf16 (float32's exponent range: no underflow to rescue) take exactly one plain backward pass."""
    model, x, y = confident
    for enabled, dtype in [(False, torch.float16), (True, torch.bfloat16)]:
        with torch.autocast("cpu", dtype=dtype, enabled=enabled):
            assert not core._fp16_autocast("cpu")
            z = x.clone().requires_grad_(True)
            loss = F.cross_entropy(model(z), y, reduction="none")
            (plain,) = torch.autograd.grad(loss.sum(), z, retain_graph=True)
            assert torch.equal(core._input_grad(loss, z), plain)
    with torch.autocast("cpu", dtype=torch.float16):
        assert core._fp16_autocast("cpu")
