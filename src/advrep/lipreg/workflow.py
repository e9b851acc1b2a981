"""lipreg Tables 1, 2, 3, 5, 6 and Figures 2, 3, 4 as jobs of the workflow.

What the paper states (line numbers of ``shared/papers/001_92ec5d875816d6ad.txt``):

* models: ResNeXt-34 (2x32) on CIFAR-10 (L488, L513, L525), ResNeXt-34 (4x32) on CIFAR-100 (Table 3, L466);
* defences (Table 2 rows L459-464, Table 3 rows L471-474 with "eps=0.01 and lambda=0.1", L466): undefended; "l1 TV
  (AT, FGSM)" (one-step adversarial training, Sec. 3); the penalty (2.6)/(2.9): loss + eps * batch mean + lambda *
  batch max of ||grad_x l|| (L102), by the finite difference (l(x + h d) - l(x)) / h along the attack direction,
  h = 1e-3 (L106-108) -- the toolkit's ``grad_norm`` objective;
* training: "standard data augmentation and training hyper-parameters for the CIFAR datasets, and cutout" (L440);
  the numbers are not in the paper: tulip's (config ``lipreg.training``, comments cite the files);
* attacks (L442): PGD in the 2-norm, I-FGSM, Boundary, Carlini-Wagner, each perturbing an image until
  misclassified (:mod:`advrep.lipreg.statistics`); the columns of Tables 2/3 (L456-458, L478-480), the
  detection rule (7.1) with c at 5% false positives (L534-536), the evasive CW attack (L538).

One job per (dataset, defence) (:data:`JOBS`) trains through the engine (resumable per-epoch checkpoints) and writes
the per-sample table: the toolkit's evaluation table (:func:`advrep.evaluate.evaluate_per_sample`: clean verdicts and
the two gradient norms) joined with the minimal-distance statistics of every attack.  The ``madry`` job evaluates
the Madry CIFAR-10 model that the voronoi Figure 4 rules train (challenge recipe), under the same attacks (Table 1).
:func:`run_table` assembles each target from the job files; every cell is an aggregation of per-sample tables, and
a cell is comparable only when its job ran on the paper's data with the paper's settings (:func:`deviations`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from ..config import number
from ..results import Cells, dataset_tag, dotted_get, job_datasets, load_job, same_setting, show_setting
from . import statistics as S

# --- the paper's line-up ---------------------------------------------------------------------------------------

DATASETS = {"cifar10": ("CIFAR-10", "resnext34_2x32"), "cifar100": ("CIFAR-100", "resnext34_4x32")}
# defence key -> (Table 2 row, Table 3 row or None, Table 1 column or None)
DEFENCES = {
    "undefended": ("undefended", "undefended", None),
    "fgsm_at": ("l1 TV (AT, FGSM)", "l1 TV (AT, FGSM)", None),
    "tv001": ("l2 TV (eps=0.01)", "l2 TV", None),
    "tv001_lip01": ("l2 TV (eps=0.01) + Lipschitz (lambda=0.1)", "l2 TV + Lipschitz", "l2 TV (eps=0.01, lambda=0.1)"),
    "tv01_lip01": ("l2 TV (eps=0.1) + Lipschitz (lambda=0.1)", None, "l2 TV (eps=0.1, lambda=0.1)"),
    "tv01_lip1": ("l2 TV (eps=0.1) + Lipschitz (lambda=1)", None, "l2 TV (eps=0.1, lambda=1)"),
}
PENALISED = [d for d in DEFENCES if d.startswith("tv")]
MADRY = "madry"
DETECTION_JOB = "cifar10_tv001_lip01"  # Table 6 / Figure 4: "our model" (L536), the eps=0.01, lambda=0.1 one
FIGURE2_JOBS = ["cifar10_undefended", "cifar10_tv001_lip01", "cifar10_tv01_lip01"]  # L496: 0.31 and 0.48
ATTACK_LABELS = {"pgd": "PGD", "ifgsm": "I-FGSM", "boundary": "Boundary", "cw": "CW", "evasive_cw": "evasive CW"}
FOUR = ("pgd", "ifgsm", "boundary", "cw")  # L442
TARGETS = ("table1", "table2", "table3", "table5", "table6", "figure2", "figure3", "figure4")
FIGURES = ("figure2", "figure3", "figure4")


def _jobs() -> dict[str, dict]:
    jobs = {}
    for ds in DATASETS:
        for d, (_r2, r3, _c1) in DEFENCES.items():
            if ds == "cifar100" and r3 is None:
                continue
            jobs[f"{ds}_{d}"] = {"dataset_key": ds, "defence": d}
    jobs[MADRY] = {"dataset_key": "cifar10", "defence": MADRY}
    return jobs


JOBS = _jobs()
TABLE_JOBS = {
    "table1": ["cifar10_undefended"] + [f"cifar10_{d}" for d, v in DEFENCES.items() if v[2]] + [MADRY],
    "table2": [j for j in JOBS if j.startswith("cifar10_")],
    "table3": [j for j in JOBS if j.startswith("cifar100_")],
    "table5": ["cifar10_undefended", "cifar10_tv001_lip01", "cifar100_undefended", "cifar100_tv001_lip01"],
    "table6": [DETECTION_JOB],
    "figure2": FIGURE2_JOBS,
    "figure3": [j for j in JOBS if j.startswith("cifar10_")],
    "figure4": [DETECTION_JOB],
}

# --- the paper's stated settings (anything else is not comparable) -------------------------------------------------
PAPER_WIDTH = 32  # "2x32" / "4x32"
PAPER_PENALTY = {"method": "finite_difference", "h": 1e-3}  # L106-108
# not in the paper ("standard ... hyper-parameters for the CIFAR datasets", L440): tulip's, which the paper's code
# release follows (config comments cite the files); a run with other values says so
RECIPE = {"epochs": 200, "batch_size": 128, "optimizer.lr": 0.1, "optimizer.momentum": 0.9,
          "optimizer.weight_decay": 5e-4, "schedule.milestones": [60, 120, 160], "schedule.gamma": 0.2}
# the paper's attack budgets: Foolbox's defaults for CW and Boundary (L442: "using the Foolbox library")
PAPER_ATTACKS = {"boundary.params.steps": 25000, "cw.params.steps": 10000, "cw.params.binary_search_steps": 9,
                 "cw.params.initial_const": 1e-3}
PAPER_DETECTION = {"percentile": 95.0}  # "significance level ... 5%" (L536)


# --- settings ------------------------------------------------------------------------------------------------------

def objective(lipreg_config: dict, defence: str) -> dict:
    """The training objective of one defence: CE, FGSM adversarial training, or the penalty (2.6)/(2.9)."""
    tr = lipreg_config["training"]
    if defence == "undefended":
        return {"name": "ce"}
    if defence == "fgsm_at":
        f = tr["fgsm_at"]
        eps = number(f["eps"])  # FGSM: one signed-gradient step of size eps from x (Sec. 3, (3.2))
        return {"name": "pgd_at", "eps": eps, "alpha": eps, "steps": 1, "norm": "linf", "random_start": False}
    d = lipreg_config["defences"][defence]
    p = tr["penalty"]
    return {"name": "grad_norm", "eps_tv": number(d["eps"]), "lam_lip": number(d["lambda"]),
            "method": p["method"], "h": number(p["h"]), "norm": "l2"}


def job_settings(lipreg_config: dict, job: str, voronoi_config: dict | None = None) -> dict:
    """Everything one job needs, from config ``lipreg`` (resolved for the scale); the ``madry`` job also takes the
    voronoi Figure 4 CIFAR-10 Madry model's settings from config ``voronoi``."""
    if job not in JOBS:
        raise ValueError(f"unknown lipreg job {job!r}; known: {', '.join(JOBS)}")
    spec = JOBS[job]
    c = lipreg_config
    d = c["data"]
    ds = spec["dataset_key"]
    attacks = {k: dict(v) for k, v in c["attacks"].items() if k in FOUR or (k == "evasive_cw" and job == DETECTION_JOB)}
    out = {"job": job, **spec, "data": {"dataset": d[ds], "max_train": d.get("max_train"),
                                        "max_test": d.get("max_test")},
           "attacks": attacks, "batch_size": int(c["evaluation"]["batch_size"])}
    if job == DETECTION_JOB:
        out["detection"] = dict(c["detection"])
    if spec["defence"] == MADRY:
        if voronoi_config is None:
            raise ValueError("the madry job needs config['voronoi'] (it evaluates voronoi's Madry CIFAR-10 model)")
        from ..voronoi import figures45

        vs = figures45.job_settings(voronoi_config, "cifar10", "madry")
        out["madry"] = vs
        out["data"]["dataset"] = vs["dataset"]
        return out
    tr = c["training"]
    training = {k: tr[k] for k in ("epochs", "batch_size", "optimizer", "schedule", "augment") if k in tr}
    training["objective"] = objective(c, spec["defence"])
    m = c["models"]
    out.update(model=DATASETS[ds][1], width=m.get("width"), normalization=m.get("normalization"),
               model_kw=dict(m.get("model_kw") or {}), training=training)
    return out


def data_deviations(settings: dict, meta: dict) -> list[str]:
    paper = settings["dataset_key"]
    out = []
    if meta.get("standin_for"):
        out.append(f"stand-in data: {meta.get('name')} in place of {DATASETS[paper][0]}")
    elif meta.get("name") != paper:
        out.append(f"dataset {meta.get('name')} (paper: {paper})")
    d = settings["data"]
    if settings["defence"] != MADRY and d.get("max_train") is not None:
        out.append(f"{d['max_train']} training images (paper: all)")
    if d.get("max_test") is not None:
        out.append(f"a seeded subset of {d['max_test']} test images (paper: all)")
    return out


def model_deviations(settings: dict) -> list[str]:
    if settings["defence"] == MADRY:
        from ..voronoi import figures45

        vs = settings["madry"]
        out = ["Madry et al.'s CIFAR-10 model trained here with the challenge recipe (the voronoi Figure 4 job), not "
               "the published model whose numbers the paper quotes (L482)"]
        return out + [r for r in figures45.deviations(vs, {"name": "cifar10"}) if not r.startswith("eval ")
                      and "test images" not in r]
    out = []
    w = settings.get("width")
    if w is not None and (isinstance(w, str) and w == "tiny" or not same_setting(w, PAPER_WIDTH)):
        out.append(f"width {w} (paper: {PAPER_WIDTH})")
    if settings.get("model_kw"):
        out.append(f"model options {settings['model_kw']} (paper: tulip's architecture)")
    tr = settings["training"]
    for k, v in RECIPE.items():
        got = dotted_get(tr, k)
        if not same_setting(got, v):
            out.append(f"training {k}={show_setting(got)} (recipe: {show_setting(v)})")
    aug = json.dumps(tr.get("augment"), default=str)
    if "cutout" not in aug:
        out.append("no cutout (paper: standard augmentation and cutout, L440)")
    ob = tr["objective"]
    if ob["name"] == "grad_norm":
        for k, v in PAPER_PENALTY.items():
            if not same_setting(ob.get(k), v):
                out.append(f"penalty {k}={show_setting(ob.get(k))} (paper: {show_setting(v)})")
    return out


def attack_deviations(settings: dict, labels) -> list[str]:
    out = []
    a = settings["attacks"]
    for key, v in PAPER_ATTACKS.items():
        lab = key.split(".")[0]
        got = dotted_get(a, key)
        if key.endswith("initial_const") and got is None:
            continue  # the toolkit's default is Foolbox's
        if lab in labels and lab in a and not same_setting(got, v):
            out.append(f"{ATTACK_LABELS[lab]} {key.split('.', 2)[2]}={show_setting(got)} (paper: {show_setting(v)})")
    return out


def deviations(settings: dict, meta: dict, attacks=()) -> list[str]:
    """Why a job's cells are not the paper's (empty: comparable): data, model and training, and the budgets of
    the attacks the cell reads."""
    return data_deviations(settings, meta) + model_deviations(settings) + attack_deviations(settings, attacks)


# --- one job: train and evaluate one model -----------------------------------------------------------------------

def checkpoint_key(settings: dict, seed: int) -> str:
    """A hash of everything that decides the trained weights (a changed setting trains afresh, never resumes)."""
    from ..provenance import settings_hash

    keys = ("model", "width", "normalization", "model_kw", "training")
    return settings_hash({**{k: settings.get(k) for k in keys}, "data": {k: settings["data"].get(k) for k in
                                                                          ("dataset", "max_train")}, "seed": seed})


def _train(settings: dict, p, seed: int, workdir):
    """Train one defence through the engine (per-epoch checkpoints under ``workdir``, resumed if present)."""
    import torch

    from ..models import create_model
    from ..train import build_training
    from ..voronoi.figures45 import images, subset

    tr = subset(len(p.y_train), settings["data"].get("max_train"), seed)
    x_tr, y_tr = images(p.x_train[tr]), torch.from_numpy(p.y_train[tr].astype(np.int64))
    training = build_training({**settings["training"], "seed": seed, "progress": False})
    model = create_model(settings["model"], in_shape=tuple(x_tr.shape[1:]), num_classes=int(p.meta.get("n_classes",
                         10)), width=settings.get("width"), normalization=settings.get("normalization"),
                         seed=training.seed, **settings["model_kw"])
    loader = training.loader(torch.utils.data.TensorDataset(x_tr, y_tr), drop_last=True)
    result = training.fit(model, loader, checkpoint_dir=Path(workdir) / checkpoint_key(settings, seed))
    return result, training


def _madry(settings: dict, p, seed: int, workdir):
    """The voronoi Figure 4 CIFAR-10 Madry model: its engine run in voronoi's checkpoint folder (a finished run
    only loads; a missing one trains, exactly as the voronoi job would)."""
    import torch

    from ..train import build_training
    from ..voronoi import figures45 as F

    vs = settings["madry"]
    tr = F.subset(len(p.y_train), vs.get("max_train"), seed)
    x_tr, y_tr = F.images(p.x_train[tr]), torch.from_numpy(p.y_train[tr].astype(np.int64))
    cfg = dict(vs["training"])
    obj = cfg.pop("objective")
    training = build_training({**cfg, "objective": "ce", "seed": seed, "progress": False})
    model = F.build_model(vs, x_tr.shape[1:], int(p.meta.get("n_classes", 10)), training.seed)
    loader = training.loader(torch.utils.data.TensorDataset(x_tr, y_tr))
    result = training.fit(model, loader, checkpoint_dir=Path(workdir) / F.checkpoint_key(vs, seed),
                          objective=F.make_objective(obj, x_tr, y_tr))
    return result, training


def evaluate(model, x, y, settings: dict):
    """The per-sample table: the toolkit's evaluation table (clean verdicts, ||grad l||_2 and ||grad f||_{2,inf})
    joined with every attack's ``dist_l2:``/``dist_linf:``/``calls:`` columns; for the detection job also
    ``grad_f_2inf:<attack>`` at each attack's closest adversarial (NaN where the image was not attacked or not
    broken).  Returns ``(table, adversarial images)``."""
    import pandas as pd

    from ..evaluate import evaluate_per_sample

    bs = int(settings.get("batch_size", 256))
    base = evaluate_per_sample(model, (x, y), attacks=[], eps=0.0, gradient_norms=True, batch_size=bs)
    base = base.drop(columns=["worst_success", "robust_correct"])
    cols, adv = S.attack_statistics(model, x, y, settings["attacks"], batch_size=bs,
                                    keep_adversarials="detection" in settings)
    df = pd.concat([base, pd.DataFrame(cols)], axis=1)
    if "detection" in settings:
        from .detection import adversarial_gradient_norms

        clean = df["clean_correct"].to_numpy(bool)
        for label, xa in adv.items():
            found = clean & np.isfinite(df[f"dist_l2:{label}"].to_numpy(float))
            g = np.full(len(df), np.nan)
            if found.any():
                g[found] = adversarial_gradient_norms(model, xa[found].to(x.device), batch_size=bs)
            df[f"grad_f_2inf:{label}"] = g
    return df, adv


def run_job(data_file, out_csv, out_json, *, settings: dict, seed: int, workdir, threads: int = 1) -> dict:
    """Train one defence (or load voronoi's Madry model) and evaluate it; write the per-sample table (``out_csv``)
    and the job summary (``out_json``), both atomically."""
    import torch

    from .. import data as advdata
    from .. import io
    from ..evaluate import write_per_sample
    from ..train import resolve_device
    from ..voronoi.figures45 import images, subset

    torch.set_num_threads(max(1, int(threads)))
    p = advdata.load(data_file)
    t0 = time.perf_counter()
    result, training = (_madry if settings["defence"] == MADRY else _train)(settings, p, seed, workdir)
    seconds_train = time.perf_counter() - t0
    dev = resolve_device(training.device)
    model = result.eval_model.to(dev).eval()
    te = subset(len(p.y_test), settings["data"].get("max_test"), seed + 1)
    x_te = images(p.x_test[te]).to(dev)
    y_te = torch.from_numpy(p.y_test[te].astype(np.int64)).to(dev)
    t0 = time.perf_counter()
    df, _ = evaluate(model, x_te, y_te, settings)
    summary = {"job": settings["job"], "settings": settings, "meta": p.meta, "history": result.history,
               "seconds_train": seconds_train, "seconds_eval": time.perf_counter() - t0,
               "test_indices": te.tolist()}
    write_per_sample(df, out_csv)
    io.write_json(out_json, summary)
    return summary


# --- aggregations of the per-sample table --------------------------------------------------------------------------

def dist(df, attack: str, norm: str) -> np.ndarray:
    """Per-sample minimal adversarial distance of ``attack`` (or ``"worst"``: the smallest over the paper's four
    attacks, per sample) in ``norm``."""
    if attack == "worst":
        return np.min(np.stack([df[f"dist_{norm}:{a}"].to_numpy(float) for a in FOUR]), axis=0)
    return df[f"dist_{norm}:{attack}"].to_numpy(float)


def clean_error(df) -> float:
    return 100.0 * (1.0 - float(df["clean_correct"].astype(bool).mean()))


def median_calls(df, attack: str) -> float:
    """Median model calls until first success over the correctly classified images the attack broke (L480)."""
    ok = df["clean_correct"].to_numpy(bool) & np.isfinite(dist(df, attack, "l2"))
    calls = df[f"calls:{attack}"].to_numpy()[ok]
    return float(np.median(calls)) if calls.size else float("nan")


def grad_stat(df, which: str, how: str) -> float:
    from ..evaluate import max_gradient_norm, mean_gradient_norm

    return (max_gradient_norm if how == "max" else mean_gradient_norm)(df, which)


def _budget(s: dict, attack: str) -> list[str]:
    """Our choices for an attack the paper does not give (search radius, bisection, PGD/I-FGSM steps)."""
    a = s["attacks"][attack]
    out = []
    if "max_eps" in a:
        out.append(f"{ATTACK_LABELS[attack]} searched up to {show_setting(number(a['max_eps']))} with "
                   f"{a.get('n_bisect', 8)} bisection steps")
    if attack == "evasive_cw":  # the paper gives none of its settings
        shown = ", ".join(f"{k}={show_setting(v)}" for k, v in sorted((a.get("params") or {}).items()))
        out.append(f"evasive CW settings not stated in the paper; ours: {shown}")
    return out


def _stat_rows(row: str, df, js: dict, cells: Cells) -> None:
    """One row of Tables 2/3: the paper's cells (PGD for the 2-norm, I-FGSM for the inf-norm, L442) and, beside
    them, the per-sample worst case over the four attacks."""
    s, meta = js["settings"], js["meta"]
    tag = dataset_tag(meta)
    base = deviations(s, meta)
    pgd = base + attack_deviations(s, ["pgd"])
    ifg = base + attack_deviations(s, ["ifgsm"])
    cells.add(row, "% Err at eps=0", clean_error(df), reasons=base, dataset=tag)
    cells.add(row, "2-norm median distance", S.median_distance(dist(df, "pgd", "l2")), unit="distance",
              reasons=pgd, dataset=tag)
    cells.add(row, "2-norm median time", median_calls(df, "pgd"), unit="ratio", dataset=tag,
              reasons=pgd + ["model calls of PGD at the largest search radius until first success"])
    cells.add(row, "2-norm % Err at eps=0.1", S.error_at(dist(df, "pgd", "l2"), 0.1), reasons=pgd, dataset=tag)
    cells.add(row, "inf-norm median distance", S.median_distance(dist(df, "ifgsm", "linf")), unit="distance",
              reasons=ifg, dataset=tag)
    cells.add(row, "inf-norm % Err at eps=8/255", S.error_at(dist(df, "ifgsm", "linf"), 8 / 255), reasons=ifg,
              dataset=tag)
    for how in ("max", "mean"):
        for which, name in (("loss", "||grad l||_2"), ("model", "||grad f||_2,inf")):
            unit = "lipschitz" if how == "max" else "other"
            cells.add(row, f"{how} {name}", grad_stat(df, which, how), unit=unit, reasons=base, dataset=tag)
    every = base + attack_deviations(s, FOUR)
    for norm, name, eps, label in (("l2", "2-norm", 0.1, "eps=0.1"), ("linf", "inf-norm", 8 / 255, "eps=8/255")):
        w = dist(df, "worst", norm)
        cells.add(row, f"{name} median distance (worst case over the four attacks)", S.median_distance(w),
                  unit="distance", beyond=True, reasons=every, dataset=tag)
        cells.add(row, f"{name} % Err at {label} (worst case over the four attacks)", S.error_at(w, eps),
                  beyond=True, reasons=every, dataset=tag)
    for a in FOUR:
        cells.add(row, f"{ATTACK_LABELS[a]} median model calls to success", median_calls(df, a), unit="count",
                  beyond=True, reasons=_budget(s, a), dataset=tag)


def _table23(target: str, jobs: dict, cells: Cells) -> None:
    ds = "cifar10" if target == "table2" else "cifar100"
    for d, (r2, r3, _c1) in DEFENCES.items():
        job = f"{ds}_{d}"
        if job in jobs:
            _stat_rows(r2 if ds == "cifar10" else r3, *jobs[job], cells)


def _table1(jobs: dict, cells: Cells) -> None:
    und_df, und_js = jobs["cifar10_undefended"]
    columns = [(f"cifar10_{d}", v[2]) for d, v in DEFENCES.items() if v[2]] + [(MADRY, "Madry")]
    for job, column in columns:
        df, js = jobs[job]
        s, meta = js["settings"], js["meta"]
        tag, base = dataset_tag(meta), deviations(s, meta)
        if job == MADRY:
            cells.missing("test error (undefended model)", column,
                          "the naturally trained model behind Madry et al.'s quoted number is not trained here")
        else:
            cells.add("test error (undefended model)", column, clean_error(und_df), dataset=dataset_tag(und_js["meta"]),
                      reasons=deviations(und_js["settings"], und_js["meta"]))
        cells.add("test error (defended model)", column, clean_error(df), reasons=base, dataset=tag)
        cells.add("l2 PGD (||eps||_2 = 100/255)", column, S.error_at(dist(df, "pgd", "l2"), 100 / 255), dataset=tag,
                  reasons=base + attack_deviations(s, ["pgd"]))
        cells.add("CW (||eps||_2 = 1.5)", column, S.error_at(dist(df, "cw", "l2"), 1.5), dataset=tag,
                  reasons=base + attack_deviations(s, ["cw"]), beyond=job == MADRY)
        cells.add("I-FGSM (||eps||_inf = 8/255)", column, S.error_at(dist(df, "ifgsm", "linf"), 8 / 255),
                  dataset=tag, reasons=base + attack_deviations(s, ["ifgsm"]))
    for row in ("test error (undefended model)", "test error (defended model)", "CW (||eps||_2 = 1.5)"):
        cells.missing(row, "Qian", "quoted from Qian and Wegman, not reproduced")


def _ratio(a: float, b: float) -> float:
    """a / b, NaN (a "not run" cell with its reason) where b is 0 or either is not finite."""
    return a / b if math.isfinite(a) and math.isfinite(b) and b != 0 else float("nan")


def _table5(jobs: dict, cells: Cells) -> None:
    """Predicted (ratios of model Total Variation and Lipschitz constant, undefended / regularised) and actual
    (ratio of median PGD distance, regularised / undefended) improvement (L509, L519); no printed numbers."""
    for ds, column in (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100")):
        u_df, u_js = jobs[f"{ds}_undefended"]
        r_df, r_js = jobs[f"{ds}_tv001_lip01"]
        why = deviations(u_js["settings"], u_js["meta"]) + deviations(r_js["settings"], r_js["meta"])
        why += attack_deviations(r_js["settings"], ["pgd"])
        tag = dataset_tag(r_js["meta"])
        note = "regularised: l2 TV (eps=0.01) + Lipschitz (lambda=0.1)"
        cells.add("predicted improvement (ratio of model Total Variation)", column,
                  _ratio(grad_stat(u_df, "model", "mean"), grad_stat(r_df, "model", "mean")), unit="ratio", reasons=why,
                  dataset=tag, note=note)
        cells.add("predicted improvement (ratio of model Lipschitz constant)", column,
                  _ratio(grad_stat(u_df, "model", "max"), grad_stat(r_df, "model", "max")), unit="ratio", reasons=why,
                  dataset=tag, note=note)
        cells.add("predicted improvement (ratio of loss Total Variation)", column,
                  _ratio(grad_stat(u_df, "loss", "mean"), grad_stat(r_df, "loss", "mean")), unit="ratio", reasons=why,
                  dataset=tag, note=note, beyond=True)
        cells.add("actual improvement (ratio of median adversarial distance)", column,
                  _ratio(S.median_distance(dist(r_df, "pgd", "l2")), S.median_distance(dist(u_df, "pgd", "l2"))),
                  unit="ratio", reasons=why, dataset=tag, note=note)


def detection_summary(df, settings: dict) -> dict:
    """Threshold c (percentile of ||grad f||_{2,inf} over the clean, correctly classified images), the clean
    false-positive rate, and per attack the detection rate and median L2 distance over the correctly classified
    images it broke (Table 6)."""
    from .detection import detection_rate, detection_threshold

    clean = df["clean_correct"].to_numpy(bool)
    g = df["grad_f_2inf"].to_numpy(float)
    c = detection_threshold(g, clean, percentile=number(settings["detection"]["percentile"]))
    out = {"c": c, "clean": 100.0 * detection_rate(g[clean], c), "attacks": {}}
    for a in settings["attacks"]:
        ga = df[f"grad_f_2inf:{a}"].to_numpy(float)
        hit = np.isfinite(ga)
        d = dist(df, a, "l2")[hit]
        out["attacks"][a] = {"rate": 100.0 * detection_rate(ga[hit], c) if hit.any() else float("nan"),
                             "median_l2": float(np.median(d)) if hit.any() else float("nan"),
                             "n": int(hit.sum())}
    return out


def _table6(jobs: dict, cells: Cells) -> None:
    df, js = jobs[DETECTION_JOB]
    s, meta = js["settings"], js["meta"]
    tag, base = dataset_tag(meta), deviations(s, meta)
    det = s["detection"]
    if not same_setting(det["percentile"], PAPER_DETECTION["percentile"]):
        base = base + [f"percentile {det['percentile']} (paper: 95, a 5% false-positive rate)"]
    if not df["clean_correct"].astype(bool).any():  # c is a percentile over these images: undefined without any
        why = "no test image is classified correctly: the threshold c (and every detection rate) is undefined"
        cells.missing("rejection threshold c", "clean", why, unit="other")
        for a in ("clean", "pgd", "boundary", "cw", "evasive_cw"):
            col = "clean" if a == "clean" else ATTACK_LABELS[a]
            cells.missing("attack detected?", col, why)
            if a != "clean":
                cells.missing("median l2", col, why, unit="distance")
        return
    r = detection_summary(df, s)
    cells.add("rejection threshold c", "clean", r["c"], unit="other", reasons=base, dataset=tag)
    cells.add("attack detected?", "clean", r["clean"], reasons=base, dataset=tag,
              note="false-positive rate on the correctly classified clean images")
    for a in ("pgd", "boundary", "cw", "evasive_cw"):
        if a not in r["attacks"]:
            cells.missing("attack detected?", ATTACK_LABELS[a], f"{a} not run for {DETECTION_JOB}")
            continue
        v = r["attacks"][a]
        why = base + attack_deviations(s, [a]) + _budget(s, a)
        note = f"over the {v['n']} correctly classified images it broke"
        cells.add("attack detected?", ATTACK_LABELS[a], v["rate"], reasons=why, dataset=tag, note=note)
        cells.add("median l2", ATTACK_LABELS[a], v["median_l2"], unit="distance", reasons=why, dataset=tag, note=note)


def _grid(values: np.ndarray, points: int) -> np.ndarray:
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size else 1.0
    return np.linspace(0.0, top * 1.05 if top > 0 else 1.0, int(points))


def _curve_rows(row: str, d: np.ndarray, grid, cells: Cells, tag: str, reasons, norm: str) -> None:
    for e, v in zip(grid, S.error_curve(d, grid)):
        cells.add(row, f"error at {norm} distance {e:.4g}", float(v), unit="fraction", beyond=True, reasons=reasons,
                  dataset=tag)


def _figure2(jobs: dict, cells: Cells, points: int, curves: dict) -> None:
    grid = _grid(np.concatenate([dist(jobs[j][0], "pgd", "l2") for j in FIGURE2_JOBS]), points)
    for job in FIGURE2_JOBS:
        df, js = jobs[job]
        s, meta = js["settings"], js["meta"]
        row = DEFENCES[s["defence"]][0]
        why = deviations(s, meta) + attack_deviations(s, ["pgd"]) + _budget(s, "pgd")
        d = dist(df, "pgd", "l2")
        curves[row] = (grid, S.error_curve(d, grid))
        _curve_rows(f"{row}: l2 PGD error curve", d, grid, cells, dataset_tag(meta), why, "l2")
        if s["defence"] == "tv01_lip01":  # L490: "at 23% error, we had an adversarial robustness distance of 0.25"
            finite = np.sort(d)
            k = int(math.ceil(0.23 * len(finite))) - 1
            v = float(finite[max(k, 0)])
            cells.add(row, "l2 adversarial distance at 23% error", v, unit="distance", reasons=why,
                      dataset=dataset_tag(meta), note="smallest l2 PGD distance at which the error curve reaches 23%")


def best_regularised(jobs: dict) -> str:
    """The CIFAR-10 penalised model with the largest median l2 PGD distance (Figure 3(b), "our best regularized
    model"; the paper does not say which)."""
    cands = [f"cifar10_{d}" for d in PENALISED if f"cifar10_{d}" in jobs]
    return max(cands, key=lambda j: (S.median_distance(dist(jobs[j][0], "pgd", "l2")), j))


def _figure3(jobs: dict, cells: Cells, points: int, curves: dict) -> None:
    best = best_regularised(jobs)
    for row, job in (("undefended model", "cifar10_undefended"), ("best regularized model", best)):
        df, js = jobs[job]
        s, meta = js["settings"], js["meta"]
        tag = dataset_tag(meta)
        note = f"{job}" + (" (largest median l2 PGD distance of the penalised CIFAR-10 models)" if job == best else "")
        for norm, name in (("l2", "l2"), ("linf", "inf")):
            grid = _grid(np.concatenate([dist(df, a, norm) for a in FOUR]), points)
            for a in FOUR:
                why = deviations(s, meta) + attack_deviations(s, [a]) + _budget(s, a)
                d = dist(df, a, norm)
                cells.add(row, f"{ATTACK_LABELS[a]} median {name} distance", S.median_distance(d), unit="distance",
                          reasons=why, dataset=tag, note=note)
                curves[(row, norm, a)] = (grid, S.error_curve(d, grid))
                _curve_rows(f"{row}: {ATTACK_LABELS[a]} error curve", d, grid, cells, tag, why, norm)


FIGURE4_ROWS = {"Clean": None, "PGD attacked": "pgd", "Boundary attacked": "boundary",
                "evasive-CW attacked": "evasive_cw"}


def _figure4(jobs: dict, cells: Cells, bins: int, hists: dict) -> None:
    df, js = jobs[DETECTION_JOB]
    s, meta = js["settings"], js["meta"]
    tag, base = dataset_tag(meta), deviations(s, meta)
    values = {}
    for row, a in FIGURE4_ROWS.items():
        if a is None:
            values[row] = df["grad_f_2inf"].to_numpy(float)[df["clean_correct"].to_numpy(bool)]
        elif f"grad_f_2inf:{a}" in df:
            g = df[f"grad_f_2inf:{a}"].to_numpy(float)
            values[row] = g[np.isfinite(g)]
    allv = np.concatenate([v for v in values.values() if v.size]) if values else np.zeros(0)
    edges = np.linspace(0.0, float(allv.max()) if allv.size and allv.max() > 0 else 1.0, int(bins) + 1)
    for row, a in FIGURE4_ROWS.items():
        v = values.get(row)
        why = base + (attack_deviations(s, [a]) + _budget(s, a) if a else [])
        if v is None:
            cells.missing(row, "median ||grad f(x)||_2,inf", f"{a} not run for {DETECTION_JOB}", unit="other")
            continue
        cells.add(row, "median ||grad f(x)||_2,inf", float(np.median(v)) if v.size else float("nan"), unit="other",
                  reasons=why, dataset=tag)
        counts, _ = np.histogram(v, bins=edges)
        hists[row] = (edges, counts)
        for lo, hi, n in zip(edges[:-1], edges[1:], counts):
            cells.add(f"{row}: histogram", f"images with ||grad f||_2,inf in [{lo:.4g}, {hi:.4g})", float(n),
                      unit="count", beyond=True, reasons=why, dataset=tag)


def run_table(target: str, out_csv, *, job_files: dict, scale: str, seed: int, out_png=None,
              settings: dict | None = None) -> list[dict]:
    """Assemble ``target`` (one of :data:`TARGETS`) from its jobs' files ``{job: (per_sample.csv, summary.json)}``:
    the long-format CSV and its provenance sidecar (and, for a figure, the plot).  ``settings``: config
    ``lipreg.figures`` (curve points, histogram bins)."""
    from .. import provenance

    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}")
    missing = [j for j in TABLE_JOBS[target] if j not in job_files]
    if missing:
        raise ValueError(f"{target} needs the jobs {missing}")
    fig = dict(settings or {})
    jobs = {j: load_job(*job_files[j]) for j in TABLE_JOBS[target]}
    cells = Cells(nonfinite_reason="no finite value (too few images broken within the search radius, or a ratio "
                                   "over 0)")
    plotted: dict = {}
    if target in ("table2", "table3"):
        _table23(target, jobs, cells)
    elif target == "table1":
        _table1(jobs, cells)
    elif target == "table5":
        _table5(jobs, cells)
    elif target == "table6":
        _table6(jobs, cells)
    elif target == "figure2":
        _figure2(jobs, cells, int(fig.get("curve_points", 41)), plotted)
    elif target == "figure3":
        _figure3(jobs, cells, int(fig.get("curve_points", 41)), plotted)
    else:
        _figure4(jobs, cells, int(fig.get("histogram_bins", 30)), plotted)
    cells.add_timings(jobs)
    prov = provenance.record(
        paper="lipreg", target=target, scale=scale, seed=seed, datasets=job_datasets(jobs),
        settings={j: js["settings"] for j, (_df, js) in jobs.items()},
        extra={"our_choices_not_in_paper": [
            "training recipe (tulip's), FGSM-AT eps (tulip's AT ball)",
            "minimal-distance searches: PGD/I-FGSM radius, steps and bisection; CW/Boundary closest point visited",
            "median time = model calls until first success; Figure 3(b)'s model = largest median PGD distance"],
            "median_distance": "over all test images, misclassified ones at 0 (L478, L167)"})
    provenance.write_result(cells.rows, out_csv, prov)
    if target in FIGURES and out_png is not None:
        plot(target, plotted, out_png)
    return cells.rows


def plot(target: str, plotted: dict, out_png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    if target == "figure2":
        fig, ax = plt.subplots(figsize=(5, 3.8))
        for row, (grid, err) in plotted.items():
            ax.plot(grid, err, label=row)
        ax.set(xlabel="l2 adversarial distance", ylabel="fraction of successful attacks", title="Figure 2: l2 PGD")
        ax.legend(fontsize=7)
    elif target == "figure3":
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
        for ax, row in zip(axes[0], ("undefended model", "best regularized model")):
            for (r, norm, a), (grid, err) in plotted.items():
                if r == row and norm == "l2":
                    ax.plot(grid, err, label=ATTACK_LABELS[a])
            ax.set(xlabel="l2 adversarial distance", ylabel="fraction of successful attacks", title=row)
            ax.legend(fontsize=7)
    else:
        fig, axes = plt.subplots(1, max(1, len(plotted)), figsize=(3.2 * max(1, len(plotted)), 3), squeeze=False)
        for ax, (row, (edges, counts)) in zip(axes[0], plotted.items()):
            ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge")
            ax.set(title=row, xlabel="||grad f(x)||_2,inf")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
