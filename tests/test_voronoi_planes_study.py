"""Issue 15 part 2: the PLANES settings sweep (advrep.voronoi.planes_study, benchmarks/voronoi_planes_study.py).

The variants must really change training, the statistics must be right, and the command must write its outputs.
(The PLANES data, the embedding and planes.train_one itself are tested in test_voronoi_planes.py.)"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from advrep.data.synthetic import make_planes
from advrep.train.objectives import PGDAT
from advrep.voronoi import planes
from advrep.voronoi import planes_study as ps

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data10():
    return make_planes(10)


def _cfg(**kw):
    return dataclasses.replace(ps.configs()[0], **kw)


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_design_is_one_factor_at_a_time_around_todays_config():
    cfgs = ps.configs()
    assert len(cfgs) >= 30 and len({c.name for c in cfgs}) == len(cfgs)
    base = cfgs[0]
    assert base.name == "baseline"
    # today's training settings are config/config.yaml voronoi.figure3's
    import yaml

    today = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["voronoi"]["figure3"]
    for key in ("epochs", "batch_size", "attack_steps", "attack_alpha"):
        assert getattr(base, key) == today[key], key
    for key, value in ps.FIXED.items():
        assert today[key] == value, key
    for key in ("eval_eps_max", "eval_eps_points", "eval_steps", "eval_line_points"):
        assert ps.EVAL[key] == today[key], key
    assert list(ps.EVAL["eval_step_sizes"]) == today["eval_step_sizes"]
    # every one-factor config differs from the baseline only in the fields of its factor
    fields = {"epochs": {"epochs"}, "batch_size": {"batch_size"}, "attack_steps": {"attack_steps"},
              "attack_alpha": {"attack_alpha"}, "init": {"init"},
              "madry_attack": {"madry_steps", "madry_alpha", "madry_random_start"},
              "optimizer": {"schedule", "reset_adam"}, "early_stop": {"early_stop", "epochs"}}
    factors = set()
    for c in cfgs[1:]:
        changed = {f.name for f in dataclasses.fields(c) if f.name not in ("name", "factor", "level")
                   and getattr(c, f.name) != getattr(base, f.name)}
        assert changed, c.name
        if c.factor != "combined":
            assert changed <= fields[c.factor], (c.name, changed)
            factors.add(c.factor)
        else:
            assert len(changed) >= 2, c.name
    assert factors == set(fields)  # every open setting of the issue is varied
    with pytest.raises(ValueError, match="unknown study config"):
        ps.by_name(["baseline", "nope"])
    with pytest.raises(ValueError, match="init must be one of"):
        _cfg(init="orthogonal")


def test_study_training_is_planes_train_one_at_todays_settings(data10, tmp_path):
    x, y, _, _ = data10
    cfg = _cfg(epochs=2)
    s = dataclasses.replace(cfg.settings, batch_size=cfg.batch_size)
    for method in ps.METHODS:
        ours, log = ps.train(method, cfg, x, y, seed=5)
        ref = planes.train_one(method, x, y, s, 5, tmp_path / method)
        assert _same(ours, ref), method
        assert log.steps == 2 * math.ceil(len(x) / 50) and log.epochs_run == 2


def test_full_batch_is_one_step_per_epoch(data10):
    x, y, _, _ = data10
    full, log = ps.train("Madry", _cfg(batch_size=None, epochs=3), x, y, seed=0)
    assert log.steps == 3 and len(log.lrs) == 3
    mini, log_mini = ps.train("Madry", _cfg(epochs=3), x, y, seed=0)
    assert log_mini.steps == 3 * math.ceil(len(x) / 50)
    assert not _same(full, mini)


def test_lr_schedules_reach_their_final_lr(data10):
    x, y, _, _ = data10
    _, log = ps.train("Madry", _cfg(batch_size=None, epochs=20, schedule="cosine"), x, y, seed=0)
    lrs = np.array(log.lrs)
    assert lrs[0] == pytest.approx(0.1) and np.all(np.diff(lrs) < 0)
    # cosine per iteration: the last of 20 steps is at t = 19/20 -> 0.1 * (1 + cos(0.95 pi)) / 2
    assert lrs[-1] == pytest.approx(0.1 * (1 + math.cos(0.95 * math.pi)) / 2) and lrs[-1] < 1e-3
    _, log = ps.train("Madry", _cfg(batch_size=None, epochs=4, schedule="step"), x, y, seed=0)
    assert log.lrs == pytest.approx([0.1, 0.1, 0.01, 0.01])
    _, log = ps.train("Madry", _cfg(batch_size=None, epochs=3), x, y, seed=0)
    assert log.lrs == pytest.approx([0.1] * 3)


def test_adam_reset_changes_training_only_after_the_first_epoch(data10):
    x, y, _, _ = data10
    a, _ = ps.train("Madry", _cfg(epochs=1, reset_adam=True), x, y, seed=1)
    b, _ = ps.train("Madry", _cfg(epochs=1), x, y, seed=1)
    assert _same(a, b)  # the reset at the start of epoch 0 finds no state
    a, _ = ps.train("Madry", _cfg(epochs=2, reset_adam=True), x, y, seed=1)
    b, _ = ps.train("Madry", _cfg(epochs=2), x, y, seed=1)
    assert not _same(a, b)


def test_early_stopping_stops_and_keeps_the_best_epoch(data10):
    x, y, _, _ = data10
    # min_delta larger than any possible improvement: the first epoch stays best, training stops after patience
    for how in ("train_robust", "heldout"):
        model, log = ps.train("Madry", _cfg(epochs=10, early_stop=how, patience=2, min_delta=10.0,
                                            batch_size=None), x, y, seed=2)
        assert log.epochs_run == 3 and log.best_epoch == 0, how
        first, _ = ps.train("Madry", _cfg(epochs=1, batch_size=None), x, y, seed=2)
        assert _same(model, first), how
        if how == "heldout":
            assert len(log.scores) == 3 and all(0 <= s <= 1 for s in log.scores)
    # no improvement threshold: training runs to the end when the criterion keeps improving or waits < patience
    _, log = ps.train("Madry", _cfg(epochs=3, early_stop="train_robust", patience=5, batch_size=None), x, y, seed=2)
    assert log.epochs_run == 3


def test_heldout_points_lie_on_the_planes():
    x, y = ps.heldout_set(10, seed=0)
    assert x.shape == (2 * ps.HELDOUT_PER_PLANE, 12) and np.bincount(y).tolist() == [ps.HELDOUT_PER_PLANE] * 2
    assert np.all(x[:, 2:-1] == 0) and np.all(x[:, -1] == 2.0 * y)
    assert np.all(np.abs(x[:, :2]) <= 10)
    xtr, *_ = make_planes(10)
    assert np.min(np.linalg.norm(x[:, None, :] - xtr[None], axis=2)) > 0  # fresh points, not training vertices


def test_initialisation_and_madry_attack_variants(data10):
    x, y, _, _ = data10
    m_torch = planes.make_model(12, 100, 3)
    m_xavier = planes.make_model(12, 100, 3)
    ps.initialise(m_xavier, "xavier", 3)
    m_he = planes.make_model(12, 100, 3)
    ps.initialise(m_he, "he", 3)
    fc1 = [next(mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)) for m in (m_torch, m_xavier, m_he)]
    assert fc1[0].weight.shape == (100, 12)
    assert fc1[0].bias.abs().sum() > 0 and fc1[1].bias.abs().sum() == 0 and fc1[2].bias.abs().sum() == 0
    bound = math.sqrt(6 / (12 + 100))  # Glorot uniform bound of fc1
    assert fc1[1].weight.abs().max() <= bound and fc1[1].weight.abs().max() > 0.9 * bound
    assert fc1[2].weight.std().item() == pytest.approx(math.sqrt(2 / 12), rel=0.1)  # He: sd sqrt(2 / fan_in)
    u = planes.embed(x)
    obj = ps.objective_for("Madry", _cfg(madry_steps=1, madry_alpha=1.0, madry_random_start=False), u, y)
    assert isinstance(obj, PGDAT) and obj.steps == 1 and obj.alpha == pytest.approx(1 / planes.SPAN)
    assert obj.eps == pytest.approx(1 / planes.SPAN) and not obj.random_start
    vor = ps.objective_for("Voronoi", _cfg(madry_steps=1, attack_steps=3, attack_alpha=0.5), u, y)
    assert vor.steps == 3 and vor.alpha == pytest.approx(0.5 / planes.SPAN)  # Madry's attack leaves Voronoi's alone


def test_t_interval_by_hand():
    got = ps.t_interval([0.1, 0.2, 0.3, 0.4])
    # mean 0.25; sd = sqrt(0.05 / 3) = 0.1290994; t_{0.975, 3} = 3.182446 (t table); half = 3.182446 * sd / 2
    assert got["mean"] == pytest.approx(0.25) and got["n"] == 4
    assert got["sd"] == pytest.approx(0.1290994, abs=1e-7)
    assert got["ci_low"] == pytest.approx(0.25 - 0.2054270, abs=1e-6)
    assert got["ci_high"] == pytest.approx(0.25 + 0.2054270, abs=1e-6)
    # 20 values: t_{0.975, 19} = 2.093024
    v = np.arange(20) / 100.0
    got = ps.t_interval(v)
    half = 2.093024 * np.std(v, ddof=1) / math.sqrt(20)
    assert got["ci_high"] - got["mean"] == pytest.approx(half, rel=1e-6)
    assert ps.verdict(0.01, 0.2) == "holds" and ps.verdict(-0.2, -0.01) == "reversed"
    assert ps.verdict(-0.01, 0.2) == "unresolved"
    with pytest.raises(ValueError, match="finite"):
        ps.t_interval([0.1, float("nan")])


def test_summary_uses_the_registry_and_pairs_retrainings():
    paper = ps.published_naucs()
    assert set(paper) == {(m, c) for m in ps.METHODS for c in ps.CODIMS}
    cfg = ps.configs()[0]
    # synthetic NAUCs: exactly the paper's, plus a retraining-specific offset shared by every cell
    results = [dict(method=m, codim=c, r=r, nauc=paper[(m, c)] + 0.001 * (r - 1), epochs_run=20, train_s=1.0,
                    eval_s=1.0) for m in ps.METHODS for c in ps.CODIMS for r in range(3)]
    rows = {r["quantity"]: r for r in ps.summarise(cfg, results, paper)}
    v10 = rows[ps.CLAIMS[0]]
    assert v10["mean"] == pytest.approx(paper[("Voronoi", 10)] - paper[("Madry", 10)])
    assert v10["sd"] == pytest.approx(0.0, abs=1e-12)  # paired: the shared offset cancels
    verdict = [r for r in rows.values() if r["kind"] == "verdict"][0]
    assert verdict["verdict"] == "reproduces"
    assert [r for r in rows.values() if r["kind"] == "deviation"][0]["mean"] == pytest.approx(0.0, abs=1e-12)
    shifted = [dict(x, nauc=x["nauc"] - 0.05) if x["method"] == "Voronoi" else x for x in results]
    rows = ps.summarise(cfg, shifted, paper)
    verdict = [r for r in rows if r["kind"] == "verdict"][0]
    assert verdict["verdict"] == "does not reproduce"
    assert [r for r in rows if r["kind"] == "deviation"][0]["mean"] == pytest.approx(0.05)


def test_a_mix_trains_each_method_as_its_source_config(data10):
    x, y, _, _ = data10
    cfgs = {c.name: dataclasses.replace(c, epochs=1) for c in ps.by_name(["steps3", "alpha0.05", "cosine"])}
    m = ps.mix(cfgs["steps3"], cfgs["alpha0.05"])
    assert ps.mix(cfgs["cosine"], cfgs["alpha0.05"]) is None  # the schedule is shared by both methods
    assert ps.madry_attack(m) == ps.madry_attack(cfgs["alpha0.05"]) == (10, 0.05, True)
    assert _same(ps.train("Voronoi", m, x, y, seed=4)[0], ps.train("Voronoi", cfgs["steps3"], x, y, seed=4)[0])
    assert _same(ps.train("Madry", m, x, y, seed=4)[0], ps.train("Madry", cfgs["alpha0.05"], x, y, seed=4)[0])
    res = {name: [dict(method=meth, codim=c, r=r, nauc=0.5 + 0.1 * i + 0.01 * r, epochs_run=1, train_s=0.0,
                       eval_s=0.0) for meth in ps.METHODS for c in ps.CODIMS for r in range(2)]
           for i, name in enumerate(cfgs)}
    rows = ps.mixed_rows(list(cfgs.values()), res)
    assert {r["config"] for r in rows} == {"V:steps3+M:alpha0.05", "V:alpha0.05+M:steps3"}
    v = [r for r in rows if r["config"] == "V:steps3+M:alpha0.05" and r["quantity"] == ps.CLAIMS[0]][0]
    assert v["mean"] == pytest.approx(0.5 - 0.6) and v["sd"] == pytest.approx(0.0, abs=1e-12)


def test_command_writes_csv_and_plot(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("voronoi_planes_study", ROOT / "benchmarks" /
                                                  "voronoi_planes_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "study"
    assert mod.main(["--out", str(out), "--configs", "baseline", "fullbatch", "--retrainings", "2",
                     "--epochs", "1"]) == 0
    df = pd.read_csv(out.with_suffix(".csv"))
    assert list(df.columns[:len(ps.COLUMNS)]) == list(ps.COLUMNS)
    assert "cfg_batch_size" in df.columns and "cfg_schedule" in df.columns
    assert df.config.tolist() == ["baseline"] * 9 + ["fullbatch"] * 9
    naucs = df[df.kind == "nauc"]
    assert len(naucs) == 8 and (naucs.n == 2).all() and naucs["mean"].between(0, 1).all()
    assert (naucs.ci_low <= naucs["mean"]).all() and (naucs["mean"] <= naucs.ci_high).all()
    assert set(df[df.kind == "difference"].quantity) == set(ps.CLAIMS)
    assert set(df[df.kind == "difference"].verdict) <= {"holds", "reversed", "unresolved"}
    assert df[df.config == "fullbatch"].cfg_batch_size.iloc[0] == "full"
    png = out.with_suffix(".png")
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "baseline" in printed and "fullbatch" in printed and "wall time" in printed
