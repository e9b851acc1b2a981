"""OA-AT's objectives (``fat``, ``ates``, ``oaat``) and LPIPS on a model's own features: early stopping checked on
crafted models, the OA-AT schedule against the authors' loop, LPIPS against the ``lpips`` package, tiny real
trainings on scikit-learn digits, and a kill-and-resume of an OA-AT run."""

import dataclasses
import math
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from advrep.attacks import run_attack
from advrep.attacks.core import margin
from advrep.models import create_model
from advrep.oaat import ATES, FAT, OAAT, FeatureLPIPS, default_layers, lpips_from_features
from advrep.train import EpochContext, Objective, evaluate, fit, load_checkpoint, make_objective

from conftest import Killed, digits01


@pytest.fixture
def digits():
    x, y = digits01()
    return x[:256], y[:256]


class TinyNet(nn.Module):
    """Two conv stages named like the package's ResNets (``layer1``, ``layer2``) on 1x8x8 digits."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.layer1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 10))

    def forward(self, x):
        return self.head(self.layer2(self.layer1(x)))


LAYERS = ["layer1", "layer2"]


class ThresholdInInput(nn.Module):
    """A crafted two-class model on inputs (B, 1, 1, 2) = (a, b): logits ``[k (a - b), 0]``.  Every sample carries
    its own distance to the decision boundary in its input, so forwarding any subset of the batch (as early-stopped
    PGD does) needs no bookkeeping."""

    def __init__(self, k: float = 20.0):
        super().__init__()
        self.k = k

    def forward(self, z):
        z = z.flatten(1)
        return torch.stack([self.k * (z[:, 0] - z[:, 1]), torch.zeros_like(z[:, 0])], 1)


def _crafted(first_wrong, alpha=0.02):
    """Inputs (B, 1, 1, 2) = (a, b) with logit_0 = k (a - b).  The CE gradient is -k(1-p0) on a and +k(1-p0) on b:
    a signed step moves a down and b up by alpha, so a - b falls by 2 alpha per step.  Start a - b at
    ``2 alpha (m + 1/2)`` so the iterate of step m_i is the first misclassified one (a - b < 0)."""
    n = len(first_wrong)
    gap = torch.tensor([2 * alpha * (m - 0.5) for m in first_wrong])  # after j steps gap - 2 alpha j < 0 iff j >= m
    a = 0.5 + gap / 2
    b = 0.5 - gap / 2
    x = torch.stack([a, b], 1).view(n, 1, 1, 2)
    return ThresholdInInput(), x, torch.zeros(n, dtype=torch.long)


def test_fat_stops_tau_steps_after_the_first_misclassification_per_sample():
    alpha, steps = 0.02, 10
    first_wrong = [1, 2, 3, 5, 8, 12]  # the step whose iterate is first misclassified (12: never, within 10)
    for tau in (0, 1, 3):
        model, x, y = _crafted(first_wrong, alpha)
        fat = FAT(eps=0.5, alpha=alpha, steps=steps, tau=tau, omega=0.0, random_start=False)
        ctx = EpochContext(epoch=0, epochs=1)
        x_adv = fat.perturb(model, x, y, ctx)
        moved = (x[:, 0, 0, 0] - x_adv[:, 0, 0, 0]) / alpha  # steps each sample took
        expected = torch.tensor([min(m + tau, steps) for m in first_wrong], dtype=moved.dtype)
        assert torch.allclose(moved, expected, atol=1e-4), (tau, moved, expected)
        assert ctx.pop_metrics()["attack_steps"] == pytest.approx(float(expected.mean()))
        # a sample stopped because it was misclassified (tau times over); the others ran out of steps
        wrong = model(x_adv).argmax(1) != y
        assert bool(wrong[expected < steps].all())


def test_fat_tau_schedule_is_the_official_one_scaled_to_the_run():
    fat = make_objective({"name": "fat"})

    def adjust_tau(epoch):  # FAT.py adjust_tau with --dynamictau, 1-based epochs of its 120-epoch run
        return 0 if epoch <= 50 else 1 if epoch <= 90 else 2

    assert [fat.tau_at(e, 120) for e in range(120)] == [adjust_tau(e + 1) for e in range(120)]
    assert FAT(tau=2).tau_at(0, 10) == 2  # a constant tau
    with pytest.raises(ValueError, match="tau_milestones"):
        FAT(tau=[0, 1, 2], tau_milestones=[0.5])


def test_ates_stops_once_the_softmax_margin_reaches_the_threshold():
    alpha, steps = 0.02, 10
    model, x, y = _crafted([2, 4, 6, 20], alpha)
    for threshold in (-0.5, 0.0, 0.6, 0.99):
        ates = ATES(eps=0.5, alpha=alpha, steps=steps, threshold_start=threshold, threshold_end=threshold,
                    random_start=False)
        ctx = EpochContext(epoch=0, epochs=1)
        x_adv = ates.perturb(model, x, y, ctx)
        took = torch.round((x[:, 0, 0, 0] - x_adv[:, 0, 0, 0]) / alpha)
        # brute force: plain PGD iterates x - m alpha (a down, b up), first m whose softmax margin >= threshold
        for i in range(len(y)):
            expected = steps
            for m in range(steps + 1):
                z = x[i:i + 1].clone()
                z[..., 0] -= m * alpha
                z[..., 1] += m * alpha
                if margin(F.softmax(model(z), 1), y[i:i + 1]).item() >= threshold:
                    expected = m
                    break
            assert took[i].item() == expected, (threshold, i)
    # the threshold rises linearly over the run
    ates = ATES(threshold_start=-0.2, threshold_end=0.8)
    assert [ates.threshold_at(e, 6) for e in range(6)] == pytest.approx([-0.2 + 0.2 * e for e in range(6)])
    with pytest.raises(ValueError, match="threshold_end"):
        ATES(threshold_start=0.5, threshold_end=0.1)


def test_ates_higher_threshold_means_stronger_attacks_on_a_real_model(digits):
    x, y = digits
    model = TinyNet().eval()
    steps = []
    for thr in (-1.0, 0.0, 1.0):
        torch.manual_seed(0)  # the same random start: per sample, a higher threshold can only stop later
        ctx = EpochContext()
        ATES(eps=0.3, alpha=0.05, threshold_start=thr, threshold_end=thr).perturb(model, x, y, ctx)
        steps.append(ctx.pop_metrics()["attack_steps"])
    assert steps[0] == 0 and steps[0] <= steps[1] <= steps[2] == 10


# ------------------------------------------------------------------------------------------ OA-AT schedule


def code_schedule(epochs, eps=16 / 255, alternate_eps=12 / 255, mixup_alpha=0.2, lpips_weight=1.0, beta=1.5,
                  beta_final=3.0):
    """The authors' main loop (train_OAAT.py lines 690-735 and 399-404), as a reference: per 1-based epoch the eps,
    attack steps and step size, whether iterations alternate, and alpha / lambda / beta."""
    out, vareps, alpha, b = [], 4 / 255, 1.0, beta
    for epoch in range(1, epochs + 1):
        if epoch > epochs // 4:
            vareps = epoch * eps / epochs
        if vareps > alternate_eps + 1e-12:
            alpha = alpha - mixup_alpha / (epochs - int(3 * epochs / 4) + 1)
            lam = lpips_weight * (epoch - int(3 * epochs / 4)) / (epochs - int(3 * epochs / 4))
            b = beta + (beta_final - beta) * (epoch - int(3 * epochs / 4)) / (epochs - int(3 * epochs / 4))
            out.append((vareps, 10, vareps / 4, True, alpha, lam, b))
        else:
            steps, size = (5, vareps / 2) if epoch <= epochs // 4 else (10, vareps / 4)
            out.append((vareps, steps, size, False, 1.0, 0.0, b))
    return out


@pytest.mark.parametrize("epochs", [2, 3, 4, 8, 110, 200])
def test_oaat_schedule_matches_the_authors_loop(epochs):
    ours = [(p.eps, p.steps, p.step_size, p.alternate, p.alpha, p.lpips_weight, p.beta)
            for p in make_objective({"name": "oaat"}).schedule(epochs)]
    ref = code_schedule(epochs)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a[1] == b[1] and a[3] == b[3]
        assert a[0] == pytest.approx(b[0]) and a[2] == pytest.approx(b[2])
        assert a[4:] == pytest.approx(b[4:])


def test_oaat_phases_switch_at_the_stated_epochs():
    s = OAAT().schedule(8)  # 8 epochs: 4/255 for 2 epochs, then e * 16/255 / 8: 6, 8, 10, 12, 14, 16
    assert [round(p.eps * 255, 6) for p in s] == [4, 4, 6, 8, 10, 12, 14, 16]
    assert [p.steps for p in s] == [5, 5] + [10] * 6
    assert [p.alternate for p in s] == [False] * 6 + [True] * 2  # 12/255 is still plain AT
    assert s[-1].eps == pytest.approx(16 / 255) and s[-1].lpips_weight == 1.0 and s[-1].beta == 3.0
    assert all(0 <= p.alpha <= 1 for p in s) and s[-1].alpha < s[-2].alpha < 1  # weight of f(x_hat) rises


@pytest.mark.parametrize("key,value", [("mixup_alpha", 1.5), ("mixup_alpha", -0.1), ("lpips_weight", -1),
                                       ("lpips_tau", 1.0), ("eps_start", "32/255"), ("oracle_eps", "8/255"),
                                       ("beta", -1), ("label_smoothing", 1.0), ("steps", 0)])
def test_oaat_refuses_out_of_range_parameters_naming_them(key, value):
    with pytest.raises(ValueError, match=key):
        make_objective({"name": "oaat", key: value})


def test_oaat_refuses_an_engine_eps_ramp(digits, tmp_path):
    x, y = digits
    with pytest.raises(ValueError, match="eps_schedule"):
        fit(TinyNet(), DataLoader(TensorDataset(x, y), batch_size=64),
            objective={"name": "oaat", "lpips_layers": LAYERS}, epochs=2, seed=0, checkpoint_dir=tmp_path,
            optimizer={"name": "sgd", "lr": 0.05}, progress=False, eps_schedule={"ramp_epochs": 2})


# ------------------------------------------------------------------------------------------------- LPIPS


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Any attempt to open a connection (a weight download) fails loudly; no cached weights are visible."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def refuse(*a, **k):
        raise AssertionError("tried to open a network connection (a weight download?)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


class ToSigned(nn.Module):
    def forward(self, x):
        return 2 * x - 1  # lpips.LPIPS(normalize=True) maps [0, 1] inputs to [-1, 1]


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchvision's notice about lpips' legacy pretrained=False
def test_lpips_formula_equals_the_lpips_package_unlearned_distance(no_network):
    import lpips

    torch.manual_seed(0)
    ref = lpips.LPIPS(net="alex", lpips=False, pretrained=False, pnet_rand=True, verbose=False).eval()
    # the same trunk, as one network whose named stages FeatureLPIPS hooks: identical activations
    trunk = nn.Sequential(ToSigned(), ref.scaling_layer, ref.net.slice1, ref.net.slice2, ref.net.slice3,
                          ref.net.slice4, ref.net.slice5)
    ours = FeatureLPIPS(trunk, layers=["2", "3", "4", "5", "6"], squared=True)
    x = torch.rand(3, 3, 64, 64)
    x_hat = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    with torch.no_grad():
        expected = ref(x, x_hat, normalize=True).view(-1)
        got = ours(x, x_hat)
        root = FeatureLPIPS(trunk, layers=["2", "3", "4", "5", "6"])(x, x_hat)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert torch.allclose(root, expected.sqrt(), rtol=1e-5)  # OA-AT's LPIPSDistance is the square root
    # and the formula on given features equals the package's own pieces
    fa = [torch.randn(2, c, s, s) for c, s in [(4, 8), (6, 4)]]
    fb = [torch.randn(2, c, s, s) for c, s in [(4, 8), (6, 4)]]
    pieces = sum(lpips.spatial_average((lpips.normalize_tensor(a) - lpips.normalize_tensor(b)).pow(2).sum(1, True))
                 for a, b in zip(fa, fb)).view(-1)
    assert torch.allclose(lpips_from_features(fa, fb), pieces, rtol=1e-6)


def test_lpips_is_zero_at_x_and_grows_with_the_perturbation(digits):
    x = digits[0][:16]
    net = TinyNet().eval()
    lp = FeatureLPIPS(net, LAYERS, squared=True)
    direction = torch.randn_like(x).sign()
    with torch.no_grad():
        assert torch.equal(lp(x, x), torch.zeros(len(x)))
        assert torch.equal(FeatureLPIPS(net, LAYERS)(x, x), torch.zeros(len(x)))
        d = [lp(x, x + t * direction).mean().item() for t in (1e-3, 2e-3, 1e-2, 5e-2)]
    assert 0 < d[0] < d[1] < d[2] < d[3]
    assert 3.0 < d[1] / d[0] < 5.0  # squared distances: quadratic in a small perturbation
    # the gradient at x_hat = x is finite (zero), as the attack may start there
    z = x.clone().requires_grad_(True)
    FeatureLPIPS(net, LAYERS)(x, z).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_default_layers_are_the_stage_outputs_of_the_package_models():
    r = create_model("resnet18", in_shape=(3, 32, 32), num_classes=10, width="tiny", seed=0)
    w = create_model("wrn34_10", in_shape=(3, 32, 32), num_classes=10, width=1, seed=0)
    assert default_layers(r) == [f"core.layer{i}" for i in (1, 2, 3, 4)]
    assert default_layers(w) == [f"core.block{i}" for i in (1, 2, 3)]
    with pytest.raises(ValueError, match="lpips_layers"):
        default_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    feats = FeatureLPIPS(r).features(torch.rand(2, 3, 32, 32))
    assert [f.shape[2] for f in feats] == [32, 16, 8, 4]


def test_oracle_invariant_attack_keeps_lpips_lower_than_plain_pgd(digits):
    x, y = digits[0][:64], digits[1][:64]
    model = TinyNet(seed=1)
    obj = OAAT(lpips_layers=LAYERS, eps="32/255", oracle_eps="48/255")
    ctx = EpochContext(epoch=3, epochs=4)
    obj.on_epoch_start(model, ctx)
    ph = obj._phase
    assert ph.alternate and obj._lpips is not None
    lp = FeatureLPIPS(obj._lpips.network, LAYERS)
    out = {}
    for lam in (0.0, 50.0):
        torch.manual_seed(0)
        x_adv = obj._oracle_invariant(model, x, y, dataclasses.replace(ph, lpips_weight=lam))
        assert (x_adv - x).abs().max() <= ph.eps + 1e-6
        with torch.no_grad():
            out[lam] = lp(x, x_adv).mean().item()
    assert out[50.0] < 0.8 * out[0.0]


# ------------------------------------------------------------------------------------------ training runs


def _train(objective, tmp, epochs=3, x=None, y=None, model=None, callbacks=()):
    return fit(model or TinyNet(seed=3), DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True),
               objective=objective, epochs=epochs, seed=5, checkpoint_dir=tmp, progress=False,
               optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9}, schedule="cosine", callbacks=callbacks)


@pytest.mark.parametrize("spec", [
    {"name": "fat", "eps": 0.1, "alpha": 0.03, "steps": 4},
    {"name": "ates", "eps": 0.1, "alpha": 0.03, "steps": 4, "threshold_start": -0.5, "threshold_end": 0.5},
])
def test_fat_and_ates_train_a_tiny_model(digits, tmp_path, spec):
    x, y = digits
    res = _train(spec, tmp_path, epochs=4, x=x, y=y)
    losses = [h["loss"] for h in res.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert evaluate(res.model, DataLoader(TensorDataset(x, y), batch_size=256))["acc"] > 0.9
    assert all(0 <= h["attack_steps"] <= spec["steps"] for h in res.history)
    # adversarial training worked: more robust to PGD at the training eps than the same model trained on CE
    plain = _train("ce", tmp_path / "ce", epochs=4, x=x, y=y)
    robust = [(run_attack("pgd", m.eval(), x, y, eps=spec["eps"], alpha=spec["alpha"], steps=10).success
               .float().mean().item()) for m in (res.model, plain.model)]
    assert robust[0] < robust[1] - 0.05, robust


def test_oaat_trains_and_switches_phases_as_scheduled(digits, tmp_path):
    x, y = digits
    spec = {"name": "oaat", "lpips_layers": LAYERS, "awp_warmup": 1}
    res = _train(spec, tmp_path, epochs=4, x=x, y=y)
    plan = make_objective(spec).schedule(4)
    h = res.history
    assert all(math.isfinite(r["loss"]) for r in h)
    assert [r["eps"] for r in h] == pytest.approx([p.eps for p in plan])
    assert [r["alternate"] for r in h] == [float(p.alternate) for p in plan] == [0, 0, 0, 1]
    assert h[-1]["oracle_sensitive"] == 0.5 and h[0]["oracle_sensitive"] == 0  # alternate batches (4 per epoch)
    assert "lpips" in h[-1] and h[-1]["lpips"] > 0 and all("lpips" not in r for r in h[:-1])
    assert [r["beta"] for r in h] == pytest.approx([p.beta for p in plan])
    # it learnt the (easy) digits despite the growing eps
    assert evaluate(res.model, DataLoader(TensorDataset(x, y), batch_size=256))["acc"] > 0.9
    # the LPIPS average is checkpointed and is not the model itself
    ema = load_checkpoint(res.checkpoint)["objective"]["ema"]
    assert ema.keys() == res.model.state_dict().keys()
    assert not torch.equal(ema["layer1.0.weight"], res.model.state_dict()["layer1.0.weight"])


def test_oaat_awp_sees_x_plus_two_delta_in_plain_epochs(digits):
    x, y = digits[0][:32], digits[1][:32]
    model = TinyNet()
    obj = OAAT(lpips_layers=LAYERS, awp_warmup=0)
    seen = {}
    real_pgd, real_awp = obj._pgd_ce, obj._awp.weight_perturbation

    def pgd(*a, **k):
        seen["x_adv"] = real_pgd(*a, **k)
        return seen["x_adv"]

    def awp(model_, x_, x_awp, y_, ctx_):
        seen["x_awp"] = x_awp
        return real_awp(model_, x_, x_awp, y_, ctx_)

    obj._pgd_ce, obj._awp.weight_perturbation = pgd, awp
    ctx = EpochContext(epoch=0, epochs=8)
    obj.on_epoch_start(model, ctx)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, _ = obj(model, x, y, ctx)
    assert torch.equal(seen["x_awp"], (x + 2 * (seen["x_adv"] - x)).clamp(0, 1))
    assert (seen["x_adv"] - x).abs().max() <= 4 / 255 + 1e-6  # first quarter: 4/255
    assert not torch.equal(before["layer1.0.weight"], model.state_dict()["layer1.0.weight"])  # perturbed now
    obj.after_backward(model, ctx)
    assert torch.equal(before["layer1.0.weight"], model.state_dict()["layer1.0.weight"])  # restored exactly


class KillAt(Objective):
    """``inner``, except that it raises :class:`Killed` at ``(epoch, batch)``; delegates every hook and its state
    (unlike the conftest helper's plain Hook), so the checkpoint carries the inner objective's state."""

    def __init__(self, inner, epoch, batch):
        self.inner, self.at = inner, (epoch, batch)

    def __call__(self, model, x, y, ctx):
        if (ctx.epoch, ctx.batch) == self.at:
            raise Killed
        return self.inner(model, x, y, ctx)

    def after_backward(self, model, ctx):
        self.inner.after_backward(model, ctx)

    def on_epoch_start(self, model, ctx):
        self.inner.on_epoch_start(model, ctx)

    def on_epoch_end(self, model, ctx):
        self.inner.on_epoch_end(model, ctx)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)

    @property
    def eps(self):
        return self.inner.eps


@pytest.mark.parametrize("kill", ["mid_epoch", "after_checkpoint"])
def test_oaat_kill_and_resume_gives_bit_identical_weights(digits, tmp_path, kill):
    x, y = digits
    spec = {"name": "oaat", "lpips_layers": LAYERS, "awp_warmup": 0, "steps": 3, "oracle_steps": 3}
    full = _train(spec, tmp_path / "full", x=x, y=y)
    assert full.history[-1]["alternate"] == 1 and full.history[-1]["lpips"] > 0  # the resumed part uses LPIPS

    def stop_after_first(epoch, record):
        if kill == "after_checkpoint" and epoch == 1:
            raise Killed

    cut = KillAt(make_objective(spec), 2, 1) if kill == "mid_epoch" else make_objective(spec)
    with pytest.raises(Killed):
        _train(cut, tmp_path / "cut", x=x, y=y, callbacks=[stop_after_first])
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    resumed = _train(spec, tmp_path / "cut", x=x, y=y, model=TinyNet(seed=99))  # other initial weights
    assert resumed.resumed_from == 2
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])]
    ea, eb = (load_checkpoint(r.checkpoint)["objective"]["ema"] for r in (full, resumed))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
