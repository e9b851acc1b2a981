"""lipreg Tables 1-3, 5, 6 and Figures 2-4: the job line-up against the registry, the config checks, the minimal-
distance statistics on a trained model, and a tiny end-to-end run of every job and target checked against the
registry and the audit."""

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from advrep import data as advdata
from advrep.audit import compare, registry
from advrep.config import resolve
from advrep.evaluate import read_per_sample
from advrep.lipreg import statistics as S
from advrep.lipreg import workflow as W

ROOT = Path(__file__).resolve().parents[1]
CIFAR_META = {"name": "cifar10", "content_sha256": "0" * 64}
MINE = set(W.TARGETS)


def raw_config():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def config(scale):
    cfg = raw_config()
    cfg["scale"] = scale
    return resolve(cfg)


def test_jobs_and_the_papers_settings():
    assert len([j for j in W.JOBS if j != W.MADRY]) == 10  # six CIFAR-10 rows (Table 2) + four CIFAR-100 (Table 3)
    paper = config("paper")
    for job in W.JOBS:
        if job == W.MADRY:
            continue
        s = W.job_settings(paper["lipreg"], job, paper["voronoi"])
        meta = {"name": s["dataset_key"], "content_sha256": "0" * 64}
        assert W.deviations(s, meta, list(W.FOUR) + ["evasive_cw"]) == [], job
        assert s["model"] == ("resnext34_2x32" if job.startswith("cifar10_") else "resnext34_4x32")
    ob = W.job_settings(paper["lipreg"], "cifar10_tv01_lip1")["training"]["objective"]
    assert ob == {"name": "grad_norm", "eps_tv": 0.1, "lam_lip": 1.0, "method": "finite_difference", "h": 1e-3,
                  "norm": "l2"}
    fgsm = W.job_settings(paper["lipreg"], "cifar100_fgsm_at")["training"]["objective"]
    assert fgsm["name"] == "pgd_at" and fgsm["steps"] == 1 and fgsm["alpha"] == fgsm["eps"]
    assert "evasive_cw" in W.job_settings(paper["lipreg"], W.DETECTION_JOB)["attacks"]
    assert "evasive_cw" not in W.job_settings(paper["lipreg"], "cifar10_undefended")["attacks"]
    smoke = config("smoke")
    s = W.job_settings(smoke["lipreg"], "cifar100_tv001", smoke["voronoi"])
    why = W.deviations(s, {"name": "digits32", "standin_for": "cifar-like 32x32x3"}, ["boundary"])
    assert "stand-in data: digits32 in place of CIFAR-100" in why
    assert any(r.startswith("Boundary steps=") and "(paper: 25000)" in r for r in why)
    bad = copy.deepcopy(paper["lipreg"])
    bad["training"]["penalty"]["h"] = 1e-2
    assert "penalty h=0.01 (paper: 0.001)" in W.deviations(W.job_settings(bad, "cifar10_tv001"), CIFAR_META)
    with pytest.raises(ValueError, match="unknown lipreg job"):
        W.job_settings(paper["lipreg"], "cifar10_tv1")


@pytest.mark.parametrize("overlay, key", [
    ({"defences": {"tv02": {"eps": 0.2, "lambda": 0.1}}}, "tv02"),            # unknown defence
    ({"defences": {"tv001": {"eps": -0.01, "lambda": 0.0}}}, "eps"),          # eps < 0
    ({"defences": {"tv01_lip1": {"eps": 0.1, "lambda": -1}}}, "lambda"),      # lambda < 0
    ({"training": {"penalty": {"method": "finite_difference", "h": 0}}}, "h"),  # h <= 0
    ({"training": {"penalty": {"method": "finite_difference", "h": "0.0"}}}, "h"),  # ... also as a string
    ({"training": {"fgsm_at": {"eps": "0/255"}}}, "eps"),
    ({"detection": {"percentile": 100}}, "percentile"),                       # outside (0, 100)
    ({"detection": {"percentile": 0}}, "percentile"),
])
def test_bad_config_is_refused_naming_the_key(overlay, key):
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    from advrep.config import merge

    cfg = raw_config()
    cfg["lipreg"] = merge(cfg["lipreg"], overlay)
    with pytest.raises(WorkflowError) as err:
        validate(cfg, schema=str(ROOT / "config" / "schema.yaml"))
    assert key in str(err.value)
    ok = raw_config()
    validate(ok, schema=str(ROOT / "config" / "schema.yaml"))  # the shipped config passes


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lipreg_data")
    path = tmp / "digits32.npz"
    advdata.prepare("digits32", path, root=None)
    return path


def test_minimal_distances_are_verified_adversarials_and_no_larger_than_at_the_radius(digits):
    """On a small trained model: every finite distance belongs to a misclassified point in [0, 1] at exactly that
    distance; misclassified images are at 0; bisection never returns a larger radius than the first run."""
    from advrep.voronoi.figures45 import images

    p = advdata.load(digits)
    x, y = images(p.x_train[:300]), torch.from_numpy(p.y_train[:300].astype(np.int64))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    xt, yt = images(p.x_test[:24]), torch.from_numpy(p.y_test[:24].astype(np.int64))
    attacks = {"pgd": {"params": {"steps": 5}, "max_eps": 4.0, "n_bisect": 4},
               "ifgsm": {"params": {"steps": 5, "alpha_factor": 0.25}, "max_eps": 0.3, "n_bisect": 4},
               "boundary": {"params": {"steps": 20, "init_steps": 10}},
               "cw": {"params": {"steps": 20, "binary_search_steps": 2, "initial_const": 1.0}}}
    cols, adv = S.attack_statistics(model, xt, yt, attacks, batch_size=10, keep_adversarials=True)
    with torch.no_grad():
        correct = model(xt).argmax(1) == yt
    assert correct.sum() >= 12
    for a, (_, norm, _) in ((a, S.PAPER_ATTACKS[a]) for a in attacks):
        d = cols[f"dist_{norm}:{a}"]
        assert (d[~correct.numpy()] == 0).all()
        ok = correct.numpy() & np.isfinite(d)
        assert ok.sum() >= 6, a
        xa = adv[a][ok]
        with torch.no_grad():
            assert (model(xa).argmax(1) != yt[ok]).all(), a
        assert xa.min() >= 0 and xa.max() <= 1
        for n in ("l2", "linf"):
            from advrep.attacks import lp_norm

            assert np.allclose(lp_norm(xa - xt[ok], n).numpy(), cols[f"dist_{n}:{a}"][ok], atol=1e-5), (a, n)
    one = S.attack_statistics(model, xt, yt, {"pgd": {**attacks["pgd"], "n_bisect": 0}}, batch_size=10)[0]
    assert (cols["dist_l2:pgd"] <= one["dist_l2:pgd"] + 1e-6).all()
    assert (cols["dist_l2:pgd"] < one["dist_l2:pgd"] - 1e-6).any()  # the bisection did shrink some
    # calls until first success are counted and positive for every attacked image
    assert (cols["calls:cw"][correct.numpy()] > 0).all() and (cols["calls:pgd"][~correct.numpy()] == 0).all()


def tiny_config():
    """The smoke config cut down further, so that all 11 jobs run in well under a minute."""
    cfg = config("smoke")
    c = cfg["lipreg"]
    c["data"].update(max_train=48, max_test=10)
    c["training"].update(epochs=1, batch_size=16)
    a = c["attacks"]
    a["pgd"].update(params={"steps": 2}, n_bisect=2)
    a["ifgsm"].update(params={"steps": 2, "alpha_factor": 0.5}, n_bisect=2)
    a["boundary"]["params"].update(steps=4, init_steps=5)
    for k in ("cw", "evasive_cw"):
        a[k]["params"].update(steps=4, binary_search_steps=1)
    m = cfg["voronoi"]["figure4"]["cifar10"]
    m.update(max_train=48)
    m["madry"]["training"].update(epochs=1, batch_size=16)
    m["madry"]["training"]["objective"].update(steps=1)
    return cfg


@pytest.fixture(scope="module")
def tables(digits, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lipreg")
    cfg = tiny_config()
    files = {}
    for job in W.JOBS:
        files[job] = (tmp / f"{job}.per_sample.csv", tmp / f"{job}.json")
        W.run_job(digits, *files[job], settings=W.job_settings(cfg["lipreg"], job, cfg["voronoi"]), seed=0,
                  workdir=tmp / "ck" / job, threads=1)
    out = {}
    for target in W.TARGETS:
        out[target] = tmp / f"{target}.csv"
        W.run_table(target, out[target], job_files={j: files[j] for j in W.TABLE_JOBS[target]}, scale="smoke",
                    seed=0, out_png=tmp / f"{target}.png" if target in W.FIGURES else None,
                    settings=cfg["lipreg"]["figures"])
    return tmp, files, out, cfg


def test_every_published_cell_is_computed_or_says_why(tables):
    tmp, files, out, _ = tables
    reg = registry.load("lipreg")
    for target in MINE:
        df = pd.read_csv(out[target])
        pub = reg.numbers[reg.numbers["target"] == target]
        got = df.set_index(["row", "column"])
        for _, p in pub.iterrows():
            assert (p["row"], p["column"]) in got.index, (target, p["row"], p["column"])
            cell = got.loc[(p["row"], p["column"])]
            assert not cell["comparable"]
            assert isinstance(cell["reason"], str) and cell["reason"]
            if p["column"] == "Qian":
                assert cell["status"] == "not run" and cell["reason"] == "quoted from Qian and Wegman, not reproduced"
            elif (p["row"], p["column"]) != ("test error (undefended model)", "Madry"):
                assert "stand-in data: digits32" in cell["reason"], (target, p["row"], p["column"])
    for target in W.FIGURES:
        assert (tmp / f"{target}.png").stat().st_size > 3000
    t1 = pd.read_csv(out["table1"]).set_index(["row", "column"])
    assert "challenge recipe" in t1.loc[("test error (defended model)", "Madry"), "reason"]


def test_cells_are_aggregations_of_the_per_sample_tables(tables):
    tmp, files, out, _ = tables
    t2 = pd.read_csv(out["table2"]).set_index(["row", "column"])["value"]
    df = read_per_sample(files["cifar10_undefended"][0])
    row = "undefended"
    clean = df["clean_correct"].to_numpy(bool)
    assert t2[(row, "% Err at eps=0")] == pytest.approx(100 * (1 - clean.mean()))
    d2, dinf = df["dist_l2:pgd"].to_numpy(float), df["dist_linf:ifgsm"].to_numpy(float)
    assert t2[(row, "2-norm % Err at eps=0.1")] == pytest.approx(100 * (d2 <= 0.1).mean())
    assert t2[(row, "inf-norm % Err at eps=8/255")] == pytest.approx(100 * (dinf <= 8 / 255).mean())
    assert t2[(row, "2-norm median distance")] == pytest.approx(np.median(d2))
    assert t2[(row, "max ||grad l||_2")] == pytest.approx(df["grad_loss_l2"].max())
    assert t2[(row, "mean ||grad f||_2,inf")] == pytest.approx(df["grad_f_2inf"].mean())
    # misclassified images are errors at every radius; the worst case is no weaker than any single attack
    assert t2[(row, "2-norm % Err at eps=0.1")] >= t2[(row, "% Err at eps=0")] - 1e-9
    worst = np.min(np.stack([df[f"dist_l2:{a}"] for a in W.FOUR]), 0)
    assert t2[(row, "2-norm % Err at eps=0.1 (worst case over the four attacks)")] == pytest.approx(
        100 * (worst <= 0.1).mean())
    assert t2[(row, "2-norm % Err at eps=0.1 (worst case over the four attacks)")] >= \
        t2[(row, "2-norm % Err at eps=0.1")] - 1e-9
    ok = clean & np.isfinite(d2)
    if ok.any():
        assert t2[(row, "2-norm median time")] == pytest.approx(np.median(df["calls:pgd"].to_numpy()[ok]))
    t1 = pd.read_csv(out["table1"]).set_index(["row", "column"])["value"]
    mad = read_per_sample(files[W.MADRY][0])
    assert t1[("I-FGSM (||eps||_inf = 8/255)", "Madry")] == pytest.approx(
        100 * (mad["dist_linf:ifgsm"].to_numpy(float) <= 8 / 255).mean())
    assert t1[("test error (undefended model)", "l2 TV (eps=0.1, lambda=1)")] == pytest.approx(
        t2[(row, "% Err at eps=0")])
    # Table 6: c is the 95th percentile of the clean, correctly classified images' ||grad f||_{2,inf}
    det = read_per_sample(files[W.DETECTION_JOB][0])
    t6 = pd.read_csv(out["table6"]).set_index(["row", "column"])["value"]
    dc = det["clean_correct"].to_numpy(bool)
    c = np.percentile(det["grad_f_2inf"].to_numpy(float)[dc], 95)
    assert t6[("rejection threshold c", "clean")] == pytest.approx(c)
    assert t6[("attack detected?", "clean")] == pytest.approx(100 * (det["grad_f_2inf"][dc] > c).mean())
    g = det["grad_f_2inf:pgd"].to_numpy(float)
    if np.isfinite(g).any():
        assert t6[("attack detected?", "PGD")] == pytest.approx(100 * (g[np.isfinite(g)] > c).mean())
    # Table 5: ratios of the two jobs' statistics
    t5 = pd.read_csv(out["table5"]).set_index(["row", "column"])
    reg_df = read_per_sample(files["cifar10_tv001_lip01"][0])
    cell = t5.loc[("predicted improvement (ratio of model Lipschitz constant)", "CIFAR-10")]
    num, den = df["grad_f_2inf"].max(), reg_df["grad_f_2inf"].max()
    if den > 0:
        assert cell["value"] == pytest.approx(num / den)
    else:  # a saturated softmax has a zero Jacobian: no ratio, a reason instead
        assert cell["status"] == "not run" and "ratio over 0" in cell["reason"]


def test_audit_reads_every_lipreg_number_and_claim(tables):
    tmp, files, out, _ = tables
    reg = registry.load("lipreg")
    results = compare.Results.from_files(list(out.values()))
    nums = compare.audit_numbers(reg, results, "smoke")
    mine = nums[nums["target"].isin(MINE)]
    assert len(mine) == len(reg.numbers[reg.numbers["target"].isin(MINE)]) == 133
    assert (mine["verdict"] == "not comparable").all()
    assert not mine["reason"].str.contains("not run yet").any()
    quoted = mine["column"] == "Qian"
    assert mine.loc[~quoted & (mine["reason"] != "the naturally trained model behind Madry et al.'s quoted number "
                               "is not trained here"), "reproduced"].notna().mean() > 0.7
    claims = compare.audit_claims(reg, results)
    ours = claims[~claims["id"].str.startswith("fig1-")]
    assert (ours["verdict"] == "not comparable").all()
    assert not ours["reason"].str.contains("not run yet").any()


def test_a_finished_job_resumes_from_its_checkpoint(tables, digits, tmp_path):
    tmp, files, out, cfg = tables
    job = "cifar10_tv01_lip1"
    s = W.job_settings(cfg["lipreg"], job, cfg["voronoi"])
    again = W.run_job(digits, tmp_path / "a.csv", tmp_path / "a.json", settings=s, seed=0, workdir=tmp / "ck" / job)
    assert again["seconds_train"] < 2.0
    pd.testing.assert_frame_equal(read_per_sample(tmp_path / "a.csv"), read_per_sample(files[job][0]))
    assert json.loads(Path(files[job][1]).read_text())["history"] == again["history"]
    other = copy.deepcopy(s)
    other["training"]["objective"]["lam_lip"] = 0.5
    assert W.checkpoint_key(other, 0) != W.checkpoint_key(s, 0) != W.checkpoint_key(s, 1)


def test_a_model_without_correct_images_gives_reasons_not_a_crash(tables, tmp_path):
    tmp, files, out, _ = tables
    df = read_per_sample(files[W.DETECTION_JOB][0])
    df["clean_correct"] = False
    df.to_csv(tmp_path / "none.csv", index=False)
    job = {W.DETECTION_JOB: (tmp_path / "none.csv", files[W.DETECTION_JOB][1])}
    W.run_table("table6", tmp_path / "table6.csv", job_files=job, scale="smoke", seed=0)
    t6 = pd.read_csv(tmp_path / "table6.csv").set_index(["row", "column"])
    cell = t6.loc[("rejection threshold c", "clean")]
    assert cell["status"] == "not run" and "no test image is classified correctly" in cell["reason"]
    with pytest.raises(ValueError, match="needs the jobs"):
        W.run_table("table2", tmp_path / "t2.csv", job_files=job, scale="smoke", seed=0)
