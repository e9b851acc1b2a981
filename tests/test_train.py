"""Training engine: real training on scikit-learn digits with tiny models, bit-identical resume, checkpoints,
NaN detection, the objectives' mechanics (ball, modes, TRADES/AWP/grad-norm facts), schedules and the builder."""

import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from advrep.attacks.core import lp_norm
from advrep.train import (AWP, OBJECTIVES, PGDAT, TRADES, AugmentedDataset, CheckpointError, EpochContext,
                          EpsSchedule, GradNormPenalty, Hook, LRSchedule, NonFiniteLossError, Objective,
                          build_training, evaluate, fit, make_augment, make_objective, make_optimizer,
                          register_objective, train_step)
from advrep.train.checkpoint import load_checkpoint
from advrep.train.loop import IndexedDataset, IndexedSample
from conftest import Killed, digits01, small_cnn, tensor_loader


@pytest.fixture(scope="module")
def digits():
    return digits01()


def mlp(seed=0, act=nn.ReLU):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), act(), nn.Linear(64, 10))


cnn, loader = small_cnn, tensor_loader


def ctx(**kw):
    return EpochContext(**kw)


# ---------------------------------------------------------------- training works


def test_ce_training_on_digits_reaches_high_train_accuracy(digits, tmp_path):
    x, y = digits
    model = mlp()
    res = fit(model, loader(x, y), objective="ce", epochs=4, seed=0, checkpoint_dir=tmp_path, progress=False,
              optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9}, schedule="cosine")
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3]
    assert res.history[-1]["acc"] > 0.85  # running training accuracy of the last epoch
    assert evaluate(res.model, loader(x, y, 512, shuffle=False))["acc"] > 0.85  # the final model itself
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert all(h["images_per_s"] > 0 and h["eps"] is None for h in res.history)
    assert res.seed == 0 and res.device == "cpu" and res.amp is None and res.eval_model is model
    final = torch.load(res.final, weights_only=True)
    assert all(torch.equal(final["model"][k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- resume


def _resume_setup(x, y, tmp, objective, callbacks=(), indexed=False):
    model = cnn(seed=123)
    data = IndexedDataset(TensorDataset(x, y)) if indexed else TensorDataset(x, y)
    res = fit(model, DataLoader(data, batch_size=64, shuffle=True), objective=objective, epochs=3, seed=7,
              checkpoint_dir=tmp, progress=False,
              optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
              schedule={"name": "cosine", "warmup_epochs": 1, "per": "iteration"},
              augment={"name": "crop_flip", "padding": 2}, ema=0.9, eps_schedule={"ramp_epochs": 2},
              callbacks=callbacks)
    return res


@pytest.mark.parametrize("kill,indexed", [("mid_epoch", False), ("after_checkpoint", False), ("mid_epoch", True)])
def test_kill_and_resume_gives_bit_identical_weights(digits, tmp_path, kill, indexed):
    x, y = digits[0][:256], digits[1][:256]
    pgd = {"name": "pgd_at", "eps": 0.1, "alpha": 0.04, "steps": 3}
    full = _resume_setup(x, y, tmp_path / "full", pgd, indexed=indexed)

    base = make_objective(pgd)

    def killer(model, xb, yb, c):
        if kill == "mid_epoch" and c.epoch == 1 and c.batch == 2:
            raise Killed
        return base(model, xb, yb, c)

    def stop_after_first(epoch, record):
        if kill == "after_checkpoint" and epoch == 0:
            raise Killed

    with pytest.raises(Killed):
        _resume_setup(x, y, tmp_path / "cut", Hook(killer), callbacks=[stop_after_first], indexed=indexed)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    resumed = _resume_setup(x, y, tmp_path / "cut", pgd, indexed=indexed)  # fresh model, other initial weights
    assert resumed.resumed_from == 1
    for a, b in [(full.model, resumed.model), (full.ema.module, resumed.ema.module)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    assert [h["eps"] for h in full.history] == pytest.approx([0.0, 0.05, 0.1])
    # and the run was not trivially stationary: weights moved
    assert not torch.equal(cnn(seed=123).state_dict()["4.weight"], full.model.state_dict()["4.weight"])


def test_fit_hands_batch_indices_to_the_objective(digits, tmp_path):
    """An IndexedDataset loader: ctx.index names each sample's row in the training set (through shuffling, in-loop
    augmentation and an AugmentedDataset underneath); a plain (x, y) loader gives None, and the weights are the
    same either way (the indices draw no random numbers)."""
    x, y = digits[0][:160], digits[1][:160]
    seen = {}

    def record(tag, check):
        def fn(model, xb, yb, c):
            seen.setdefault(tag, []).append(None if c.index is None else c.index.clone())
            if c.index is not None:
                assert c.index.dtype == torch.long and c.index.shape == (len(yb),)
                assert torch.equal(yb, y[c.index])
                if check:
                    assert torch.equal(xb, x[c.index])
            logits = model(xb)
            return F.cross_entropy(logits, yb), logits
        return Hook(fn)

    kw = dict(epochs=2, seed=5, optimizer={"name": "sgd", "lr": 0.1}, progress=False)
    plain = fit(mlp(), DataLoader(TensorDataset(x, y), batch_size=48, shuffle=True), objective=record("plain", True),
                checkpoint_dir=tmp_path / "plain", **kw)
    indexed = fit(mlp(), DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=48, shuffle=True),
                  objective=record("indexed", True), checkpoint_dir=tmp_path / "indexed", **kw)
    assert all(i is None for i in seen["plain"])
    epoch0 = torch.cat(seen["indexed"][:4])
    assert sorted(epoch0.tolist()) == list(range(160)) and not torch.equal(epoch0, torch.arange(160))  # shuffled
    pa, pb = plain.model.state_dict(), indexed.model.state_dict()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    # augmented inputs keep their sample's index (in the loop, or in the dataset under the index wrapper)
    fit(mlp(), DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=48, shuffle=True),
        objective=record("loop_aug", False), augment="crop_flip", checkpoint_dir=tmp_path / "aug1", **kw)
    ds = IndexedDataset(AugmentedDataset(TensorDataset(x, y), "crop_flip", seed=0))
    assert isinstance(ds[3], IndexedSample) and ds[3].index == 3 and hasattr(ds, "set_epoch")
    fit(mlp(), DataLoader(ds, batch_size=48, shuffle=True), objective=record("data_aug", False),
        checkpoint_dir=tmp_path / "aug2", **kw)
    assert all(i is not None for i in seen["loop_aug"] + seen["data_aug"])


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_written_every_epoch_atomically_and_loads_weights_only(digits, tmp_path):
    x, y = digits[0][:192], digits[1][:192]
    model = mlp()
    seen = []

    def inspect(epoch, record):
        files = sorted(os.listdir(tmp_path))
        state = torch.load(tmp_path / "last.pt", weights_only=True)
        same = all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
        seen.append((epoch, files, state["epoch"], len(state["history"]), same, sorted(state["rng"])))

    fit(model, loader(x, y), objective="ce", epochs=3, seed=1, checkpoint_dir=tmp_path, progress=False,
        optimizer="sgd", ema=0.5, callbacks=[inspect])
    assert [s[:5] for s in seen] == [(e, ["last.pt"], e + 1, e + 1, True) for e in range(3)]
    assert seen[0][5] == ["cuda", "numpy", "python", "torch"]
    assert sorted(os.listdir(tmp_path)) == ["final.pt", "last.pt"]
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "optimizer", "schedule", "ema", "rng", "epoch", "history", "seed", "device"} <= set(state)
    assert state["seed"] == 1 and state["device"] == "cpu"

    # a finished run resumes to "nothing to do"
    again = fit(mlp(seed=5), loader(x, y), objective="ce", epochs=3, seed=1, checkpoint_dir=tmp_path,
                progress=False, optimizer="sgd", ema=0.5)
    assert again.resumed_from == 3 and len(again.history) == 3
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), model.state_dict().values()))


def test_failed_checkpoint_write_keeps_the_previous_one(digits, tmp_path, monkeypatch):
    x, y = digits[0][:128], digits[1][:128]
    kw = dict(objective="ce", seed=0, checkpoint_dir=tmp_path, progress=False, optimizer="sgd")
    fit(mlp(), loader(x, y), epochs=1, **kw)
    (tmp_path / "final.pt").unlink()
    import advrep.train.checkpoint as ck

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        fit(mlp(), loader(x, y), epochs=2, **kw)
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1  # the previous checkpoint is intact


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_checkpoint_gives_a_clear_error(digits, tmp_path, damage):
    x, y = digits[0][:128], digits[1][:128]
    kw = dict(objective="ce", seed=0, checkpoint_dir=tmp_path, progress=False, optimizer="sgd")
    fit(mlp(), loader(x, y), epochs=1, **kw)
    path = tmp_path / "last.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 100)
    with pytest.raises(CheckpointError) as err:
        fit(mlp(), loader(x, y), epochs=2, **kw)
    msg = str(err.value)
    assert str(path) in msg and "corrupt" in msg and "Delete" in msg


def test_checkpoint_from_another_seed_is_refused(digits, tmp_path):
    x, y = digits[0][:128], digits[1][:128]
    kw = dict(objective="ce", checkpoint_dir=tmp_path, progress=False, optimizer="sgd")
    fit(mlp(), loader(x, y), epochs=1, seed=0, **kw)
    with pytest.raises(CheckpointError, match="seed 0"):
        fit(mlp(), loader(x, y), epochs=2, seed=1, **kw)


# ---------------------------------------------------------------- NaN


def test_exploding_lr_stops_with_an_error_naming_the_epoch(digits, tmp_path):
    x, y = digits[0][:256], digits[1][:256]
    with pytest.raises(NonFiniteLossError, match=r"loss is (nan|inf).* at epoch 0 "):
        fit(mlp(), loader(x, y), objective="ce", epochs=2, seed=0, checkpoint_dir=tmp_path, progress=False,
            optimizer={"name": "sgd", "lr": 1e10})
    assert not (tmp_path / "last.pt").exists()


def test_nan_from_a_hook_objective_stops_in_that_epoch(digits, tmp_path):
    x, y = digits[0][:128], digits[1][:128]
    calls = []

    def nan_in_epoch_1(model, xb, yb, c):
        calls.append((c.epoch, c.batch))
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        return (loss * float("nan") if c.epoch == 1 and c.batch == 1 else loss), logits

    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 1 .*batch 1 of 2"):
        fit(mlp(), loader(x, y), objective=Hook(nan_in_epoch_1), epochs=3, seed=0, checkpoint_dir=tmp_path,
            progress=False, optimizer="sgd")
    assert calls[-1] == (1, 1)  # nothing ran after the NaN
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


# ---------------------------------------------------------------- adversarial objectives


class Spy(nn.Module):
    """Records (training flag, input) of every forward call."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = []

    def forward(self, x):
        self.calls.append((self.training, x.detach().clone()))
        return self.model(x)


@pytest.mark.parametrize("name,norm,eps", [("pgd_at", "linf", 0.1), ("pgd_at", "l2", 0.5),
                                           ("trades", "linf", 0.1), ("trades", "l2", 0.5)])
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_adversarial_examples_stay_in_the_ball_and_box_and_model_ends_in_train_mode(digits, name, norm, eps,
                                                                                   fraction):
    x, y = digits[0][:32], digits[1][:32]
    spy = Spy(cnn())
    spy.train()
    obj = make_objective({"name": name, "eps": eps, "alpha": eps / 3, "steps": 4, "norm": norm})
    loss, logits = obj(spy, x, y, ctx(eps_fraction=fraction))
    assert spy.training and loss.ndim == 0 and logits.shape == (32, 10)
    train_inputs = [inp for training, inp in spy.calls if training]
    eval_inputs = [inp for training, inp in spy.calls if not training]
    assert len(eval_inputs) >= 4  # the inner maximisation ran in eval mode
    assert len(train_inputs) == (1 if name == "pgd_at" else 2)
    adversarial = [inp for inp in train_inputs if not torch.equal(inp, x)]
    assert len(adversarial) == 1
    xa = adversarial[0]
    assert (lp_norm(xa - x, norm) <= eps * fraction + 1e-5).all()
    assert xa.min() >= 0 and xa.max() <= 1
    assert lp_norm(xa - x, norm).max() > 0.5 * eps * fraction  # it did move


def test_trades_with_beta_zero_equals_clean_cross_entropy(digits):
    x, y = digits[0][:64], digits[1][:64]
    model = cnn()
    ref_model = copy.deepcopy(model)
    loss, logits = TRADES(eps=0.1, alpha=0.03, steps=3, beta=0.0)(model, x, y, ctx())
    ref_model.train()
    ref = F.cross_entropy(ref_model(x), y)
    assert torch.equal(loss.detach(), ref.detach())
    loss.backward()
    ref.backward()
    assert all(torch.allclose(a.grad, b.grad, atol=1e-7) for a, b in zip(model.parameters(),
                                                                          ref_model.parameters()))
    loss6, _ = TRADES(eps=0.1, alpha=0.03, steps=3, beta=6.0)(model, x, y, ctx())
    assert loss6 > ref  # the KL term is positive at the maximiser


# ---------------------------------------------------------------- gradient-norm penalties


def _reference_penalty(model, x, y, eps_tv, lam_lip):
    xr = x.clone().requires_grad_(True)
    losses = F.cross_entropy(model(xr), y, reduction="none")
    (g,) = torch.autograd.grad(losses.sum(), xr, create_graph=True)
    norms = g.flatten(1).norm(dim=1)
    return losses.mean() + eps_tv * norms.mean() + lam_lip * norms.max(), norms, losses


def test_grad_norm_exact_equals_double_backprop_reference(digits):
    x, y = digits[0][:48], digits[1][:48]
    model = mlp(act=nn.Tanh)
    ref_model = copy.deepcopy(model)
    loss, _ = GradNormPenalty(eps_tv=0.3, lam_lip=0.2, method="exact")(model, x, y, ctx())
    ref, _, _ = _reference_penalty(ref_model, x, y, 0.3, 0.2)
    assert torch.allclose(loss, ref, rtol=1e-6)
    loss.backward()
    ref.backward()
    for a, b in zip(model.parameters(), ref_model.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_grad_norm_finite_difference_is_close_to_the_exact_norm(digits):
    x, y = digits[0][:64], digits[1][:64]
    model = mlp(seed=3, act=nn.Tanh)
    _, exact, _ = _reference_penalty(model, x, y, 0, 0)
    _, fd, _ = GradNormPenalty(method="finite_difference", h=1e-3).per_sample(model, x, y)
    big = exact > 1e-2
    assert big.sum() > 32
    rel = ((fd - exact).abs() / exact)[big]
    assert rel.max() < 0.05, rel.max()
    # linf attack direction sign(g): estimates the dual norm ||g||_1
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    _, fd1, _ = GradNormPenalty(method="finite_difference", norm="linf", h=1e-4).per_sample(model, x, y)
    l1 = g.flatten(1).abs().sum(1)
    assert (((fd1 - l1).abs() / l1)[l1 > 1e-1]).max() < 0.05


@pytest.mark.parametrize("method", ["exact", "finite_difference"])
def test_lipschitz_term_is_the_batch_max_and_tv_term_the_batch_mean(digits, method):
    x, y = digits[0][:40], digits[1][:40]
    model = mlp(act=nn.Tanh)
    losses, norms, _ = GradNormPenalty(method=method).per_sample(model, x, y)
    ce = losses.mean()
    assert norms.max() > 1.1 * norms.mean()  # the two reductions are distinguishable here
    tv, _ = GradNormPenalty(eps_tv=1.0, lam_lip=0.0, method=method)(model, x, y, ctx())
    lip, _ = GradNormPenalty(eps_tv=0.0, lam_lip=1.0, method=method)(model, x, y, ctx())
    assert torch.allclose(tv - ce, norms.mean(), rtol=1e-5)
    assert torch.allclose(lip - ce, norms.max(), rtol=1e-5)
    plain, _ = GradNormPenalty(method=method)(model, x, y, ctx())
    assert torch.allclose(plain, ce)


# ---------------------------------------------------------------- AWP


def _awp_layers(model):
    return {n for n, _ in AWP.perturbed_parameters(model)}


def test_awp_perturbation_is_layerwise_relative_and_leaves_the_model_alone(digits):
    x, y = digits[0][:64], digits[1][:64]
    model = cnn()
    model.train()
    awp = AWP({"name": "pgd_at", "eps": 0.1, "alpha": 0.04, "steps": 3}, gamma=0.01)
    assert _awp_layers(model) == {"0.weight", "4.weight"}  # conv + linear weights; no biases, no BatchNorm
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_adv = awp.base.perturb(model, x, y, ctx())
    v = awp.weight_perturbation(model, x, x_adv, y, ctx())
    assert all(torch.equal(before[k], t) for k, t in model.state_dict().items())  # weights and BN buffers
    assert all(p.grad is None for p in model.parameters())
    assert len(v) == 2
    for p, d in v:
        assert torch.allclose(d.norm(), 0.01 * p.norm(), rtol=1e-5)
    # the perturbation is an ascent direction for the training loss
    with torch.no_grad():
        clean_loss = awp.base.loss(model, x, x_adv, y, ctx())[0]
        for p, d in v:
            p.add_(d)
        perturbed_loss = awp.base.loss(model, x, x_adv, y, ctx())[0]
    assert perturbed_loss > clean_loss


def _one_step(model, objective, x, y, epoch=0, lr=0.1, momentum=0.9):
    opt = make_optimizer(model.parameters(), "sgd", lr=lr, momentum=momentum)
    torch.manual_seed(11)
    train_step(model, x, y, objective, opt, ctx(epoch=epoch))
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_awp_restores_weights_exactly_only_the_optimizer_step_changes_them(digits):
    x, y = digits[0][:64], digits[1][:64]
    pgd = {"name": "pgd_at", "eps": 0.1, "alpha": 0.04, "steps": 3}
    model = cnn()
    params = [p.detach().clone() for p in model.parameters()]
    awp = AWP(pgd, gamma=0.05)
    _one_step(model, awp, x, y, lr=0.0, momentum=0.0)  # a step that changes nothing
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    grads_awp = [p.grad.clone() for p in model.parameters()]
    base_model = cnn()
    _one_step(base_model, make_objective(pgd), x, y, lr=0.0, momentum=0.0)
    # ... but the gradient it stepped with was taken at the perturbed weights
    assert not torch.allclose(grads_awp[0], next(base_model.parameters()).grad)


@pytest.mark.parametrize("base", [{"name": "pgd_at", "eps": 0.1, "alpha": 0.04, "steps": 3},
                                  {"name": "trades", "eps": 0.1, "alpha": 0.04, "steps": 3, "beta": 6.0}])
def test_awp_with_gamma_zero_or_before_warmup_is_the_base_update(digits, base):
    x, y = digits[0][:64], digits[1][:64]
    ref = _one_step(cnn(), make_objective(base), x, y)
    zero = _one_step(cnn(), AWP(base, gamma=0.0), x, y)
    warm = _one_step(cnn(), AWP(base, gamma=0.01, warmup=2), x, y, epoch=1)
    on = _one_step(cnn(), AWP(base, gamma=0.01, warmup=2), x, y, epoch=2)
    assert all(torch.equal(ref[k], zero[k]) and torch.equal(ref[k], warm[k]) for k in ref)
    assert not torch.equal(ref["0.weight"], on["0.weight"])


# ---------------------------------------------------------------- schedules


def _opt(lr=0.1):
    return make_optimizer([nn.Parameter(torch.zeros(1))], "sgd", lr=lr, momentum=0.9)


def test_cosine_with_warmup_per_iteration():
    spe, epochs, w, base, start, lo = 5, 10, 2, 0.1, 0.1, 1e-3
    sched = LRSchedule(_opt(base), name="cosine", epochs=epochs, steps_per_epoch=spe, warmup_epochs=w,
                       warmup_start=start, min_lr=lo)
    for step in [0, 3, 9, 10, 11, 27, 49]:
        t = step / spe
        if t < w:
            expected = base * (start + (1 - start) * t / w)
        else:
            expected = lo + (base - lo) * (1 + math.cos(math.pi * (t - w) / (epochs - w))) / 2
        assert sched.lr_at(step) == pytest.approx(expected, rel=1e-12), step
    sched.set(27)
    assert sched.optimizer.param_groups[0]["lr"] == pytest.approx(sched.lr_at(27))


def test_cosine_and_multistep_match_torch_schedulers():
    spe, epochs = 4, 6
    ours = LRSchedule(_opt(), name="cosine", epochs=epochs, steps_per_epoch=spe, min_lr=0.01)
    ref_opt = _opt()
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=epochs * spe, eta_min=0.01)
    for step in range(epochs * spe):
        assert ours.lr_at(step) == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-9), step
        ref_opt.step()
        ref.step()
    ours = LRSchedule(_opt(), name="multistep", epochs=epochs, steps_per_epoch=spe, per="epoch",
                      milestones=[2, 4], gamma=0.1)
    ref_opt = _opt()
    ref = torch.optim.lr_scheduler.MultiStepLR(ref_opt, milestones=[2, 4], gamma=0.1)
    for epoch in range(epochs):
        for b in range(spe):  # constant within an epoch
            assert ours.lr_at(epoch * spe + b) == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-9)
        ref_opt.step()
        ref.step()
    assert [ours.lr_at(e * spe) for e in (1, 2, 4)] == pytest.approx([0.1, 0.01, 0.001])
    step = LRSchedule(_opt(), name="step", epochs=epochs, steps_per_epoch=spe, step_size=3, gamma=0.5)
    assert [step.lr_at(s) for s in (0, 11, 12, 23)] == pytest.approx([0.1, 0.1, 0.05, 0.05])


def test_lr_recorded_by_fit_follows_the_schedule(digits, tmp_path):
    x, y = digits[0][:128], digits[1][:128]  # 2 steps per epoch
    res = fit(mlp(), loader(x, y), objective="ce", epochs=4, seed=0, checkpoint_dir=tmp_path, progress=False,
              optimizer={"name": "sgd", "lr": 0.2}, schedule={"name": "multistep", "milestones": [2, 3],
                                                                 "gamma": 0.5, "per": "epoch"})
    assert [h["lr"] for h in res.history] == pytest.approx([0.2, 0.2, 0.1, 0.05])


def test_eps_schedule_ramps_linearly(digits, tmp_path):
    ramp = EpsSchedule(4)
    assert [ramp.fraction(e * 10 + 3, 10) for e in range(6)] == pytest.approx([0, 0.25, 0.5, 0.75, 1, 1])
    per_it = EpsSchedule(2, per="iteration")
    assert [per_it.fraction(s, 10) for s in (0, 5, 10, 15, 20, 30)] == pytest.approx([0, .25, .5, .75, 1, 1])
    assert EpsSchedule(0).fraction(0, 10) == 1.0

    x, y = digits[0][:128], digits[1][:128]
    pgd = PGDAT(eps=0.2, alpha=0.05, steps=2)
    seen = []

    def record(model, xb, yb, c):
        xa = pgd.perturb(model, xb, yb, c)
        seen.append((c.epoch, c.eps_fraction, float(lp_norm(xa - xb, "linf").max())))
        model.train()
        return pgd.loss(model, xb, xa, yb, c)

    class Recorder(Hook):
        eps = 0.2  # so the history reports it

    rec = Recorder(record)
    res = fit(mlp(), loader(x, y), objective=rec, epochs=4, seed=0, checkpoint_dir=tmp_path, progress=False,
              optimizer="sgd", eps_schedule={"ramp_epochs": 2})
    assert [h["eps"] for h in res.history] == pytest.approx([0.0, 0.1, 0.2, 0.2])
    assert all(dist <= 0.2 * frac + 1e-6 for _, frac, dist in seen)
    assert [d for e, _, d in seen if e == 0] == [0.0, 0.0]  # eps 0: clean inputs


# ---------------------------------------------------------------- augmentation, builder, hooks, progress


def test_augmentation_is_deterministic_per_seed_and_stays_in_range(digits):
    x = digits[0][:16]
    for cfg in ["crop_flip", [{"name": "crop_flip", "padding": 4}, "autoaugment", {"name": "cutout", "size": 4}]]:
        aug = make_augment(cfg)
        a, b, c = aug(x, seed=1), aug(x, seed=1), aug(x, seed=2)
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
        assert not torch.equal(a, x)
    assert make_augment("none") is None
    torch.manual_seed(0)
    state = torch.get_rng_state()
    make_augment("crop_flip")(x, seed=3)
    assert torch.equal(state, torch.get_rng_state())  # the global stream is untouched
    ds = AugmentedDataset(TensorDataset(x, torch.zeros(16)), "crop_flip", seed=0)
    first = ds[3][0]
    assert torch.equal(first, ds[3][0])
    ds.set_epoch(1)
    assert not torch.equal(first, ds[3][0])


def test_build_training_from_a_plain_config(digits, tmp_path):
    cfg = {"epochs": 1, "seed": 3, "batch_size": 64,
           "optimizer": {"name": "sgd", "lr": "0.05", "momentum": 0.9, "weight_decay": "5e-4"},
           "schedule": {"name": "cosine", "warmup_epochs": 1},
           "objective": {"name": "awp", "gamma": "5e-3", "warmup": 0,
                         "base": {"name": "trades", "eps": "8/255", "alpha": "2/255", "steps": 2, "beta": 6}},
           "augment": ["crop_flip"], "ema": {"decay": 0.99}, "eps_schedule": {"ramp_epochs": 1}, "amp": "auto",
           "progress": False}
    tr = build_training(cfg)
    assert isinstance(tr.objective, AWP) and isinstance(tr.objective.base, TRADES)
    assert tr.objective.gamma == 0.005 and tr.objective.base.eps == pytest.approx(8 / 255)
    assert tr.optimizer.kwargs["weight_decay"] == 5e-4 and tr.ema == 0.99
    x, y = digits[0][:128], digits[1][:128]
    res = tr.fit(cnn(), tr.loader(TensorDataset(x, y)), checkpoint_dir=tmp_path)
    assert res.seed == 3 and res.ema is not None and len(res.history) == 1
    with pytest.raises(ValueError, match="unknown key.*'lr_max'"):
        build_training({"epochs": 1, "objective": "ce", "lr_max": 0.1})
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        build_training({"epochs": 1, "objective": "nope"})


def test_hook_objectives_register_by_name(digits):
    @register_objective("test_double_ce")
    class DoubleCE(Hook):
        def __init__(self, factor=2.0):
            self.factor = factor

        def __call__(self, model, x, y, c):
            logits = model(x)
            return self.factor * F.cross_entropy(logits, y), logits

    try:
        obj = make_objective({"name": "test_double_ce", "factor": "3"})
        assert isinstance(obj, Objective) and obj.factor == 3
        x, y = digits[0][:8], digits[1][:8]
        model = mlp()
        assert torch.allclose(obj(model, x, y, ctx())[0], 3 * F.cross_entropy(model(x), y))
        with pytest.raises(ValueError, match="already registered"):
            register_objective("test_double_ce")(type("Other", (Hook,), {}))
    finally:
        OBJECTIVES.pop("test_double_ce", None)


def test_progress_bar_is_off_when_not_a_tty(digits, tmp_path, capsys):
    x, y = digits[0][:64], digits[1][:64]
    fit(mlp(), loader(x, y), objective="ce", epochs=1, seed=0, checkpoint_dir=tmp_path, optimizer="sgd",
        progress=True)
    assert "epoch 1/1" not in capsys.readouterr().err
