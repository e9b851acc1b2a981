"""Seeds and confidence intervals (advrep.seeds): the interval arithmetic, pooling, the per-seed tables combined
into one, the audit's interval rule, the ``seeds`` config, and the workflow on a tiny stochastic target (voronoi
Figure 3 at toy settings): three seeds give three distinct runs and their interval; ``seeds: [0]`` gives exactly
what a direct single run with seed 0 gives."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from advrep import provenance, seeds
from advrep.audit import DEVIATES, MATCH, NOT_COMPARABLE, Bands, Results, audit_numbers, load
from advrep.config import seeds as config_seeds

# Student-t quantiles t(0.975, df) from a printed table (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2): the reference
# the interval code (scipy) is checked against.
T975 = {1: 12.706, 2: 4.303, 4: 2.776, 19: 2.093}


@pytest.mark.parametrize("n", sorted(k + 1 for k in T975))
def test_t_quantile_agrees_with_the_printed_table(n):
    assert seeds.t_quantile(n) == pytest.approx(T975[n - 1], abs=6e-4)


def test_summary_of_three_runs_by_hand():
    # runs 0.70, 0.76, 0.79: mean 0.75, deviations -0.05, 0.01, 0.04, sum of squares 0.0042, variance 0.0021
    s = seeds.summarise([0.70, 0.76, 0.79])
    assert s["n"] == 3 and s["value"] == pytest.approx(0.75)
    assert s["std"] == pytest.approx(math.sqrt(0.0042 / 2))
    half = 4.303 * math.sqrt(0.0021) / math.sqrt(3)  # t(0.975, 2) sd / sqrt(n)
    assert s["ci_low"] == pytest.approx(0.75 - half, abs=1e-4) and s["ci_high"] == pytest.approx(0.75 + half, abs=1e-4)


def test_one_run_has_no_interval_and_nonfinite_runs_stop():
    s = seeds.summarise([0.5])
    assert s["n"] == 1 and s["value"] == 0.5 and math.isnan(s["std"]) and math.isnan(s["ci_low"])
    with pytest.raises(ValueError, match="non-finite"):
        seeds.summarise([0.5, float("nan")])


def test_pooling_equals_the_summary_of_all_runs_together():
    rng = np.random.default_rng(0)
    parts = [rng.normal(0.8, 0.05, size=k) for k in (20, 20, 7, 1)]
    pooled = seeds.pool([(p.mean(), p.std(ddof=1) if len(p) > 1 else float("nan"), len(p)) for p in parts])
    direct = seeds.summarise(np.concatenate(parts))
    assert pooled["n"] == direct["n"] == 48
    for key in ("value", "std", "ci_low", "ci_high"):
        assert pooled[key] == pytest.approx(direct[key], rel=1e-12)


def _cells(values: dict, comparable=True, status="ok"):
    out = []
    for (row, column), v in values.items():
        ok = status == "ok" and v is not None
        out.append(dict(row=row, column=column, value=v if ok else None, unit="percent", status="ok" if ok else
                        "not run", comparable=comparable, reason="" if ok else "no model", dataset="d:abc"))
    return out


def _seed_files(tmp_path, per_seed: dict, settings="x", png=False):
    files = {}
    for seed, cells in per_seed.items():
        d = tmp_path / f"seed{seed}"
        d.mkdir(exist_ok=True)
        path = d / "table1.csv"
        provenance.write_result(cells, path, {"seed": seed, "settings_sha256": settings, "scale": "smoke",
                                              "datasets": []})
        if png:
            (d / "table1.png").write_bytes(b"\x89PNG seed %d" % seed)
        files[seed] = path
    return files


def test_combine_one_seed_is_that_seed_byte_for_byte(tmp_path):
    files = _seed_files(tmp_path, {0: _cells({("a", "acc"): 71.25, ("a", "rob"): None})}, png=True)
    df = seeds.combine(files, tmp_path / "table1.csv", tmp_path / "table1.png")
    assert (tmp_path / "table1.csv").read_bytes() == files[0].read_bytes()
    assert (tmp_path / "table1.png").read_bytes() == (tmp_path / "seed0" / "table1.png").read_bytes()
    assert not set(seeds.SEED_COLUMNS) & set(df.columns)
    prov = json.loads((tmp_path / "table1.provenance.json").read_text())
    assert prov["seed"] == 0 and prov["seeds"] == [0] and prov["seed_results"] == {"0": str(files[0])}


def test_combine_three_seeds(tmp_path):
    per_seed = {s: _cells({("a", "acc"): v, ("a", "rob"): r, ("b", "acc"): 50.0})
                for s, v, r in ((0, 70.0, 40.0), (1, 76.0, None), (2, 79.0, 44.0))}
    per_seed[2] = [c for c in per_seed[2] if c["row"] != "b"]  # seed 2 lacks a cell
    files = _seed_files(tmp_path, per_seed, png=True)
    df = seeds.combine(files, tmp_path / "table1.csv", tmp_path / "table1.png").set_index(["row", "column"])
    acc = df.loc[("a", "acc")]
    assert acc["status"] == "ok" and acc["n"] == 3 and bool(acc["comparable"])
    assert acc["value"] == pytest.approx(75.0) and acc["std"] == pytest.approx(math.sqrt(42 / 2))
    half = 4.303 * math.sqrt(21) / math.sqrt(3)
    assert acc["ci_low"] == pytest.approx(75 - half, abs=0.01) and acc["ci_high"] == pytest.approx(75 + half, abs=0.01)
    rob = df.loc[("a", "rob")]  # computed for seeds 0 and 2 only: not run, saying which seed lacked it
    assert rob["status"] == "not run" and pd.isna(rob["value"]) and not rob["comparable"]
    assert "seed(s) 1" in rob["reason"] and "no model" in rob["reason"]
    assert "seed(s) 2" in df.loc[("b", "acc"), "reason"]
    again, prov = provenance.read_result(tmp_path / "table1.csv")  # what the audit reads
    assert list(again.columns[-4:]) == seeds.SEED_COLUMNS
    assert prov["seed"] == [0, 1, 2] and prov["seeds"] == [0, 1, 2] and "seed 0" in prov["figure"]


def test_combine_pools_cells_that_carry_their_own_runs(tmp_path):
    rng = np.random.default_rng(1)
    runs = {s: rng.uniform(0.7, 0.9, size=20) for s in (0, 1)}
    per_seed = {s: [dict(row="Voronoi", column="NAUC", unit="fraction", status="ok", comparable=True, reason="",
                         **seeds.summarise(r))] for s, r in runs.items()}
    df = seeds.combine(_seed_files(tmp_path, per_seed), tmp_path / "table1.csv")
    direct = seeds.summarise(np.concatenate(list(runs.values())))
    assert df.loc[0, "n"] == 40
    assert df.loc[0, "value"] == pytest.approx(direct["value"]) and df.loc[0, "ci_low"] == pytest.approx(
        direct["ci_low"])


def test_combine_refuses_seeds_made_with_different_settings(tmp_path):
    files = _seed_files(tmp_path, {0: _cells({("a", "acc"): 1.0})}, settings="x")
    files.update(_seed_files(tmp_path, {1: _cells({("a", "acc"): 2.0})}, settings="y"))
    with pytest.raises(ValueError, match="different settings"):
        seeds.combine(files, tmp_path / "out.csv")


def test_config_seeds():
    assert config_seeds(["3", 0, 7]) == [3, 0, 7]
    for bad, msg in (([0, "0"], "twice"), ([], "empty"), (["a"], "not an integer"), ([-1], ">= 0"),
                     ([1.5], ">= 0")):
        with pytest.raises(ValueError, match=msg):
            config_seeds(bad)


# ------------------------------------------------------------------------------------------------------------- audit
def _registry(tmp_path):
    cols = ["paper", "target", "row", "column", "value", "unit", "decimals", "kind", "tolerance", "source", "note"]
    rows = [["voronoi", "figure3", "m", c, v, "fraction", 2, "stochastic", "", "f.txt:L1", ""]
            for c, v in (("inside", "0.80"), ("widened", "0.85"), ("outside", "0.86"), ("few", "0.80"))]
    pd.DataFrame(rows, columns=cols).to_csv(tmp_path / "voronoi.csv", index=False)
    (tmp_path / "voronoi.layout.yaml").write_text(yaml.safe_dump(
        {"figure3": {"rows": ["m"], "columns": ["inside", "widened", "outside", "few"]}}))
    (tmp_path / "voronoi.claims.yaml").write_text("[]\n")
    return load("voronoi", tmp_path)


def test_audit_uses_the_interval_from_three_runs(tmp_path):
    reg = _registry(tmp_path)
    # interval [0.78, 0.84] from 5 runs: 0.80 inside; 0.85 within the interval widened by 0.01 (last digit); 0.86
    # outside although within today's band (0.02 around 0.843); 2 runs: the band as before
    cell = dict(row="m", unit="fraction", status="ok", comparable=True, reason="")
    cells = [dict(column="inside", value=0.81, std=0.02, n=5, ci_low=0.78, ci_high=0.84, **cell),
             dict(column="widened", value=0.81, std=0.02, n=5, ci_low=0.78, ci_high=0.84, **cell),
             dict(column="outside", value=0.843, std=0.001, n=5, ci_low=0.842, ci_high=0.844, **cell),
             dict(column="few", value=0.81, std=0.05, n=2, ci_low=0.36, ci_high=1.26, **cell)]
    provenance.write_result(cells, tmp_path / "figure3.csv", {"scale": "smoke", "datasets": [], "seed": [0, 1]})
    a = audit_numbers(reg, Results.from_files([tmp_path / "figure3.csv"]), "smoke",
                      Bands(fraction=0.02)).set_index("column")
    assert a.loc["inside", "verdict"] == MATCH and a.loc["widened", "verdict"] == MATCH
    assert a.loc["outside", "verdict"] == DEVIATES
    assert a.loc["few", "verdict"] == MATCH and a.loc["few", "tolerance"] == pytest.approx(0.02)
    assert "band" in a.loc["few", "tolerance_rule"] and "n=2" in a.loc["few", "tolerance_rule"]
    assert a.loc["inside", "n"] == 5 and a.loc["inside", "ci_low"] == 0.78 and a.loc["inside", "ci_high"] == 0.84
    assert a.loc["widened", "tolerance"] == pytest.approx(0.03 + 0.01)
    assert "95% interval of 5 runs" in a.loc["widened", "tolerance_rule"]
    # not comparable stays not comparable, whatever the interval
    provenance.write_result([dict(cells[0], comparable=False, reason="stand-in data")], tmp_path / "figure3.csv",
                            {"scale": "smoke", "datasets": []})
    b = audit_numbers(reg, Results.from_files([tmp_path / "figure3.csv"]), "smoke").set_index("column")
    assert b.loc["inside", "verdict"] == NOT_COMPARABLE and b.loc["inside", "n"] == 5


# ------------------------------------------------------------------------------------------------------- workflow
TOY = {"voronoi": {"figure3": {"codims": [3], "retrainings": 2, "epochs": 1, "batch_size": 25, "attack_steps": 2,
                               "eval_eps_points": 3, "eval_steps": 2, "eval_step_sizes": [0.25]}}}
F3 = "results/smoke/voronoi/figure3.csv"


def _no_timing(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["column"] != "seconds"].reset_index(drop=True)


def test_three_seeds_three_runs_and_one_seed_as_before(tmp_path):
    from test_workflow import _scratch_copy, smk

    from advrep.voronoi import planes

    work = _scratch_copy(tmp_path)
    (work / "toy.yaml").write_text(yaml.safe_dump(TOY))
    r = smk("--cores", "2", F3, "--configfile", "toy.yaml", "--config", "seeds=[0,1,2]", cwd=work, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = work / "results" / "smoke" / "voronoi"
    per_seed = {s: provenance.read_result(res / f"seed{s}" / "figure3.csv")[0] for s in (0, 1, 2)}
    naucs = {s: df.set_index(["row", "column"]).loc[("Voronoi (codim 3)", "NAUC")] for s, df in per_seed.items()}
    assert len({float(c["value"]) for c in naucs.values()}) == 3, "three seeds, three distinct runs"
    for s in (0, 1, 2):  # each seed's curves come from its own retrainings
        with np.load(res / f"seed{s}" / "planes" / "codim3.npz") as z:
            assert z["Madry"].shape == (2, 3)
    both = pd.read_csv(work / F3).set_index(["row", "column"]).loc[("Voronoi (codim 3)", "NAUC")]
    # pooled over the 3 x 2 retrainings: with equal n per seed the mean of the seed means; the std from the
    # within- and between-seed sums of squares, by hand
    means = np.array([float(c["value"]) for c in naucs.values()])
    sds = np.array([float(c["std"]) for c in naucs.values()])
    assert both["n"] == 6 and both["value"] == pytest.approx(means.mean())
    ss = ((2 - 1) * sds ** 2).sum() + (2 * (means - means.mean()) ** 2).sum()
    sd = math.sqrt(ss / 5)
    assert both["std"] == pytest.approx(sd)
    assert both["ci_high"] - both["value"] == pytest.approx(2.571 * sd / math.sqrt(6), rel=1e-3)  # t(0.975, 5)
    # the audit reads the runs and the interval from the file
    assert Results.from_files([work / F3]).spread("figure3", "Voronoi (codim 3)", "NAUC") == (
        6, pytest.approx(both["ci_low"]), pytest.approx(both["ci_high"]))

    # seeds: [0] -> the target is seed 0's table, byte for byte, and seed 0's run is what the library gives for a
    # single run with seed 0 (the workflow before seeds): every cell but the wall-clock seconds, to the bit
    r = smk("--cores", "2", F3, "--configfile", "toy.yaml", "--config", "seeds=[0]", cwd=work, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert (work / F3).read_bytes() == (res / "seed0" / "figure3.csv").read_bytes()
    settings = yaml.safe_load((work / "config" / "config.yaml").read_text())["voronoi"]["figure3"]
    settings = {k: v for k, v in {**settings, **TOY["voronoi"]["figure3"]}.items() if k != "by_scale"}
    direct = tmp_path / "direct"
    planes.run_codim(work / "results" / "data" / "planes_codim3.npz", direct / "codim3.npz", settings=settings,
                     seed=0, workdir=direct / "ck")
    planes.run(direct / "figure3.csv", direct / "figure3.png", curve_files={3: direct / "codim3.npz"},
               settings=settings, scale="smoke", seed=0)
    pd.testing.assert_frame_equal(_no_timing(pd.read_csv(work / F3)), _no_timing(pd.read_csv(direct / "figure3.csv")),
                                  check_exact=True)

