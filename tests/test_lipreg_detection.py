"""lipreg Sec. 7: the gradient-norm detector (threshold, rate, norms of adversarial images) and the evasive
Carlini-Wagner attack, on a small CNN trained here in a second on scikit-learn's digits: evasive CW evades the
detector (its threshold set on the clean test images) far more often than plain CW, at larger distances; with no
penalty it is CW-L2 and finds distances like foolbox's; it keeps the attack contract."""

import contextlib
import math

import numpy as np
import pytest
import torch
from torch import nn

import advrep.lipreg.evasive  # noqa: F401  (registers evasive_cw)
from advrep.attacks import ATTACKS, lp_norm, run_attack
from advrep.evaluate.per_sample import input_gradient_norms
from advrep.lipreg.detection import adversarial_gradient_norms, detection_rate, detection_threshold
from advrep.lipreg.evasive import EvasiveCW, loss_gradient_sq_norm
from conftest import digits01

BUDGET = {"binary_search_steps": 5, "steps": 100}  # CW's search, cut to a second on this model
INF = float("inf")


@contextlib.contextmanager
def one_thread():
    """conftest's one-thread rule for the module fixtures below (set up before its function-scoped fixture)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# ---------------------------------------------------------------- threshold and rate, by hand

def test_threshold_is_the_percentile_over_correct_clean_images():
    norms = np.array([5.0, 1.0, 100.0, 3.0, 2.0, 4.0])
    correct = np.array([True, True, False, True, True, True])  # the 100 is misclassified: left out
    # sorted correct norms 1 2 3 4 5; linear interpolation at rank p/100 * (5 - 1)
    assert detection_threshold(norms, correct, 50.0) == pytest.approx(3.0)
    assert detection_threshold(norms, correct, 95.0) == pytest.approx(4.0 + 0.8 * (5.0 - 4.0))
    assert detection_threshold(norms, correct, 25.0) == pytest.approx(2.0)
    assert detection_threshold(norms, correct) == detection_threshold(norms, correct, 95.0)  # the paper's 95 %
    assert detection_threshold(torch.tensor(norms), torch.tensor(correct), 50.0) == pytest.approx(3.0)


def test_rate_counts_norms_strictly_above_the_threshold():
    assert detection_rate(np.array([1.0, 2.0, 3.0, 4.0]), 2.5) == 0.5
    assert detection_rate(np.array([1.0, 2.0, 3.0, 4.0]), 2.0) == 0.5  # a norm equal to c is not flagged
    assert detection_rate(np.array([1.0, 2.0, 3.0, 4.0]), 0.0) == 1.0
    assert detection_rate(torch.tensor([0.5, 9.0]), 10.0) == 0.0


def test_clean_false_positives_are_what_the_percentile_sets():
    """On the correct clean images the detector flags the (n - 1) - floor(p / 100 (n - 1)) largest norms (linear
    interpolation puts c between two of them): 1 - p / 100 of them to within one image."""
    rng = np.random.default_rng(0)
    norms = rng.lognormal(size=1001)
    correct = rng.random(1001) < 0.9
    n = int(correct.sum())
    for p in (80.0, 95.0, 99.0):
        c = detection_threshold(norms, correct, p)
        rate = detection_rate(norms[correct], c)
        assert rate * n == (n - 1) - math.floor(p / 100 * (n - 1))
        assert abs(rate - (1 - p / 100)) <= 1 / n


@pytest.mark.parametrize("percentile", [0.0, 100.0, -5.0, 120.0, float("nan")])
def test_threshold_rejects_a_percentile_outside_0_100(percentile):
    with pytest.raises(ValueError, match="percentile"):
        detection_threshold(np.ones(3), np.ones(3, dtype=bool), percentile)


def test_threshold_and_rate_reject_bad_input():
    with pytest.raises(ValueError, match="no clean image is classified correctly"):
        detection_threshold(np.ones(3), np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="bool"):
        detection_threshold(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="shape"):
        detection_threshold(np.ones(3), np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="non-finite"):
        detection_threshold(np.array([1.0, np.nan]), np.ones(2, dtype=bool))
    with pytest.raises(ValueError, match="one-dimensional"):
        detection_rate(np.ones((2, 2)), 1.0)
    with pytest.raises(ValueError, match="empty"):
        detection_rate(np.zeros(0), 1.0)
    with pytest.raises(ValueError, match="finite"):
        detection_rate(np.ones(2), float("nan"))


# ---------------------------------------------------------------- norms of adversarial images

def test_adversarial_gradient_norms_of_a_linear_softmax_model_match_the_closed_form():
    """f = softmax(W x + b): grad_x f_k = p_k (W_k - sum_j p_j W_j), so ||grad f||_{2,inf} is computed directly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).double()
    x = torch.rand(7, 3, 2, 2, dtype=torch.float64)
    W, b = model[1].weight.detach(), model[1].bias.detach()
    p = (x.flatten(1) @ W.T + b).softmax(1)  # (B, K)
    rows = p.unsqueeze(2) * (W.unsqueeze(0) - (p @ W).unsqueeze(1))  # (B, K, d): grad of p_k
    expected = rows.norm(dim=2).amax(1).numpy()
    got = adversarial_gradient_norms(model, x)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    np.testing.assert_allclose(adversarial_gradient_norms(model, x, batch_size=3), expected, rtol=1e-10)
    _, jac = input_gradient_norms(model, x, torch.zeros(7, dtype=torch.long))
    np.testing.assert_array_equal(got, jac.numpy())  # the evaluation table's column, whatever the label


def test_penalty_is_the_squared_loss_gradient_and_differentiable():
    """loss_gradient_sq_norm against the closed form ||W^T (p - e_t)||^2 of a linear model, and its x-gradient
    (double backprop) against finite differences on a smooth model."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 3).double()
    z = torch.rand(5, 6, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 1, 2, 0, 1])
    logits = lin(z)
    got = loss_gradient_sq_norm(logits, z, t)
    e = nn.functional.one_hot(t, 3).double()
    expected = ((logits.softmax(1) - e) @ lin.weight).square().sum(1)
    torch.testing.assert_close(got, expected.detach())
    smooth = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()

    def f(v):
        return loss_gradient_sq_norm(smooth(v), v, t)

    assert torch.autograd.gradcheck(f, (torch.rand(5, 6, dtype=torch.float64, requires_grad=True),))


# ---------------------------------------------------------------- the attack on a trained model

@pytest.fixture(scope="module")
def trained():
    """conv3x3(8)-ReLU-linear on digits (1200 train / 597 test), full-batch Adam: ~93 % test accuracy."""
    x, y = digits01()
    xtr, ytr, xte, yte = x[:1200], y[:1200], x[1200:], y[1200:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with one_thread():
        for _ in range(300):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr), ytr).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        correct = model(xte).argmax(1) == yte
    assert correct.float().mean() > 0.9
    return model, xte, yte, correct


@pytest.fixture(scope="module")
def detector(trained):
    """The threshold c from the clean test images (95th percentile over the correct ones), as in the paper."""
    model, xte, yte, correct = trained
    with one_thread():
        _, jac = input_gradient_norms(model, xte, yte)
    return detection_threshold(jac.numpy(), correct.numpy())


@pytest.fixture(scope="module")
def attacked(trained):
    """Plain CW (foolbox) and evasive CW on the same 64 correctly classified test images, minimal-distance mode."""
    model, xte, yte, correct = trained
    x, y = xte[correct][:64], yte[correct][:64]
    with one_thread():
        out = {name: run_attack(name, model, x, y, eps=INF, norm="l2", **BUDGET) for name in ("cw_l2", "evasive_cw")}
    return x, y, out


def _undetected_success(model, result, c):
    """Fraction of the attacked images misclassified at x_adv and not flagged by the detector there."""
    norms = adversarial_gradient_norms(model, result.x_adv)
    return float((result.success.numpy() & (norms <= c)).mean())


def test_evasive_cw_evades_the_detector_more_often_than_cw_at_larger_distances(trained, detector, attacked):
    model, *_ = trained
    x, y, out = attacked
    cw, ev = out["cw_l2"], out["evasive_cw"]
    assert cw.success.float().mean() > 0.9 and ev.success.float().mean() > 0.9
    rate_cw = detection_rate(adversarial_gradient_norms(model, cw.x_adv[cw.success]), detector)
    rate_ev = detection_rate(adversarial_gradient_norms(model, ev.x_adv[ev.success]), detector)
    assert rate_cw > 0.8  # the paper's observation (Table 6: 100 % of CW images detected) holds here too
    assert rate_ev < rate_cw - 0.5
    assert _undetected_success(model, ev, detector) > _undetected_success(model, cw, detector) + 0.5
    d_cw = lp_norm(cw.x_adv - x, "l2")[cw.success].median()
    d_ev = lp_norm(ev.x_adv - x, "l2")[ev.success].median()
    assert d_ev > 1.2 * d_cw  # evading costs distance (Table 6: median 0.34 -> 0.81)


def test_without_penalty_evasive_cw_is_cw_l2(trained, attacked):
    """penalty = 0 leaves the hand-written CW-L2; it finds minimal distances like foolbox's at the same budget."""
    model, *_ = trained
    x, y, out = attacked
    r = run_attack("evasive_cw", model, x, y, eps=INF, norm="l2", penalty=0.0, **BUDGET)
    ref = out["cw_l2"]
    both = r.success & ref.success
    assert both.float().mean() > 0.9
    ratio = lp_norm(r.x_adv - x, "l2")[both].median() / lp_norm(ref.x_adv - x, "l2")[both].median()
    assert 0.85 < float(ratio) < 1.15
    d_pen = lp_norm(out["evasive_cw"].x_adv - x, "l2")[out["evasive_cw"].success].median()
    assert d_pen > lp_norm(r.x_adv - x, "l2")[r.success].median()  # the penalty is what moves the images


def test_evasive_cw_keeps_the_attack_contract(trained):
    model, xte, yte, correct = trained
    wrong = (~correct).nonzero().squeeze(1)[:4]
    right = correct.nonzero().squeeze(1)[:28]
    idx = torch.cat([wrong, right])
    x, y = xte[idx], yte[idx]
    eps = 0.8
    model.train()  # attacked in eval mode, mode restored
    model.zero_grad(set_to_none=True)
    r = run_attack("evasive_cw", model, x, y, eps=eps, norm="l2", **BUDGET)
    assert model.training
    model.eval()
    assert all(p.grad is None for p in model.parameters())  # the weights' gradients are left alone
    assert r.x_adv.shape == x.shape and r.success.shape == r.model_calls.shape == y.shape
    assert (lp_norm(r.x_adv - x, "l2") <= eps * (1 + 1e-6)).all()
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    with torch.no_grad():
        verdict = model(r.x_adv).argmax(1) != y
    assert torch.equal(r.success, verdict)  # the reported success is the model's verdict at x_adv
    n = len(wrong)
    assert r.success[:n].all() and (r.model_calls[:n] == 0).all() and torch.equal(r.x_adv[:n], x[:n])
    steps = BUDGET["binary_search_steps"] * BUDGET["steps"]
    assert (r.model_calls[n:] > 0).all() and (r.model_calls[n:] <= steps).all()
    assert 0 < r.success[n:].float().mean() < 1  # eps binds: some images break inside the ball, some do not
    unbroken = ~r.success
    assert torch.equal(r.x_adv[unbroken], x[unbroken])
    # minimal-distance mode: a distance for (nearly) every image, 0 for the misclassified ones
    d = run_attack("evasive_cw", model, x, y, eps=INF, norm="l2", **BUDGET)
    dist = lp_norm(d.x_adv - x, "l2")
    assert d.success.float().mean() > 0.9 and (dist[:n] == 0).all() and (dist[n:][d.success[n:]] > 0).all()


def test_evasive_cw_is_registered_and_rejects_bad_parameters(trained):
    model, xte, yte, _ = trained
    assert ATTACKS["evasive_cw"] is EvasiveCW
    x, y = xte[:4], yte[:4]
    with pytest.raises(ValueError, match="norms"):
        run_attack("evasive_cw", model, x, y, eps=0.1, norm="linf")
    for key, value in (("penalty", -1.0), ("steps", 0), ("stepsize", 0.0), ("confidence", -1.0),
                       ("initial_const", 0.0), ("binary_search_steps", 0), ("penalty", math.inf)):
        with pytest.raises(ValueError, match=key):
            run_attack("evasive_cw", model, x, y, eps=0.1, norm="l2", **{key: value})
    with pytest.raises(ValueError, match="penalty_label"):
        run_attack("evasive_cw", model, x, y, eps=0.1, norm="l2", penalty_label="target")
