"""sonet: the job line-up against the registry, the paper's stated settings in the config, Table 4's grid statistics,
and a tiny end-to-end run of every job and every target checked against the registry and the audit."""

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from advrep import data as advdata
from advrep.audit import compare, registry
from advrep.config import resolve
from advrep.evaluate import read_per_sample
from advrep.sonet import workflow as W
from advrep.sonet.grids import grid_statistics

ROOT = Path(__file__).resolve().parents[1]
CIFAR_META = {"name": "cifar10", "content_sha256": "0" * 64}


def config(scale):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["scale"] = scale
    return resolve(cfg)["sonet"]


def test_grid_statistics_by_hand():
    grids = [[0, 0.25, 1], [0, 0.27, 1], [0, 0.2501, 1], [0, 0.1, 0.8, 1]]
    st = grid_statistics(grids, decimals=2)
    assert st["n"] == 4 and st["modal_length"] == 3 and st["modal_length_frequency"] == 0.75
    assert st["median"] == pytest.approx([0.0, 0.2501, 1.0])  # median of 0.25, 0.27, 0.2501
    assert st["mode"] == [0.0, 0.25, 1.0] and st["mode_frequency"] == 0.5  # 0.25 and 0.2501 round alike
    # order of the images does not matter, ties go to the shorter grid
    assert grid_statistics(grids[::-1], decimals=2) == st
    tie = grid_statistics([[0, 1], [0, 0.5, 1]])
    assert tie["modal_length"] == 2 and tie["mode"] == [0.0, 1.0]
    with pytest.raises(ValueError):
        grid_statistics([])


def test_every_registry_row_is_made_by_a_job():
    reg = registry.load("sonet")
    rows = {t: set(reg.numbers[reg.numbers["target"] == t]["row"]) for t in ("table1", "table2", "table3", "table4")}
    made1 = {f"{a[1]} / Channel {c} / PGD-{k}" for a in W.ARCHS.values() for c in (32, 64) for k in (20, 1000)}
    made2 = {f"{a[2]} / Channel {c}" for a in W.ARCHS.values() for c in (32, 64)}
    made3 = {f"{label} / {s[2]}" for label, rs in W.TABLE3_MODELS.values() for s in rs}
    made4 = {f"Dopri5(tol={t:g}) / PGD iterations {k}" for t in W.TABLE4_TOLS for k in W.TABLE4_ITERATIONS}
    assert rows == {"table1": made1, "table2": made2, "table3": made3, "table4": made4}
    assert len(W.JOBS) == 8 + 16 and set(W.TABLE_JOBS["table4"]) <= set(W.TABLE_JOBS["table3"])


def test_paper_scale_settings_are_the_papers_and_smoke_says_why_not():
    paper = config("paper")
    for job in W.JOBS:
        s = W.job_settings(paper, job)
        assert W.deviations(s, CIFAR_META, list(W.PAPER_ATTACKS)) == [], job
        if s["beta"] is not None:
            assert s["training"]["objective"]["beta"] == s["beta"] and s["model"] == "resnet10"
    t3 = W.job_settings(paper, "t3_soblock_bosh3_tol0.01")
    assert t3["model_kw"]["solver"] == "bosh3" and t3["model_kw"]["tol"] == 0.01
    assert "table4" in W.job_settings(paper, "t3_odenet_dopri5_tol0.001")
    smoke = config("smoke")
    s = W.job_settings(smoke, "sonet_c64")
    why = W.deviations(s, {"name": "digits32", "standin_for": "cifar-like 32x32x3"}, ["pgd1000_steps"])
    assert any("stand-in data: digits32" in r for r in why)
    assert any("width" in r and "channel 64" in r for r in why)
    assert any(r.startswith("pgd1000_steps=") and "(paper: 1000)" in r for r in why)
    # a changed stated setting is named
    bad = copy.deepcopy(paper)
    bad["training"]["optimizer"]["lr"] = 0.1
    assert W.deviations(W.job_settings(bad, "trades1_c32"), CIFAR_META) == ["training optimizer.lr=0.1 (paper: 0.01)"]
    with pytest.raises(ValueError, match="unknown sonet job"):
        W.job_settings(paper, "resnet50_c32")


def tiny_config():
    """The smoke config cut down further, so that all 24 jobs run in about a minute in a test."""
    c = config("smoke")
    c["data"].update(max_train=64, max_test=12)
    c["training"].update(epochs=1, batch_size=32)
    c["training"]["trades"].update(steps=1)
    c["attacks"].update(pgd20_steps=2, pgd1000_steps=4)
    c["attacks"]["cw_linf"]["steps"] = 2
    c["attacks"]["spsa"].update(nb_iter=1, nb_sample=4)
    c["extras"]["bpda"].update(steps=2, step_size=0.5)
    c["extras"]["masking"].update(steps=[1, 2], square_queries=5)
    c["table4"].update(iterations=[1, 2, 3], max_images=3)
    return c


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sonet")
    data = tmp / "digits32.npz"
    advdata.prepare("digits32", data, root=None)
    c = tiny_config()
    files = {}
    for job in W.JOBS:
        files[job] = (tmp / f"{job}.per_sample.csv", tmp / f"{job}.json")
        W.run_job(data, *files[job], settings=W.job_settings(c, job), seed=0, workdir=tmp / "ck", threads=1)
    out = {}
    for target in W.TARGETS:
        out[target] = tmp / f"{target}.csv"
        W.run_table(target, out[target], job_files={j: files[j] for j in W.TABLE_JOBS[target]}, scale="smoke",
                    seed=0, out_png=tmp / "table4.png" if target == "table4" else None)
    return tmp, files, out, c


def test_every_published_cell_is_computed_and_says_why_it_is_not_comparable(tables):
    tmp, files, out, _ = tables
    reg = registry.load("sonet")
    for target in ("table1", "table2", "table3", "table4"):
        df = pd.read_csv(out[target])
        cells = set(zip(df["row"], df["column"]))
        pub = reg.numbers[reg.numbers["target"] == target]
        want = set(zip(pub["row"], pub["column"]))
        assert want <= cells, sorted(want - cells)[:5]
        paper_cells = df[[(r, c) in want for r, c in zip(df["row"], df["column"])]]
        assert not paper_cells["comparable"].any()
        assert paper_cells["reason"].str.contains("stand-in data: digits32").all()
        # computed, except (Table 4) positions past the end of our most frequent grid, which say so
        late = paper_cells["column"].isin(["adaptive step 3", "adaptive step 4", "adaptive step 5"])
        assert (paper_cells[~late]["status"] == "ok").all()
        assert paper_cells[paper_cells["status"] != "ok"]["reason"].str.contains("the most frequent grid here").all()
    t1 = pd.read_csv(out["table1"]).set_index(["row", "column"])
    assert "pgd1000_steps=4 (paper: 1000)" in t1.loc[("SONet / Channel 32 / PGD-1000", "A_rob eps=0.031 (l_inf)"),
                                                     "reason"]
    assert (tmp / "table4.png").stat().st_size > 5000
    m = pd.read_csv(out["masking"])
    assert set(m["row"].str.split(": ").str[0]) >= set(W.JOBS) and m["column"].str.endswith(": passed").any()


def test_cells_are_aggregations_of_the_per_sample_tables(tables):
    tmp, files, out, _ = tables
    t1 = pd.read_csv(out["table1"]).set_index(["row", "column"])["value"]
    t2 = pd.read_csv(out["table2"]).set_index(["row", "column"])["value"]
    df = read_per_sample(files["sonet_c32"][0])
    clean = df["clean_correct"].to_numpy()
    assert t1[("SONet / Channel 32 / PGD-20", "A_nat")] == pytest.approx(100 * clean.mean())
    for label, cell in (("pgd20", t1[("SONet / Channel 32 / PGD-20", "A_rob eps=0.031 (l_inf)")]),
                        ("pgd1000_l2", t1[("SONet / Channel 32 / PGD-1000", "A_rob eps=0.5 (l_2)")]),
                        ("spsa", t2[("SONet / Channel 32", "A_rob SPSA")])):
        assert cell == pytest.approx(100 * (clean & ~df[f"success:{label}"].to_numpy()).mean())
        # broken samples are never counted robust; misclassified ones count as broken
        assert cell <= 100 * clean.mean() + 1e-9
    worst = t1[("SONet / Channel 32 / PGD-20", "A_rob worst case over attacks (l_inf)")]
    linf = [c for c in df.columns if c.startswith("success:") and not c.endswith("_l2")]
    assert {"success:bpda_pgd20", "success:autoattack", "success:cw_linf"} <= set(linf)
    assert worst == pytest.approx(100 * (clean & ~df[linf].any(axis=1).to_numpy()).mean())
    assert worst <= min(t1[("SONet / Channel 32 / PGD-20", "A_rob eps=0.031 (l_inf)")],
                        t2[("SONet / Channel 32", "A_rob CW-Linf")]) + 1e-9
    # the TRADES baseline is no ODE model: no fixed-grid attack and no NFE
    assert ("ResNet10-TRADES (1/lambda=1.0) / Channel 32 / PGD-20", "NFE per forward (clean batch)") not in t1.index
    assert t1[("SONet / Channel 32 / PGD-20", "NFE per forward (clean batch)")] >= 6  # dopri5: >= 6 per block


def test_table4_reads_the_recorded_grids(tables):
    tmp, files, out, _ = tables
    t4 = pd.read_csv(out["table4"]).set_index(["row", "column"])
    import json

    js = json.loads(files["t3_odenet_dopri5_tol0.1"][1].read_text())
    assert set(js["grids"]) == {"1", "2", "3"} and all(len(v) == 3 for v in js["grids"].values())
    for k, printed in zip((1, 2, 3), W.TABLE4_ITERATIONS):
        st = grid_statistics(js["grids"][str(k)])
        row = f"Dopri5(tol=0.1) / PGD iterations {printed}"
        assert t4.loc[(row, "adaptive step 1"), "value"] == 0.0
        assert t4.loc[(row, f"adaptive step {st['modal_length']}"), "value"] == pytest.approx(1.0)
        for i, v in enumerate(st["median"]):
            assert t4.loc[(row, f"adaptive step {i + 1}"), "value"] == pytest.approx(v)
        assert f"{k} PGD iterations (paper: {printed})" in t4.loc[(row, "adaptive step 1"), "reason"] or k == printed
        for g in js["grids"][str(k)]:
            assert g[0] == 0.0 and g[-1] == pytest.approx(1.0) and np.all(np.diff(g) > 0)


def test_audit_reads_every_sonet_number_and_claim(tables):
    tmp, files, out, _ = tables
    reg = registry.load("sonet")
    results = compare.Results.from_files(list(out.values()))
    nums = compare.audit_numbers(reg, results, "smoke")
    assert len(nums) == len(reg.numbers) == 154
    assert (nums["verdict"] == "not comparable").all()
    assert not nums["reason"].str.contains("not run yet").any()
    core = nums[nums["column"].isin(["adaptive step 1", "adaptive step 2"]) | (nums["target"] != "table4")]
    assert core["reproduced"].notna().all()
    claims = compare.audit_claims(reg, results)
    assert (claims["verdict"] == "not comparable").all() and not claims["reason"].str.contains("not run yet").any()


def test_a_finished_job_resumes_from_its_checkpoint(tables, tmp_path):
    tmp, files, out, c = tables
    s = W.job_settings(c, "soblock_c32")
    again = W.run_job(tmp / "digits32.npz", tmp_path / "a.csv", tmp_path / "a.json", settings=s, seed=0,
                      workdir=tmp / "ck")
    assert again["seconds_train"] < 2.0
    pd.testing.assert_frame_equal(read_per_sample(tmp_path / "a.csv"), read_per_sample(files["soblock_c32"][0]))
    other = copy.deepcopy(s)
    other["model_kw"]["tol"] = 0.01
    assert W.checkpoint_key(other, 0) != W.checkpoint_key(s, 0) != W.checkpoint_key(s, 1)
