"""oaat workflow: the job line-up against the registry, the paper's stated settings in the config, config
validation, and a tiny end-to-end run of every job and every target checked against the registry and the audit."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from advrep import data as advdata
from advrep.audit import compare, registry
from advrep.config import resolve
from advrep.evaluate import read_per_sample
from advrep.oaat import workflow as W

ROOT = Path(__file__).resolve().parents[1]
CIFAR = {"c10": {"name": "cifar10", "content_sha256": "0" * 64}, "c100": {"name": "cifar100",
                                                                         "content_sha256": "1" * 64}}


def config(scale):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["scale"] = scale
    return resolve(cfg)["oaat"]


def test_every_registry_cell_is_made_by_a_job():
    reg = registry.load("oaat")
    layout = yaml.safe_load((ROOT / "src" / "advrep" / "published" / "oaat.layout.yaml").read_text())
    for target, rows, columns in (("table1", W.T1_ROWS, W.T1_COLUMNS), ("table2", W.T2_ROWS, W.T2_COLUMNS)):
        assert [r for r, _ in rows] == layout[target]["rows"]
        assert [c for c, _, _ in columns] == layout[target]["columns"]
        pub = reg.numbers[reg.numbers["target"] == target]
        assert set(pub["row"]) == {r for r, _ in rows}
    # the two AWP rows are different models; Table 2's RN-18 rows are Table 1's models
    assert W.JOBS["c10_rn18_awp_pgd_at"]["method"] != W.JOBS["c10_rn18_awp_trades"]["method"]
    assert dict(W.T2_ROWS)["AWP / RN-18"] == dict(W.T1_ROWS)["CIFAR-10 (ResNet-18) / AWP (AWP-TRADES)"]
    assert W.init_job("c10_rn18_exat_pgd") == "c10_rn18_pgd_at"
    assert W.init_job("c10_rn18_exat_awp") == "c10_rn18_awp_pgd_at"
    assert W.training_job("c10_wrn34_oaat_wa") == "c10_wrn34_oaat" and W.training_job("c10_rn18_oaat") == \
        "c10_rn18_oaat"


def test_paper_scale_oaat_is_comparable_and_baselines_say_why_not():
    paper = config("paper")
    s = W.job_settings(paper, "c10_rn18_oaat")
    assert s["training"]["epochs"] == 110 and s["training"]["schedule"]["name"] == "cosine"
    assert s["training"]["objective"]["name"] == "oaat"
    for attack in (None, "gama", "aa", "square"):
        assert W.deviations(s, CIFAR["c10"], attack) == [], attack
    c100 = W.job_settings(paper, "c100_rn18_oaat")
    assert W.deviations(c100, CIFAR["c100"], "square") == []
    assert "autoaugment" in c100["training"]["augment"]
    for method in W.BASELINES:
        why = W.deviations(W.job_settings(paper, f"c10_rn18_{method}"), CIFAR["c10"], "aa")
        assert any("tuned every baseline to about 80% clean accuracy" in r for r in why), method
    assert any("3rd-row AWP" in r for r in W.deviations(W.job_settings(paper, "c10_rn18_awp_pgd_at"),
                                                          CIFAR["c10"]))
    exat = W.job_settings(paper, "c10_rn18_exat_pgd")
    assert exat["training"]["epochs"] == 5 and exat["init"]["job"] == "c10_rn18_pgd_at"
    # a WA job and its twin train one run (same checkpoint key); the twin keeps the average too
    wa, twin = W.job_settings(paper, "c10_wrn34_oaat_wa"), W.job_settings(paper, "c10_wrn34_oaat")
    assert W.checkpoint_key(wa, 0) == W.checkpoint_key(twin, 0) and twin["training"]["ema"] == 0.995
    # smoke names its differences
    smoke = config("smoke")
    why = W.deviations(W.job_settings(smoke, "c10_rn18_oaat"), {"name": "digits32", "standin_for": "cifar-like"},
                       "gama")
    assert any("stand-in data: digits32 in place of CIFAR-10" in r for r in why)
    assert any(r.startswith("gama.steps=") and "(paper: 100)" in r for r in why)
    bad = copy.deepcopy(paper)
    bad["attacks"]["square"]["n_queries"] = 1000
    assert W.deviations(W.job_settings(bad, "c10_rn18_oaat"), CIFAR["c10"], "square") == [
        "square.n_queries=1000 (paper: 5000)"]
    with pytest.raises(ValueError, match="unknown oaat job"):
        W.job_settings(paper, "c10_rn50_oaat")


@pytest.mark.parametrize("edit, key", [
    (lambda c: c["methods"]["oaat"]["objective"].update(mixup_alpha=1.5), "oaat.methods.oaat.objective"),
    (lambda c: c["methods"]["oaat"]["objective"].update(lpips_weight=-1.0), "oaat.methods.oaat.objective"),
    (lambda c: c["methods"]["oaat"]["objective"].update(eps_start="20/255"), "oaat.methods.oaat.objective"),
    (lambda c: c["methods"]["oaat"].setdefault("training", {}).update(eps_schedule={"ramp_epochs": 5}),
     "oaat.methods.oaat.training.eps_schedule"),
    (lambda c: c["methods"]["pgd_at"].setdefault("training", {}).update(eps_schedule={"ramp_epochs": 500}),
     "oaat.methods.pgd_at.training.eps_schedule"),
    (lambda c: c["methods"].update(madry={"objective": "ce"}), "oaat.methods.madry"),
    (lambda c: c["models"]["model_kw"].update(wrn34={"depth": 11}), "oaat.models.wrn34 on oaat.data.datasets.c10"),
    (lambda c: c["models"]["model_kw"].update(rn18={"drop_rate": 0.1}), "oaat.models.rn18"),
])
def test_bad_config_stops_naming_the_key(edit, key):
    cfg = config("paper")
    W.validate(cfg)
    edit(cfg)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        W.validate(cfg)


def test_snakemake_rejects_a_bad_oaat_config(tmp_path):
    """The workflow itself stops before any job: an unknown method and alpha out of range (schema), an engine eps
    ramp on OA-AT (advrep.oaat.workflow.validate, called by rules/common.smk)."""
    cases = [({"oaat": {"methods": {"madry": {"objective": "ce"}}}}, "madry"),
             ({"oaat": {"methods": {"oaat": {"objective": {"name": "oaat", "mixup_alpha": 2.0}}}}}, "mixup_alpha"),
             ({"oaat": {"methods": {"oaat": {"training": {"eps_schedule": {"ramp_epochs": 5}}}}}},
              "oaat.methods.oaat.training.eps_schedule")]
    for i, (bad, key) in enumerate(cases):
        f = tmp_path / f"bad{i}.yaml"
        f.write_text(yaml.safe_dump(bad))
        r = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "results/smoke/oaat/table1.csv",
                            "--configfile", str(f)], cwd=ROOT, capture_output=True, text=True)
        out = r.stdout + r.stderr
        assert r.returncode != 0 and key in out, out[-2000:]
        assert "oaat_job" not in r.stdout  # stopped before the DAG


def tiny_config():
    """The smoke config cut down further, so that all 18 jobs run in well under a minute in a test."""
    c = config("smoke")
    c["data"].update(max_train=48, max_test=10)
    c["training"].update(epochs=2, batch_size=24)
    c["models"]["widths"].update(rn18=2, rn34=1)
    c["attacks"]["gama"].update(steps=3, lam_steps=1, decay_at=[2])
    c["attacks"]["square"]["n_queries"] = 5
    c["attacks"]["autoattack"].update(steps=1, square_queries=3)
    c["masking"].update(steps=[1, 2], square_queries=5)
    c["figure1"]["steps"] = 3
    for m in ("fat", "pgd_at", "ates", "trades", "exat_pgd"):
        c["methods"][m]["objective"]["steps"] = 2
    for m in ("awp_pgd_at", "awp_trades", "exat_awp"):
        c["methods"][m]["objective"]["base"]["steps"] = 2
    c["methods"]["oaat"]["objective"].update(steps=2, steps_start=1, oracle_steps=2)
    return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("oaat")
    data = tmp / "digits32.npz"
    advdata.prepare("digits32", data, root=None)
    c = tiny_config()
    W.validate(c)
    files, summaries = {}, {}
    order = sorted(W.JOBS, key=lambda j: (W.init_job(j) is not None, W.training_job(j) != j))
    for job in order:
        files[job] = (tmp / f"{job}.per_sample.csv", tmp / f"{job}.json", tmp / f"{job}.pt")
        parent = W.init_job(job)
        summaries[job] = W.run_job(data, *files[job], settings=W.job_settings(c, job), seed=0,
                                   workdir=tmp / "ck" / W.training_job(job),
                                   init_model=None if parent is None else files[parent][2])
    out = {}
    for target in W.TARGETS:
        out[target] = tmp / f"{target}.csv"
        W.run_table(target, out[target], job_files={j: files[j][:2] for j in W.TABLE_JOBS[target]}, scale="smoke",
                    seed=0)
    out["figure1"] = tmp / "figure1.csv"
    W.run_figure1(data, {"nt": files["c10_rn18_nt"][2], "pgd_at": files["c10_rn18_pgd_at"][2]}, out["figure1"],
                  tmp / "figure1.png", scale="smoke", seed=0,
                  settings={**c["figure1"], "jobs": {k: W.job_settings(c, f"c10_rn18_{k}") for k in ("nt", "pgd_at")}})
    return tmp, files, summaries, out, c


def test_every_published_cell_is_computed_and_names_the_standin(run):
    tmp, files, summaries, out, _ = run
    reg = registry.load("oaat")
    for target in ("table1", "table2"):
        df = pd.read_csv(out[target])
        pub = reg.numbers[reg.numbers["target"] == target]
        want = set(zip(pub["row"], pub["column"]))
        cells = df[[(r, c) in want for r, c in zip(df["row"], df["column"])]]
        assert len(cells) == len(want)
        assert (cells["status"] == "ok").all() and not cells["comparable"].any()
        assert cells["reason"].str.contains("stand-in data: digits32 in place of CIFAR-").all()
        assert cells["value"].between(-100, 100).all()
    t1 = pd.read_csv(out["table1"]).set_index(["row", "column"])
    assert "in place of CIFAR-100" in t1.loc[("CIFAR-100 (ResNet-18) / OA-AT (Ours)", "Clean"), "reason"]
    assert "80% clean accuracy" in t1.loc[("CIFAR-10 (ResNet-18) / FAT", "Clean"), "reason"]
    assert "80% clean accuracy" not in t1.loc[("CIFAR-10 (ResNet-18) / OA-AT (Ours)", "Clean"), "reason"]
    m = pd.read_csv(out["masking"])
    assert set(m["row"].str.split(": ").str[0]) == {"c10_rn18_oaat", "c10_rn18_awp_trades"}
    assert m["column"].str.endswith(": passed").sum() == 8


def test_cells_are_aggregations_of_the_per_sample_tables(run):
    tmp, files, summaries, out, _ = run
    t1 = pd.read_csv(out["table1"]).set_index(["row", "column"])["value"]
    t2 = pd.read_csv(out["table2"]).set_index(["row", "column"])["value"]
    for job, row, table in (("c10_rn18_oaat", "CIFAR-10 (ResNet-18) / OA-AT (Ours)", t1),
                            ("c10_wrn34_oaat_wa", "Ours + WA / WRN-34", t2)):
        df = read_per_sample(files[job][0])
        clean = df["clean_correct"].to_numpy()
        assert table[(row, "Clean")] == pytest.approx(100 * clean.mean())
        column = "Square (16/255)"
        assert table[(row, column)] == pytest.approx(100 * (clean & ~df["success:square_16"].to_numpy()).mean())
        for k in (8, 12, 16):
            cols = [c for c in df.columns if c.startswith("success:") and c.endswith(f"_{k}")]
            assert {f"success:gama_{k}", f"success:aa_{k}"} <= set(cols)
            ors = df[cols].any(axis=1).to_numpy()
            assert (df[f"worst_success:{k}"].to_numpy() == ors).all()
            worst = table[(row, f"worst case over attacks ({k}/255)")]
            assert worst == pytest.approx(100 * (clean & ~ors).mean())
            assert worst <= min(100 * (clean & ~df[c].to_numpy()).mean() for c in cols) + 1e-9
    # the gain rows are OA-AT minus AWP-TRADES, column by column
    for data in ("CIFAR-10", "CIFAR-100"):
        for column, _a, _k in W.T1_COLUMNS:
            ours = t1[(f"{data} (ResNet-18) / OA-AT (Ours)", column)]
            awp = t1[(f"{data} (ResNet-18) / AWP (AWP-TRADES)", column)]
            assert t1[(f"{data} (ResNet-18) / Gain w.r.t. AWP", column)] == pytest.approx(ours - awp)


def test_the_objectives_did_what_the_config_says(run):
    tmp, files, summaries, out, _ = run
    h = summaries["c10_rn18_oaat"]["history"]
    assert len(h) == 2 and h[0]["alternate"] == 0 and h[1]["alternate"] == 1  # the ramp compressed into 2 epochs
    assert "lpips" in h[1] and np.isfinite(h[1]["lpips"])
    assert "fat_tau" in summaries["c10_rn18_fat"]["history"][0]
    assert "ates_threshold" in summaries["c10_rn18_ates"]["history"][0]
    assert all("val_acc" in r for r in h)  # the authors' validation split is monitored
    # ExAT fine-tunes the PGD-AT weights for its own epochs, not from scratch
    ex = summaries["c10_rn18_exat_pgd"]
    assert len(ex["history"]) == ex["settings"]["training"]["epochs"] == 1
    # the WA job evaluates the average of its twin's run: the run was not trained again, the models differ
    wa = summaries["c10_wrn34_oaat_wa"]
    assert wa["resumed_from"] == 2 and wa["seconds_train"] < 5
    from advrep.train import load_checkpoint

    a = load_checkpoint(files["c10_wrn34_oaat"][2])["model"]
    b = load_checkpoint(files["c10_wrn34_oaat_wa"][2])["model"]
    assert any(not (a[k] == b[k]).all() for k in a if a[k].is_floating_point())


def test_audit_reads_every_oaat_number_and_claim(run):
    tmp, files, summaries, out, _ = run
    reg = registry.load("oaat")
    results = compare.Results.from_files([out[t] for t in ("table1", "table2", "masking", "figure1")])
    nums = compare.audit_numbers(reg, results, "smoke")
    assert len(nums) == len(reg.numbers) == 139
    assert (nums["verdict"] == "not comparable").all() and nums["reproduced"].notna().all()
    assert not nums["reason"].str.contains("not run yet").any()
    claims = compare.audit_claims(reg, results)
    assert len(claims) == len(reg.claims) and (claims["verdict"] == "not comparable").all()
    assert not claims["reason"].str.contains("not run yet").any()
    assert claims["on_this_run"].isin(["holds", "fails"]).all()


def test_figure1_csv_and_picture(run):
    tmp, files, summaries, out, c = run
    f = pd.read_csv(out["figure1"])
    rows = list(dict.fromkeys(f["row"]))
    assert rows[0] == "original / eps=0/255" and len(rows) == 1 + 2 * len(c["figure1"]["eps"]) + 1
    v = f.set_index(["row", "column"])["value"]
    assert v[("original / eps=0/255", "LPIPS to the original (PGD-AT features)")] == 0.0
    for src in ("AT", "NT"):
        dists = [v[(f"{src} / eps={k}/255", "L-inf distance to the original")] for k in (8, 16, 24, 32)]
        assert all(d <= k / 255 + 1e-6 for d, k in zip(dists, (8, 16, 24, 32)))
        assert all(v[(f"{src} / eps={k}/255", "LPIPS to the original (PGD-AT features)")] > 0 for k in (8, 32))
    oi = "AT, LPIPS-penalised (Oracle-Invariant) / eps=16/255"
    assert v[(oi, "L-inf distance to the original")] <= 16 / 255 + 1e-6
    assert (~f["comparable"]).all() and f["reason"].str.contains("prints no numbers").all()
    assert (tmp / "figure1.png").stat().st_size > 5000
    prov = json.loads((tmp / "figure1.provenance.json").read_text())
    assert prov["datasets"][0]["name"] == "digits32"


def test_a_finished_job_resumes_from_its_checkpoint(run, tmp_path):
    tmp, files, summaries, out, c = run
    s = W.job_settings(c, "c10_rn18_trades")
    again = W.run_job(tmp / "digits32.npz", tmp_path / "a.csv", tmp_path / "a.json", tmp_path / "a.pt", settings=s,
                      seed=0, workdir=tmp / "ck" / "c10_rn18_trades")
    assert again["resumed_from"] == 2 and again["seconds_train"] < 2.0
    pd.testing.assert_frame_equal(read_per_sample(tmp_path / "a.csv"), read_per_sample(files["c10_rn18_trades"][0]))
    other = copy.deepcopy(s)
    other["training"]["objective"]["beta"] = 1.0
    assert W.checkpoint_key(other, 0) != W.checkpoint_key(s, 0) != W.checkpoint_key(s, 1)
    with pytest.raises(ValueError, match="fine-tunes"):
        W.run_job(tmp / "digits32.npz", tmp_path / "b.csv", tmp_path / "b.json", tmp_path / "b.pt",
                  settings=W.job_settings(c, "c10_rn18_exat_pgd"), seed=0, workdir=tmp_path / "ck")
