"""Per-sample evaluation table, its aggregations and the gradient-masking check, on small MLPs trained here in a
few seconds on scikit-learn's bundled digits (8x8, scaled to [0, 1])."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from advrep import provenance
from advrep.attacks import minimal_distance, robust_accuracy_curve
from advrep.evaluate import (accuracy_curve, attack_labels, clean_accuracy, distance_nauc, evaluate_per_sample,
                             gradient_masking_checks, masking_rows, max_gradient_norm, mean_gradient_norm,
                             median_adversarial_distance, median_time_to_success, read_per_sample, robust_accuracy,
                             summary_rows, write_per_sample)
from conftest import digits01

ATTACKS = [("pgd5", "pgd", {"steps": 5}), ("fgsm", "fgsm", {}), ("square", "square", {"n_queries": 50})]
EPS = 0.05


@pytest.fixture(scope="module")
def digits():
    x, y = digits01()
    return x[:1200], y[:1200], x[1200:1400], y[1200:1400]


@pytest.fixture(scope="module")
def mlp(digits):
    xtr, ytr, xte, yte = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(xtr), ytr).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean()
    assert 0.9 < acc < 1.0  # some misclassified samples, to exercise their bookkeeping
    return model


@pytest.fixture(scope="module")
def table(mlp, digits):
    x, y = digits[2], digits[3]
    mlp.train()  # evaluation must not depend on (nor change) the caller's mode
    df = evaluate_per_sample(mlp, (x, y), attacks=ATTACKS, eps=EPS, norm="linf",
                             minimal_distance={"max_eps": 0.5}, batch_size=1000)
    assert mlp.training
    mlp.eval()
    return df


# -- the per-sample table ----------------------------------------------------------------------------------------

def test_table_columns_and_clean_predictions(table, mlp, digits):
    x, y = digits[2], digits[3]
    expected = ["index", "label", "clean_pred", "clean_correct", "worst_success", "robust_correct", "min_distance",
                "grad_loss_l2", "grad_f_2inf"] + [f"{k}:{lab}" for lab, _, _ in ATTACKS for k in ("success", "calls")]
    assert set(expected) <= set(table.columns)
    assert attack_labels(table) == [lab for lab, _, _ in ATTACKS]
    assert len(table) == len(y) and (table["index"].to_numpy() == np.arange(len(y))).all()
    assert (table["label"].to_numpy() == y.numpy()).all()
    with torch.no_grad():
        pred = mlp(x).argmax(1).numpy()
    assert (table["clean_pred"].to_numpy() == pred).all()
    assert (table["clean_correct"].to_numpy() == (pred == y.numpy())).all()
    assert 0 < (~table["clean_correct"]).sum() < len(y) / 10


def test_worst_case_is_the_or_and_robust_is_correct_and_unbroken(table):
    succ = np.stack([table[f"success:{lab}"].to_numpy() for lab, _, _ in ATTACKS])
    worst = succ.any(0)
    assert (table["worst_success"].to_numpy() == worst).all()
    assert (table["robust_correct"].to_numpy() == (table["clean_correct"].to_numpy() & ~worst)).all()
    # the attacks disagree somewhere, so the OR is not just one of them
    assert any((succ[k] != worst).any() for k in range(len(ATTACKS)))
    assert 0 < table["robust_correct"].mean() < table["clean_correct"].mean()


def test_model_calls_and_misclassified_bookkeeping(table):
    ok = table["clean_correct"].to_numpy()
    for lab, _, _ in ATTACKS:
        calls = table[f"calls:{lab}"].to_numpy()
        assert (calls[ok] >= 1).all(), lab  # attacked samples cost at least one forward pass
        assert (calls[~ok] == 0).all() and table[f"success:{lab}"].to_numpy()[~ok].all(), lab
    assert (table["calls:fgsm"].to_numpy()[ok] <= 2).all()  # one gradient + the check
    assert (table["calls:pgd5"].to_numpy()[ok] <= 6).all()  # 5 steps + the final check


def test_minimal_distance_column(table, mlp, digits):
    x, y = digits[2], digits[3]
    d = table["min_distance"].to_numpy()
    ok = table["clean_correct"].to_numpy()
    assert (d[~ok] == 0).all() and (d[ok] > 0).all()
    ref = minimal_distance(mlp, x, y, "linf", max_eps=0.5).numpy()
    np.testing.assert_allclose(d, ref, rtol=1e-6)
    curve = accuracy_curve(table, [0.0, EPS, 0.1, 0.5])
    assert curve[0] == pytest.approx(ok.mean()) and (np.diff(curve) <= 0).all()
    np.testing.assert_allclose(curve, robust_accuracy_curve(torch.tensor(d), [0.0, EPS, 0.1, 0.5]).numpy(),
                               rtol=1e-6)


def test_loss_gradient_norm_matches_autograd(table, mlp, digits):
    x, y = digits[2], digits[3]
    for i in (0, 3, 17, int(np.flatnonzero(~table["clean_correct"].to_numpy())[0])):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(mlp(xi), y[i:i + 1]), xi)
        assert table["grad_loss_l2"].iloc[i] == pytest.approx(g.norm().item(), rel=1e-5)


@pytest.mark.parametrize("jacobian_of", ["softmax", "logits"])
def test_jacobian_2inf_norm_matches_autograd_functional_jacobian(table, mlp, digits, jacobian_of):
    x, y = digits[2], digits[3]
    idx = [0, 5, 11, int(np.flatnonzero(~table["clean_correct"].to_numpy())[0])]
    if jacobian_of == "softmax":
        got = table["grad_f_2inf"].to_numpy()[idx]
    else:
        got = evaluate_per_sample(mlp, (x[idx], y[idx]), attacks=[], eps=EPS, jacobian_of="logits"
                                  )["grad_f_2inf"].to_numpy()
    for k, i in enumerate(idx):
        def f(z):
            out = mlp(z)
            return out.softmax(1) if jacobian_of == "softmax" else out

        jac = torch.autograd.functional.jacobian(f, x[i:i + 1]).reshape(10, -1)  # (classes, inputs)
        ref = jac.norm(dim=1).max().item()  # the (2, inf) operator norm: the largest row L2 norm
        assert got[k] == pytest.approx(ref, rel=1e-5)
        assert got[k] != pytest.approx(jac.norm().item(), rel=1e-3)  # not the Frobenius norm
    if jacobian_of == "softmax":  # ||grad l|| = ||grad p_y|| / p_y >= ||grad p_y||; here not above 1/p_y times it
        with torch.no_grad():
            p = mlp(x).softmax(1)[torch.arange(len(y)), y].numpy()
        gl, gf = table["grad_loss_l2"].to_numpy(), table["grad_f_2inf"].to_numpy()
        assert (gl <= gf / p * (1 + 1e-4) + 1e-7).all()


def test_loader_input_and_csv_round_trip(table, mlp, digits, tmp_path):
    x, y = digits[2], digits[3]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    df = evaluate_per_sample(mlp, loader, attacks=[("fgsm", "fgsm", {})], eps=EPS, norm="linf")
    assert (df["index"].to_numpy() == np.arange(len(y))).all()
    for col in ("clean_pred", "success:fgsm", "calls:fgsm"):  # FGSM is deterministic: batching does not matter
        assert (df[col].to_numpy() == table[col].to_numpy()).all(), col
    np.testing.assert_allclose(df["grad_loss_l2"], table["grad_loss_l2"], rtol=1e-5)
    t = table.copy()
    t.loc[0, "min_distance"] = math.inf  # never broken
    path = write_per_sample(t, tmp_path / "sub" / "per_sample.csv")
    back = read_per_sample(path)
    assert list(back.columns) == list(t.columns) and back["min_distance"].iloc[0] == math.inf
    pd.testing.assert_frame_equal(back, t, check_dtype=False)
    assert [p.name for p in path.parent.iterdir()] == ["per_sample.csv"]  # no temporary left behind


# -- aggregations on a table made by hand --------------------------------------------------------------------------

@pytest.fixture
def hand():
    return pd.DataFrame({
        "index": range(6), "label": [0, 1, 2, 3, 4, 5], "clean_pred": [0, 1, 2, 3, 9, 5],
        "clean_correct": [True, True, True, True, False, True],
        "success:a": [False, True, False, True, True, False], "calls:a": [10, 3, 10, 5, 0, 10],
        "success:b": [False, False, True, True, True, False], "calls:b": [20, 20, 7, 9, 0, 20],
        "success:c": [False, False, False, False, True, False], "calls:c": [15, 15, 15, 15, 0, 15],
        "worst_success": [False, True, True, True, True, False],
        "robust_correct": [True, False, False, False, False, True],
        "min_distance": [0.5, 0.1, 0.2, 0.05, 0.0, math.inf],
        "grad_loss_l2": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "grad_f_2inf": [0.1, 0.4, 0.2, 0.3, 0.9, 0.1]})


def test_aggregations_by_hand(hand):
    assert clean_accuracy(hand) == pytest.approx(5 / 6)
    assert robust_accuracy(hand, "a") == pytest.approx(3 / 6)  # rows 0, 2, 5
    assert robust_accuracy(hand, "b") == pytest.approx(3 / 6)  # rows 0, 1, 5
    assert robust_accuracy(hand, "c") == pytest.approx(5 / 6)
    assert robust_accuracy(hand) == pytest.approx(2 / 6)  # rows 0, 5
    eps = [0.0, 0.1, 0.3, 1.0]
    # d > 0: five (not row 4); d > 0.1: 0.5, 0.2, inf; d > 0.3: 0.5, inf; d > 1: inf
    np.testing.assert_allclose(accuracy_curve(hand, eps), [5 / 6, 3 / 6, 2 / 6, 1 / 6])
    np.testing.assert_allclose(accuracy_curve(hand["min_distance"].to_numpy(), eps), [5 / 6, 3 / 6, 2 / 6, 1 / 6])
    # trapezoids: 0.1 * (5/6 + 3/6) / 2 + 0.2 * (3/6 + 2/6) / 2 + 0.7 * (2/6 + 1/6) / 2 = 3.9 / 12, over eps_max 1
    assert distance_nauc(hand, eps) == pytest.approx(3.9 / 12)
    # sorted 0, 0.05, 0.1, 0.2, 0.5, inf -> (0.1 + 0.2) / 2; without the misclassified one: 0.05 ... inf -> 0.2
    assert median_adversarial_distance(hand) == pytest.approx(0.15)
    assert median_adversarial_distance(hand, include_misclassified=False) == pytest.approx(0.2)
    assert median_adversarial_distance([0.1, math.inf, math.inf]) == math.inf  # most never broken
    # successes on correctly classified samples: a -> rows 1, 3 (3, 5 calls), b -> rows 2, 3 (7, 9 calls)
    assert median_time_to_success(hand, "a") == pytest.approx(4.0)
    assert median_time_to_success(hand, "b") == pytest.approx(8.0)
    assert median_time_to_success(hand, "a", include_misclassified=True) == pytest.approx(3.0)  # 0, 3, 5
    assert math.isnan(median_time_to_success(hand, "c"))
    assert mean_gradient_norm(hand) == pytest.approx(3.5) and max_gradient_norm(hand) == 6.0
    assert mean_gradient_norm(hand, "model") == pytest.approx(2.0 / 6) and max_gradient_norm(hand, "model") == 0.9


def test_summary_rows_are_valid_result_rows(hand, tmp_path):
    rows = summary_rows(hand, row="mlp", eps_list=[0.0, 0.1, 0.3, 1.0], extra={"dataset": "digits"})
    cells = {r["column"]: r for r in rows}
    assert cells["clean accuracy"]["value"] == pytest.approx(5 / 6)
    assert cells["robust accuracy (worst case)"]["value"] == pytest.approx(2 / 6)
    assert cells["robust accuracy (a)"]["value"] == pytest.approx(0.5)
    assert cells["median model calls to success (b)"]["value"] == pytest.approx(8.0)
    assert cells["median adversarial distance"]["value"] == pytest.approx(0.15)
    assert cells["accuracy at eps=0.3"]["value"] == pytest.approx(2 / 6)
    assert cells["NAUC"]["value"] == pytest.approx(3.9 / 12)
    assert cells["max ||grad f||_2,inf"]["value"] == pytest.approx(0.9)
    assert cells["mean ||grad l||_2"]["value"] == pytest.approx(3.5)
    c = cells["median model calls to success (c)"]
    assert c["status"] == "not run" and c["value"] is None and c["reason"]
    df = provenance.write_result(rows, tmp_path / "t.csv", {"paper": "test"})
    assert len(df) == len(rows) and set(df["dataset"]) == {"digits"}


# -- gradient masking ----------------------------------------------------------------------------------------------

class _Detached(nn.Module):
    """Same function as the model, zero input gradient: masks gradients everywhere."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.detach()) + 0 * x.flatten(1).sum(1, keepdim=True)


class _Quantised(nn.Module):
    """Input rounded to 5 levels: piecewise constant, zero gradient almost everywhere (shattered gradients)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


MASKING = {"steps": (5, 20), "square_queries": 200}


def test_masking_checks_pass_on_an_ordinary_model(mlp, digits):
    checks = gradient_masking_checks(mlp, (digits[2], digits[3]), eps=EPS, norm="linf", **MASKING)
    assert [c.name for c in checks] == ["more_pgd_steps", "square_vs_pgd", "large_eps", "fgsm_vs_pgd"]
    for c in checks:
        assert c.passed, c.explanation
        assert c.explanation.startswith(f"{c.name} passed")
    v = {c.name: c.values for c in checks}
    assert 0.2 < v["square_vs_pgd"]["acc PGD"] < v["square_vs_pgd"]["clean accuracy"]  # not a trivial eps
    assert v["large_eps"]["large eps"] == 0.5
    rows = masking_rows(checks, row="mlp")
    df = provenance.result_frame(rows)
    assert (df[df["column"].str.endswith(": passed")]["value"] == 1.0).all()
    assert set(df["column"]) >= {"square_vs_pgd: acc Square", "large_eps: acc PGD at large eps"}


@pytest.mark.parametrize("wrap,eps", [(_Detached, EPS), (_Quantised, 0.1)])
def test_masking_checks_detect_masked_gradients(mlp, digits, wrap, eps):
    x, y = digits[2], digits[3]
    masked = wrap(mlp).eval()
    checks = {c.name: c for c in gradient_masking_checks(masked, (x, y), eps=eps, norm="linf", **MASKING)}
    with torch.no_grad():
        assert (masked(x).argmax(1) == y).float().mean() > 0.85  # still an accurate classifier
    sq = checks["square_vs_pgd"]
    assert not sq.passed
    assert sq.values["acc Square"] < sq.values["acc PGD"] - sq.values["tolerance"]
    assert sq.explanation.startswith("square_vs_pgd FAILED") and "Square" in sq.explanation
    big = checks["large_eps"]
    assert not big.passed and big.explanation.startswith("large_eps FAILED")
    rows = {r["column"]: r for r in masking_rows(list(checks.values()), row="masked")}
    assert rows["square_vs_pgd: passed"]["value"] == 0.0 and "FAILED" in rows["square_vs_pgd: passed"]["note"]
