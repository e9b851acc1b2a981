"""voronoi Figures 4-5 (MNIST, CIFAR-10): the Jacobian-regularisation penalty against autograd, the per-sample worst
case of the evaluation, the eps grid and labels, the paper settings in the config, and a tiny end-to-end run of every
job and both figures checked against the registry and the audit."""

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from advrep import data as advdata
from advrep.audit import compare, registry
from advrep.config import resolve
from advrep.data.standins import resolve_standins
from advrep.evaluate import nauc
from advrep.models import create_model
from advrep.train import EpochContext, make_objective
from advrep.voronoi import figures45 as F
from advrep.voronoi.jacobian import JacobianReg, frobenius_sq, jacobian_frobenius_sq

ROOT = Path(__file__).resolve().parents[1]


def config(scale):
    """The resolved config, with the smoke stand-ins resolved to the bundled digits (the files the tests prepare)."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["scale"] = scale
    return resolve_standins(resolve(cfg), lambda name: False)


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 3 * 3, 4))


def reference_frobenius_sq(model, x):
    """||d logits / d x||_F^2 per sample from torch.autograd.functional.jacobian, one sample at a time."""
    out = []
    for xi in x:
        j = torch.autograd.functional.jacobian(lambda z: model(z[None])[0], xi)
        out.append(j.pow(2).sum())
    return torch.stack(out)


def test_jacobian_penalty_matches_autograd_reference():
    model = tiny_net()
    x = torch.rand(5, 1, 5, 5)
    ref = reference_frobenius_sq(model, x)
    exact = jacobian_frobenius_sq(model, x, method="exact")
    assert torch.allclose(exact, ref, rtol=1e-5, atol=1e-7)
    # Hoffman et al.'s random projection is unbiased: C ||v^T J||^2 with v uniform on the sphere averages to ||J||_F^2
    g = torch.Generator().manual_seed(0)
    est = jacobian_frobenius_sq(model, x, method="random", n_proj=3000, generator=g)
    assert torch.allclose(est, ref, rtol=0.05)
    one = jacobian_frobenius_sq(model, x, method="random", n_proj=1, generator=g)
    assert not torch.allclose(one, ref, rtol=1e-3)  # a single draw is an estimate, not the value


def test_jacobian_objective_is_ce_plus_half_lambda_penalty_and_trains_through_it():
    model = tiny_net(1)
    x, y = torch.rand(6, 1, 5, 5), torch.randint(0, 4, (6,))
    obj = make_objective({"name": "jacobian_reg", "lam": "2.0", "method": "exact"})
    assert isinstance(obj, JacobianReg) and obj.lam == 2.0
    ctx = EpochContext(epochs=1, steps_per_epoch=1, device=torch.device("cpu"))
    loss, logits = obj(model, x, y, ctx)
    ce = nn.functional.cross_entropy(model(x), y)
    assert torch.allclose(loss, ce + 0.5 * 2.0 * reference_frobenius_sq(model, x).mean(), rtol=1e-5)
    loss.backward()  # double backpropagation: the penalty's gradient reaches the weights
    g_pen = model[0].weight.grad.clone()
    model.zero_grad()
    ce.backward()
    assert not torch.allclose(g_pen, model[0].weight.grad)
    # lam = 0 is plain cross-entropy
    loss0, _ = JacobianReg(lam=0.0)(model, x, y, ctx)
    assert torch.allclose(loss0, ce)
    with pytest.raises(ValueError):
        frobenius_sq(logits, x, method="bogus")


def test_eps_grid_holds_the_registry_cells_and_labels_are_exact():
    s = {"panel": "mnist", "eval": {"eps_max": 0.5, "eps_points": 3}}
    grid = F.eps_grid(s)
    assert grid == [0.0, 0.25, 0.3, 0.4, 0.5]
    assert [F.eps_label(e, "mnist") for e in grid] == ["0", "0.25", "0.3", "0.4", "0.5"]
    c = F.eps_grid({"panel": "cifar10", "eval": {"eps_max": "32/255", "eps_points": 17}})
    assert len(c) == 17 and c[0] == 0 and c[-1] == pytest.approx(32 / 255)
    assert [F.eps_label(e, "cifar10") for e in c[:3]] == ["0", "2/255", "4/255"]


def test_evaluation_is_the_per_sample_worst_case_over_fgsm_and_every_step_size():
    model = create_model("madry_mnist_cnn", in_shape=(1, 28, 28), num_classes=10, width="tiny", seed=0).eval()
    torch.manual_seed(0)
    x, y = torch.rand(40, 1, 28, 28), torch.randint(0, 10, (40,))
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample starts correct, so only the attacks decide
        y[:5] = (y[:5] + 1) % 10  # ... except five, which count as broken at every eps
    eps = [0.0, 0.02, 0.05, 0.1]
    ev = {"pgd_steps": 5, "step_sizes": [0.01, 0.05], "fgsm": True, "random_start": False}
    both = F.robust_curve(model, x, y, eps, ev)
    parts = [F.robust_curve(model, x, y, eps, dict(ev, fgsm=False, step_sizes=[a])) for a in ev["step_sizes"]]
    parts.append(F.robust_curve(model, x, y, eps, dict(ev, step_sizes=[])))  # FGSM alone
    assert both.shape == (4, 40)
    assert (both[0] == np.r_[np.zeros(5, bool), np.ones(35, bool)]).all()  # eps = 0: clean correctness
    assert not both[:, :5].any()
    # broken by ANY attack: exactly the AND of each attack's verdicts (deterministic attacks: no random start)
    assert (both == np.logical_and.reduce(parts[:2]) & parts[2]).all()
    assert both[-1].sum() < both[0].sum()  # the attacks do break something at eps > 0


def test_config_states_the_paper_settings_at_paper_scale_only():
    real = {"mnist": {"name": "mnist", "standin_for": None}, "cifar10": {"name": "cifar10", "standin_for": None}}
    for scale in ("paper", "reduced", "smoke"):
        v = config(scale)["voronoi"]
        for figure, jobs in F.FIGURE_JOBS.items():
            for panel, method in jobs:
                s = F.job_settings(v, panel, method)
                dev = F.deviations(s, real[panel] if scale != "smoke" else
                                   {"name": s["dataset"], "standin_for": "x"})
                if scale == "paper":
                    assert dev == [], (panel, method, dev)
                elif scale == "smoke":
                    assert dev and dev[0].startswith("stand-in data"), (panel, method)
                else:
                    assert dev, (scale, panel, method)  # fewer epochs / test images / a narrower WRN


def tiny_settings(v):
    """The smoke settings made smaller still: a test-sized run of every job."""
    v = copy.deepcopy(v)
    for panel in F.PANELS:
        p = v["figure4"][panel]
        p["max_train"] = 120
        p["eval"].update(max_test=30, eps_points=3, pgd_steps=3)
        for m in F.FIGURE4_METHODS:
            p[m]["training"].update(epochs=1, batch_size=40)
            p[m]["training"]["objective"].update({"steps": 2} if "steps" in p[m]["training"]["objective"] else {})
    e = v["figure5"][F.EPS04]
    e["snapshot_epoch"] = 1
    e["training"].update(epochs=2, batch_size=40)
    return v


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("f45")
    files = {}
    for name in ("digits28", "digits32"):
        files[name] = tmp / f"{name}.npz"
        advdata.prepare(name, files[name], root=None)
    v = tiny_settings(config("smoke")["voronoi"])
    jobs = {}
    for panel, method in dict.fromkeys(j for js in F.FIGURE_JOBS.values() for j in js):
        s = F.job_settings(v, panel, method)
        jobs[(panel, method)] = tmp / f"{panel}_{method}.npz"
        F.run_job(files[s["dataset"]], jobs[(panel, method)], settings=s, seed=0, workdir=tmp / "ck" / method,
                  threads=1)
    out = {}
    for figure in F.FIGURE_JOBS:
        F.run(tmp / f"{figure}.csv", tmp / f"{figure}.png", figure=figure,
              job_files={j: jobs[j] for j in F.FIGURE_JOBS[figure]}, scale="smoke", seed=0)
        out[figure] = tmp / f"{figure}.csv"
    return tmp, jobs, out, v


def test_figures_have_the_registry_cells_computed_from_the_curves(figures):
    tmp, jobs, out, _ = figures
    reg = registry.load("voronoi")
    for figure in ("figure4", "figure5"):
        df = pd.read_csv(out[figure])
        assert (tmp / f"{figure}.png").stat().st_size > 5000 and (tmp / f"{figure}.provenance.json").exists()
        cells = set(zip(df["row"], df["column"]))
        want = set(zip(*[reg.numbers[reg.numbers["target"] == figure][k] for k in ("row", "column")]))
        assert want <= cells, want - cells
        for c in reg.claims:
            for side in (c["left"], c["right"]):
                if isinstance(side, dict) and side["target"] == figure:
                    assert (side["row"], side["column"]) in cells, side
        # stand-in data: every cell is computed (but a relative gain over a zero NAUC), none comparable
        assert (df["status"] == "ok").sum() >= len(df) - 2 and not df["comparable"].any()
        curves = df[df["column"].str.startswith("accuracy at eps=") | (df["column"] == "NAUC")]
        assert curves["reason"].str.contains("stand-in data").all()
        # NAUC is the trapezoidal area under the accuracy cells of the same row
        for row, g in curves.groupby("row"):
            acc = g[g["column"] != "NAUC"]
            e = acc["column"].str.removeprefix("accuracy at eps=").map(lambda s: F.number(s) if "/" in s else float(s))
            order = np.argsort(e.to_numpy())
            got = nauc(e.to_numpy()[order], acc["value"].to_numpy()[order] / 100)
            assert got == pytest.approx(float(g[g["column"] == "NAUC"]["value"].iloc[0]), abs=1e-9), row
    f4 = pd.read_csv(out["figure4"]).set_index(["row", "column"])["value"]
    for panel in ("MNIST", "CIFAR-10"):
        nv, nm = f4[(f"Voronoi ({panel})", "NAUC")], f4[(f"Madry ({panel})", "NAUC")]
        if nm > 0:
            assert f4[(f"Voronoi ({panel})", "NAUC improvement over Madry")] == pytest.approx(100 * (nv - nm) / nm)
        else:  # a relative gain over 0 is undefined: reported as not run, with the reason
            assert np.isnan(f4[(f"Voronoi ({panel})", "NAUC improvement over Madry")])
    assert ("Jacobian reg. (MNIST)", "NAUC") in f4.index
    f5 = pd.read_csv(out["figure5"])
    assert set(f5["row"]) >= set(F.FIGURE5_ROWS.values())


def test_accuracy_cells_are_the_means_of_the_saved_per_sample_verdicts(figures):
    tmp, jobs, out, _ = figures
    job = F.load_job(jobs[("mnist", F.EPS04)])
    assert set(job["curves"]) == {F.FINAL, F.SNAPSHOT}
    f5 = pd.read_csv(out["figure5"]).set_index(["row", "column"])["value"]
    for curve, row in ((F.FINAL, "Madry (MNIST, eps=0.4, 150 epochs)"), (F.SNAPSHOT, "Madry (MNIST, eps=0.4, 100 "
                                                                                        "epochs)")):
        ok = job["curves"][curve]
        assert ok.shape == (len(job["eps"]), 30) and ok.dtype == bool
        for e, a in zip(job["eps"], ok.mean(1)):
            assert f5[(row, f"accuracy at eps={F.eps_label(e, 'mnist')}")] == pytest.approx(100 * a)
    assert len(job["history"]) == 2  # trained through the engine, one record per epoch


def test_audit_reads_every_figure45_number_as_not_comparable_with_the_reason(figures):
    tmp, jobs, out, _ = figures
    reg = registry.load("voronoi")
    results = compare.Results.from_files(list(out.values()))
    nums = compare.audit_numbers(reg, results, "smoke")
    f45 = nums[nums["target"].isin(["figure4", "figure5"])]
    assert len(f45) == reg.numbers["target"].isin(["figure4", "figure5"]).sum() == 9
    assert (f45["verdict"] == "not comparable").all()
    computed = f45[f45["reproduced"].notna()]
    assert len(computed) >= len(f45) - 1  # all but, possibly, a relative gain over a zero Madry NAUC
    assert computed["reason"].str.contains("stand-in data: digits").all()
    assert not f45["reason"].str.contains("not run yet").any()
    claims = compare.audit_claims(reg, results)
    for _, c in claims.iterrows():
        if "figure4" in c["left"] or "figure5" in c["left"]:
            assert c["verdict"] == "not comparable" and "not run yet" not in c["reason"], c["id"]


def test_a_finished_job_resumes_from_its_checkpoint_and_new_settings_train_afresh(figures, tmp_path):
    tmp, jobs, out, v = figures
    s = F.job_settings(v, "mnist", "jacobian")
    first = F.load_job(jobs[("mnist", "jacobian")])
    again = F.run_job(tmp / "digits28.npz", tmp_path / "again.npz", settings=s, seed=0, workdir=tmp / "ck" / "jacobian")
    assert again["seconds_train"] < 2.0  # nothing left to train
    for k, ok in again["curves"].items():
        assert (ok == first["curves"][k]).all()
    other = copy.deepcopy(s)
    other["training"]["optimizer"]["lr"] = 0.5
    assert F.checkpoint_key(other, 0) != F.checkpoint_key(s, 0) != F.checkpoint_key(s, 1)
