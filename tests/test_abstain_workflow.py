"""abstain workflow targets (advrep.abstain.workflow): the saved exact pass equals a direct computation, every
target is in the registry's layout, the exact trade-off curve contains every point of a dense tau sweep, and the
audit is told "not comparable" unless data and settings are the paper's."""

import json

import numpy as np
import pandas as pd
import pytest

from advrep.abstain import linear_adversary_wins, random_subspaces, tau_star
from advrep.abstain.defence import preprocess
from advrep.abstain.features import PAPER_SETTINGS, TEMPERATURE, read_features, write_features
from advrep.abstain.linear import fit_linear
from advrep.abstain import workflow as wf
from advrep.audit import registry

REG = registry.load("abstain")
LAYOUT = REG.layout


def layout_cells(target):
    """Every (row, column) the paper prints for ``target``: rows x columns minus the layout's blanks."""
    lay = LAYOUT[target]
    blanks = {tuple(b) for b in lay.get("blanks", [])}
    return {(r, c) for r in lay["rows"] for c in lay["columns"]} - blanks


def clusters(seed=0, n=60, m=30, d=6, k=3, spread=1.6):
    """k Gaussian clusters in R^d: close enough that some points are ambiguous, so every rate is non-trivial."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2.0, (k, d))
    y = np.repeat(np.arange(k), n // k)
    ty = np.repeat(np.arange(k), m // k)
    return (centres[y] + spread * rng.normal(size=(len(y), d)), y, centres[ty] + spread * rng.normal(size=(len(ty), d)),
            ty)


def feature_file(path, *, method="simclr", dataset=None, settings=None, seed=0, **kw):
    X, y, T, ty = clusters(seed, **kw)
    dataset = dataset or {"name": "digits32", "content_sha256": "ab" * 32, "standin_for": "cifar-like 32x32x3"}
    s = dict(settings or {**PAPER_SETTINGS, "width": "tiny", "epochs": 3})
    s["temperature"] = TEMPERATURE[method]
    write_features(path, X, y, T, ty, {"method": method, "settings": s, "dataset": dataset, "stats": {}})
    return read_features(path)[:4]  # as stored (float32), what the pass reads


def test_attack_pass_equals_direct_computation(tmp_path):
    X, y, T, ty = feature_file(tmp_path / "f.npz")
    sigmas = [0.0, 1.0, 2.5]
    wf.attack_pass(tmp_path / "f.npz", tmp_path / "p.npz", sigmas=sigmas, n3=1, seed=3)
    p = wf.load_pass(tmp_path / "p.npz")
    B = random_subspaces(len(T), T.shape[1], 1, 3)
    for s in sigmas:
        keep = preprocess(X, y, s)
        direct = tau_star(X[keep], y[keep], T, ty, subspaces=B)
        np.testing.assert_allclose(p.at(s).tau_star, direct.tau_star, rtol=1e-12)
        np.testing.assert_allclose(p.at(s).d_nn, direct.d_nn, rtol=1e-12)
        assert p.at(s).n_train == keep.sum()
    W, b = fit_linear(X, y, n_classes=3)
    assert (p.linear_wins == linear_adversary_wins(W, b, T, ty, B)).all()
    with pytest.raises(KeyError, match="sigma=0.5 was not evaluated"):
        p.at(0.5)


def test_attack_pass_subset_is_seeded_and_flagged(tmp_path):
    feature_file(tmp_path / "f.npz")
    wf.attack_pass(tmp_path / "f.npz", tmp_path / "a.npz", sigmas=[0.0], n3=2, seed=1, max_test=10)
    wf.attack_pass(tmp_path / "f.npz", tmp_path / "b.npz", sigmas=[0.0], n3=2, seed=1, max_test=10)
    a, b = wf.load_pass(tmp_path / "a.npz"), wf.load_pass(tmp_path / "b.npz")
    assert len(a.test_labels) == 10 and a.meta["n_test_all"] == 30
    np.testing.assert_array_equal(a.at(0).tau_star, b.at(0).tau_star)
    dev = " ".join(wf.deviations(a))
    assert "10 of 30 test points" in dev and "n3=2" in dev and "stand-in" in dev and "epochs=3" in dev


def test_deviations_empty_only_for_the_papers_experiment(tmp_path):
    cifar = {"name": "cifar10", "content_sha256": "cd" * 32, "standin_for": None}
    feature_file(tmp_path / "f.npz", method="supcon", dataset=cifar, settings=PAPER_SETTINGS)
    wf.attack_pass(tmp_path / "f.npz", tmp_path / "p.npz", sigmas=[0.0], n3=1, seed=0)
    assert wf.deviations(wf.load_pass(tmp_path / "p.npz")) == []
    # one changed recipe entry is enough to lose comparability
    feature_file(tmp_path / "g.npz", method="supcon", dataset=cifar, settings={**PAPER_SETTINGS, "batch_size": 512})
    wf.attack_pass(tmp_path / "g.npz", tmp_path / "q.npz", sigmas=[0.0], n3=1, seed=0)
    assert wf.deviations(wf.load_pass(tmp_path / "q.npz")) == ["encoder batch_size=512 (paper 1024)"]


@pytest.fixture
def passes(tmp_path):
    files = {}
    taus = [3.0, 2.0]
    for i, method in enumerate(("simclr", "supcon")):
        feature_file(tmp_path / f"{method}.npz", method=method, seed=i)
        files[method] = tmp_path / f"{method}_p.npz"
        wf.attack_pass(tmp_path / f"{method}.npz", files[method], sigmas=wf.table1_sigmas(taus) + [1.0], n3=1,
                       seed=0)
    return files


def test_table1_has_the_papers_layout_and_its_values(tmp_path, passes):
    wf.table1(tmp_path / "table1.csv", pass_files=passes, settings={"taus": [3.0, 2.0]}, scale="smoke", seed=0)
    df = pd.read_csv(tmp_path / "table1.csv")
    paper = df[df["column"].isin(["E_nat", "E_adv", "D_nat"])]
    assert set(zip(paper["row"], paper["column"])) == layout_cells("table1")
    pub = REG.numbers[REG.numbers["target"] == "table1"]
    assert set(zip(pub["row"], pub["column"])) == layout_cells("table1")  # the audit finds every number
    cells = paper.set_index(["row", "column"])["value"]
    p = wf.load_pass(passes["supcon"])
    r = p.at(0.9 * 2.0).rates(2.0)
    assert cells[("Supervised / Ours (tau=2.0, sigma=0.9tau)", "E_adv")] == pytest.approx(100 * r["E_adv"])
    assert cells[("Supervised / Ours (tau=2.0, sigma=0.9tau)", "D_nat")] == pytest.approx(100 * r["D_nat"])
    assert cells[("Self-supervised / Linear Protocol (sigma=tau)", "E_adv")] == pytest.approx(
        100 * wf.load_pass(passes["simclr"]).linear["E_adv"])
    # stand-in data: never comparable, and the reason says why
    assert not paper["comparable"].any()
    assert paper["reason"].str.contains("stand-in").all()
    prov = json.loads((tmp_path / "table1.provenance.json").read_text())
    assert set(prov["attack_passes"]) == {"simclr", "supcon"} and prov["scale"] == "smoke"


def test_exact_curve_contains_every_point_of_a_dense_sweep(passes):
    res = wf.load_pass(passes["simclr"]).at(0.0)
    c = wf.exact_curve(res)
    pts = set(zip(np.round(c["D_nat"], 12), np.round(c["A_adv"], 12), np.round(c["E_nat"], 12)))
    finite = np.r_[res.tau_star[np.isfinite(res.tau_star)], res.d_nn]
    for tau in np.r_[np.linspace(0, finite.max() * 1.2, 2000), finite, np.inf]:
        r = res.rates(float(tau))
        assert (round(r["D_nat"], 12), round(1 - r["E_adv"], 12), round(r["E_nat"], 12)) in pts
    for k in range(len(c["tau"])):  # and every curve point is attained at its tau
        r = res.rates(float(c["tau"][k]))
        assert r["D_nat"] == pytest.approx(c["D_nat"][k]) and 1 - r["E_adv"] == pytest.approx(c["A_adv"][k])
    assert c["A_adv"][0] == 1.0 and c["D_nat"][0] == 1.0  # tau = 0: abstain on everything, never beaten


def test_figure1_tuning_and_n3_targets(tmp_path, passes):
    wf.figure1(tmp_path / "f1.csv", tmp_path / "f1.png", pass_files=passes, settings={"sigmas": [0.0, 1.0],
                                                                                    "points": 50},
               scale="smoke", seed=0)
    f1 = pd.read_csv(tmp_path / "f1.csv")
    audited = f1[~f1["row"].str.contains(r"\[|curve")]
    assert set(zip(audited["row"], audited["column"])) == layout_cells("figure1")
    assert f1["row"].str.contains(r"\[Supervised, sigma=1\]").any()
    assert (tmp_path / "f1.png").stat().st_size > 5000

    tune = {"costs": [0.25, 1.0], "validation_fraction": 0.5, "sigma": 0.0,
            "online": {"c": 0.5, "batch_size": 5, "tau_max": None}}
    wf.tuning(tmp_path / "t.csv", tmp_path / "t.png", pass_files=passes, settings=tune, scale="smoke", seed=0)
    t = pd.read_csv(tmp_path / "t.csv").set_index(["row", "column"])["value"]
    # the held-out g of the validation-chosen tau can never beat the held-out optimum
    for method in ("Self-supervised", "Supervised"):
        for c in (0.25, 1.0):
            row = f"{method} / batch / c={c}"
            assert t[(row, "test_g")] >= t[(row, "oracle_test_g")] - 1e-12
    assert t[("Self-supervised / online", "batch_size")] == 5

    n3_files = {("simclr", 1): passes["simclr"]}
    wf.attack_pass(tmp_path / "simclr.npz", tmp_path / "n3_2.npz", sigmas=[0.0], n3=2, seed=0)
    n3_files[("simclr", 2)] = tmp_path / "n3_2.npz"
    wf.n3_sweep(tmp_path / "n.csv", tmp_path / "n.png", pass_files=n3_files,
                settings={"tau": 2.0, "sigma": 0.0, "n3": [1, 2]}, scale="smoke", seed=0)
    n = pd.read_csv(tmp_path / "n.csv").set_index(["row", "column"])["value"]
    assert n[("Self-supervised / n3=1", "E_adv")] == pytest.approx(
        wf.load_pass(passes["simclr"]).at(0.0).rates(2.0)["E_adv"])


def test_theory_target_measured_error_within_the_bound(tmp_path):
    s = {"n2": [2, 4, 8], "tau": 2.0, "k": 3, "m_per_class": 30, "test_per_class": 40, "sep": 10.0, "radius": 1.0}
    wf.theory(tmp_path / "th.csv", tmp_path / "th.png", settings=s, scale="smoke", seed=0)
    th = pd.read_csv(tmp_path / "th.csv").pivot(index="row", columns="column", values="value")
    assert (th["E_adv"] <= th["bound"] + 1e-12).all()           # Theorem 2.2 (n3 = 1)
    assert (th["E_adv"] <= th["line_within_tau_of_wrong"] + 1e-12).all()  # the event the bound counts
    assert (th["E_adv_nearest_neighbour"] > 0.9).all()           # Theorem 2.1: no abstention -> beaten
