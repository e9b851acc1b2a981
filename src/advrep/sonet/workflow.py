"""sonet Tables 1-4 (and what the slides make checkable beyond them) as jobs of the workflow.

What the slides state (line numbers of ``shared/papers/002_2e73039d38e64e01.txt``):

* models (L176-182): ResNet10; SONet = every residual basic block of ResNet10 replaced by the skew-symmetric ODE
  block (3); SOBlock = only the first convolution replaced by it; ODENet = Chen et al.'s original architecture;
  capacity scaled "by changing the input channel from 32 to 64" (the ``width`` of :mod:`advrep.models.ode` /
  ``resnet10``);
* attacks (L186-196): L-inf PGD eps 0.031 step 0.003; L2 PGD eps 0.5 step 0.1; L-inf CW eps 0.031, K = 100;
  SPSA eps 0.031, K = 20, 32 samples; PGD-20 and PGD-1000 (Table 1); robust accuracy A_rob and natural A_nat;
* training (L200, L213-214): TRADES with 1/lambda = 1.0 and 6.0 for ResNet10 (natural training for the ODE models);
  350 epochs, batch 100, SGD momentum 0.9, lr 0.01 decayed x0.1 at epochs 150 and 300, no weight decay;
* solvers (L203-211): "we set all error tolerance as 0.1"; Euler and RK4 with fixed step h = 1; adaptive Heun,
  Bosh3, Dopri5 (Table 3 also at tol 0.01 and 0.001);
* Table 4 (L286-300): the adaptive steps of ODENet with Dopri5 after 1, 100 and 1000 PGD_inf iterations.

Everything else is ours and sits in config ``sonet`` with a comment saying so (augmentation, the TRADES inner attack,
random starts, Table 3's channel, which ODE block Table 4 reads, the test subset at smaller scales).

Work is split as in the workflow: :func:`run_job` trains one model through the training engine (resumable epoch
checkpoints) and writes its per-sample evaluation table (the toolkit's :func:`~advrep.evaluate.evaluate_per_sample`,
one pass per threat model, merged) and a JSON summary (NFE, masking checks, Table 4's grids); :func:`run_table`
assembles one target from the job files.  A cell is comparable with the paper only when its job ran on the paper's
data with the paper's stated settings (:func:`deviations`); otherwise its reason lists every difference.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..config import number
from ..results import Cells, dataset_tag, dotted_get, job_datasets, load_job, same_setting, show_setting

# --- the paper's line-up ---------------------------------------------------------------------------------------

CHANNELS = {"c32": 32, "c64": 64}  # the paper's "Channel" column -> the published width
# Tables 1-2 architecture key -> (zoo model, Table 1 label, Table 2 label, TRADES beta = 1/lambda or None)
ARCHS = {
    "sonet": ("sonet", "SONet", "SONet", None),
    "soblock": ("soblock", "SOBlock", "SOBlock", None),
    "trades1": ("resnet10", "ResNet10-TRADES (1/lambda=1.0)", "ResNet10-TRADES (1/lambda=1)", 1.0),
    "trades6": ("resnet10", "ResNet10-TRADES (1/lambda=6.0)", "ResNet10-TRADES (1/lambda=6)", 6.0),
}
ODE_MODELS = ("sonet", "soblock", "odenet")
# Table 3: (solver, tol, row label); SOBlock has all eleven rows, ODENet the first five
SOLVER_ROWS = [("euler", None, "Euler"), ("rk4", None, "RK4 (3/8 rule)"),
               *[("dopri5", t, f"Dopri5(tol={t:g})") for t in (0.1, 0.01, 0.001)],
               *[("bosh3", t, f"Bosh3(tol={t:g})") for t in (0.1, 0.01, 0.001)],
               *[("adaptive_heun", t, f"Adaptive Heun(tol={t:g})") for t in (0.1, 0.01, 0.001)]]
TABLE3_MODELS = {"soblock": ("SOBlock", SOLVER_ROWS), "odenet": ("ODENet", SOLVER_ROWS[:5])}
TABLE4_TOLS = (0.1, 0.01, 0.001)
TABLE4_ITERATIONS = (1, 100, 1000)  # the rows' labels; the config may run fewer at small scales (reason says so)
TABLE4_POSITIONS = 5  # the longest printed list of adaptive steps
TARGETS = ("table1", "table2", "table3", "table4", "masking")


def solver_key(solver: str, tol) -> str:
    return solver if tol is None else f"{solver}_tol{tol:g}"


def _jobs() -> dict[str, dict]:
    jobs = {}
    for arch, (model, *_labels, beta) in ARCHS.items():
        for ch in CHANNELS:
            jobs[f"{arch}_{ch}"] = {"table": "t12", "arch": arch, "model": model, "channel": ch, "beta": beta}
    for model, (_label, rows) in TABLE3_MODELS.items():
        for solver, tol, _ in rows:
            jobs[f"t3_{model}_{solver_key(solver, tol)}"] = {"table": "t3", "arch": model, "model": model,
                                                            "solver": solver, "tol": tol, "beta": None}
    return jobs


JOBS = _jobs()
TABLE_JOBS = {
    "table1": [j for j, s in JOBS.items() if s["table"] == "t12"],
    "table2": [j for j, s in JOBS.items() if s["table"] == "t12"],
    "table3": [j for j, s in JOBS.items() if s["table"] == "t3"],
    "table4": [f"t3_odenet_{solver_key('dopri5', t)}" for t in TABLE4_TOLS],
    "masking": list(JOBS),
}

# --- the paper's stated settings (anything else is not comparable) -------------------------------------------------
PAPER_DATA = "cifar10"
PAPER_TRAINING = {"epochs": 350, "batch_size": 100, "optimizer.name": "sgd", "optimizer.lr": 0.01,
                  "optimizer.momentum": 0.9, "optimizer.weight_decay": 0.0, "schedule.name": "multistep",
                  "schedule.milestones": [150, 300], "schedule.gamma": 0.1}
PAPER_SOLVER = {"solver": "dopri5", "tol": 0.1}  # Tables 1-2's ODE models ("all error tolerance as 0.1", L203)
PAPER_ATTACKS = {"linf.eps": 0.031, "linf.alpha": 0.003, "l2.eps": 0.5, "l2.alpha": 0.1, "pgd20_steps": 20,
                 "pgd1000_steps": 1000, "cw_linf.steps": 100, "spsa.nb_iter": 20, "spsa.nb_sample": 32}
PAPER_TABLE4 = {"iterations": list(TABLE4_ITERATIONS)}


# --- settings ------------------------------------------------------------------------------------------------------

def job_settings(sonet_config: dict, job: str) -> dict:
    """Everything one job needs, from config ``sonet`` (resolved for the scale): data, model, training, attacks."""
    if job not in JOBS:
        raise ValueError(f"unknown sonet job {job!r}; known: {', '.join(JOBS)}")
    spec = JOBS[job]
    m = sonet_config["models"]
    channel = spec.get("channel", m["table3_channel"])
    width = m["widths"][channel]
    model_kw = dict((m.get("model_kw") or {}).get(spec["model"]) or {})
    if spec["model"] in ODE_MODELS:
        solver = spec.get("solver", m["solver"])
        tol = spec["tol"] if spec["table"] == "t3" else m["tol"]
        model_kw.update(solver=solver, adjoint=bool(m["adjoint"]))
        if tol is not None:  # fixed-step solvers (h = 1, the slides) take no tolerance
            model_kw["tol"] = number(tol)
        if spec["model"] != "odenet":  # Chen et al.'s field has no damping
            model_kw["gamma"] = number(m["gamma"])
    tr = sonet_config["training"]
    training = {k: tr[k] for k in ("epochs", "batch_size", "optimizer", "schedule", "augment") if k in tr}
    if spec["beta"] is None:
        training["objective"] = "ce"
    else:
        t = tr["trades"]
        training["objective"] = {"name": "trades", "eps": t["eps"], "alpha": t["alpha"], "steps": t["steps"],
                                 "beta": spec["beta"]}
    out = {"job": job, **spec, "channel": channel, "width": width, "model_kw": model_kw,
           "normalization": m.get("normalization"), "data": dict(sonet_config["data"]), "training": training,
           "attacks": dict(sonet_config["attacks"]), "extras": dict(sonet_config["extras"])}
    if job in TABLE_JOBS["table4"]:
        out["table4"] = dict(sonet_config["table4"])
    return out


def data_deviations(settings: dict, meta: dict) -> list[str]:
    out = []
    if meta.get("standin_for"):
        out.append(f"stand-in data: {meta.get('name')} in place of CIFAR-10")
    elif meta.get("name") != PAPER_DATA:
        out.append(f"dataset {meta.get('name')} (paper: {PAPER_DATA})")
    d = settings["data"]
    if d.get("max_train") is not None:
        out.append(f"{d['max_train']} training images (paper: all)")
    if d.get("max_test") is not None:
        out.append(f"a seeded subset of {d['max_test']} test images (paper: all)")
    return out


def model_deviations(settings: dict) -> list[str]:
    out = []
    published = CHANNELS[settings["channel"]]
    if settings["width"] != published:
        out.append(f"width {settings['width']} (paper: channel {published})")
    if settings["table"] == "t12" and settings["model"] in ODE_MODELS:
        for k, v in PAPER_SOLVER.items():
            if not same_setting(settings["model_kw"].get(k), v):
                out.append(f"{k}={settings['model_kw'].get(k)} (paper: {v})")
    extra = {k: v for k, v in settings["model_kw"].items() if k not in ("solver", "tol", "adjoint", "gamma")}
    if extra:
        out.append(f"model options {extra} (paper: the authors' architecture)")
    for k, v in PAPER_TRAINING.items():
        got = dotted_get(settings["training"], k)
        if not same_setting(got, v):
            out.append(f"training {k}={show_setting(got)} (paper: {show_setting(v)})")
    return out


def attack_deviations(settings: dict, keys) -> list[str]:
    a = settings["attacks"]
    return [f"{k}={show_setting(dotted_get(a, k))} (paper: {show_setting(PAPER_ATTACKS[k])})" for k in keys
            if not same_setting(dotted_get(a, k), PAPER_ATTACKS[k])]


def deviations(settings: dict, meta: dict, attack_keys=()) -> list[str]:
    """Why a job's cells are not the paper's (empty: comparable): data, model and training, and the settings of
    the attacks the cell reads (``attack_keys``: keys of :data:`PAPER_ATTACKS`)."""
    return data_deviations(settings, meta) + model_deviations(settings) + attack_deviations(settings, attack_keys)


# --- one job: train and evaluate one model -----------------------------------------------------------------------

def build_model(settings: dict, in_shape, num_classes: int, seed: int):
    from ..models import create_model

    return create_model(settings["model"], in_shape=tuple(in_shape), num_classes=num_classes,
                        width=settings["width"], normalization=settings.get("normalization"), seed=seed,
                        **settings["model_kw"])


def is_ode(settings: dict) -> bool:
    return settings["model"] in ODE_MODELS


def attack_plan(settings: dict, model) -> dict[str, tuple[float, list[tuple[str, str, dict]]]]:
    """Threat model -> (eps, [(label, attack, params)]) for :func:`advrep.evaluate.evaluate_per_sample`."""
    a, ex = settings["attacks"], settings["extras"]
    start = bool(a.get("random_start", True))
    linf_alpha, l2_alpha = number(a["linf"]["alpha"]), number(a["l2"]["alpha"])
    pgd = {"pgd20": int(a["pgd20_steps"]), "pgd1000": int(a["pgd1000_steps"])}
    linf = [(k, "pgd", {"steps": s, "alpha": linf_alpha, "random_start": start}) for k, s in pgd.items()]
    plan = {"linf": (number(a["linf"]["eps"]), linf)}
    if settings["table"] == "t12":
        cw = a["cw_linf"]
        linf.append(("cw_linf", "cw_linf", {"steps": int(cw["steps"]), "alpha": number(cw["alpha"]),
                                            "random_start": start}))
        sp = a["spsa"]
        linf.append(("spsa", "spsa", {"nb_iter": int(sp["nb_iter"]), "nb_sample": int(sp["nb_sample"]),
                                      "delta": number(sp["delta"]), "lr": number(sp["lr"]),
                                      "max_batch_size": int(sp.get("max_batch_size", 64))}))
        plan["l2"] = (number(a["l2"]["eps"]), [(f"{k}_l2", "pgd", {"steps": s, "alpha": l2_alpha,
                                                                   "random_start": start})
                                               for k, s in pgd.items()])
    bp = ex["bpda"]
    if bp.get("enabled", True) and is_ode(settings):
        from ..models.ode import with_solver

        grad_model = with_solver(model, solver=bp["solver"], step_size=number(bp["step_size"]))
        linf.append(("bpda_pgd20", "bpda_pgd", {"steps": int(bp["steps"]), "alpha": linf_alpha,
                                                "random_start": start, "gradient_model": grad_model}))
    aa = ex["autoattack"]
    if aa.get("enabled", True):
        linf.append(("autoattack", "autoattack", {"version": aa.get("version", "standard"),
                                                  "paper": bool(aa.get("paper", True)), "steps": aa.get("steps"),
                                                  "square_queries": aa.get("square_queries")}))
    return plan


def evaluate(model, x, y, plan: dict, batch_size: int):
    """One per-sample table for every threat model of ``plan``: the base columns once, each attack's
    ``success:``/``calls:`` columns, and ``worst_success:<norm>`` (the per-sample OR over that norm's attacks)."""
    import pandas as pd

    from ..evaluate import evaluate_per_sample

    merged = None
    for norm, (eps, attacks) in plan.items():
        df = evaluate_per_sample(model, (x, y), attacks=attacks, eps=eps, norm=norm, gradient_norms=False,
                                 batch_size=batch_size)
        keep = [c for c in df.columns if c.startswith(("success:", "calls:"))]
        part = df[keep].copy()
        part[f"worst_success:{norm}"] = df["worst_success"].to_numpy()
        merged = (df[["index", "label", "clean_pred", "clean_correct"]].join(part) if merged is None
                  else merged.join(part))
    return pd.DataFrame(merged)


def nfe_per_forward(model, x) -> float | None:
    """Function evaluations of all ODE blocks in one forward of the batch ``x`` (None for a model without any)."""
    import torch

    from ..attacks import eval_mode
    from ..models import ode

    if not ode.ode_blocks(model):
        return None
    ode.reset_nfe(model)
    with eval_mode(model), torch.no_grad():
        model(x)
    return float(ode.nfe(model))


def table4_grids(model, x, y, settings: dict, seed: int) -> dict[str, list]:
    """Per-image accepted time grids of ODE block ``table4.block`` after k L-inf PGD iterations (k in
    ``table4.iterations``): one PGD run of max(k) plain projected-ascent steps on the CE loss (no early stop: the
    image after exactly k iterations), snapshots at every k, then each snapshot forwarded one image at a time."""
    import torch
    from torch.nn import functional as F

    from ..attacks import eval_mode, maximize
    from ..models import ode

    t4, a = settings["table4"], settings["attacks"]
    iterations = sorted(int(k) for k in t4["iterations"])
    block = int(t4.get("block", 0))
    n = len(y) if t4.get("max_images") is None else min(len(y), int(t4["max_images"]))
    x, y = x[:n], y[:n]
    snaps: dict[int, torch.Tensor] = {}

    def keep(step, x_adv):
        if step + 1 in iterations:
            snaps[step + 1] = x_adv.detach().clone()

    g = torch.Generator(device=x.device).manual_seed(int(seed))
    with eval_mode(model), torch.enable_grad():
        maximize(lambda z: F.cross_entropy(model(z), y, reduction="none"), x, eps=number(a["linf"]["eps"]),
                 alpha=number(a["linf"]["alpha"]), steps=max(iterations), norm="linf",
                 init="random" if a.get("random_start", True) else None, generator=g, on_step=keep)
    out = {}
    with eval_mode(model), torch.no_grad():
        for k in iterations:
            grids = []
            for i in range(n):
                with ode.record_grids(model) as rec:
                    model(snaps[k][i:i + 1])
                grids.append([float(t) for t in rec.grids[0][block]])
            out[str(k)] = grids
    return out


def masking(model, x, y, settings: dict, seed: int) -> list[dict]:
    from ..evaluate import gradient_masking_checks, masking_rows

    m, a = settings["extras"]["masking"], settings["attacks"]
    checks = gradient_masking_checks(model, (x, y), eps=number(a["linf"]["eps"]), norm="linf",
                                     steps=tuple(int(s) for s in m["steps"]),
                                     square_queries=int(m["square_queries"]), seed=seed,
                                     batch_size=int(a.get("batch_size", 500)))
    return masking_rows(checks)


def checkpoint_key(settings: dict, seed: int) -> str:
    """A hash of everything that decides the trained weights (a changed setting trains afresh, never resumes)."""
    from ..provenance import settings_hash

    keys = ("model", "width", "normalization", "model_kw", "training")
    return settings_hash({**{k: settings.get(k) for k in keys}, "data": {k: settings["data"].get(k) for k in
                                                                          ("dataset", "max_train")}, "seed": seed})


def run_job(data_file, out_csv, out_json, *, settings: dict, seed: int, workdir, threads: int = 1) -> dict:
    """Train one model (natural or TRADES, checkpoints under ``workdir``, resumed if present) and evaluate it;
    write the per-sample table (``out_csv``) and the job summary (``out_json``), both atomically."""
    import torch

    from .. import data as advdata
    from .. import io
    from ..evaluate import write_per_sample
    from ..train import build_training, resolve_device
    from ..voronoi.figures45 import images, subset

    torch.set_num_threads(max(1, int(threads)))
    p = advdata.load(data_file)
    d = settings["data"]
    tr = subset(len(p.y_train), d.get("max_train"), seed)
    te = subset(len(p.y_test), d.get("max_test"), seed + 1)
    x_tr, y_tr = images(p.x_train[tr]), torch.from_numpy(p.y_train[tr].astype(np.int64))
    x_te, y_te = images(p.x_test[te]), torch.from_numpy(p.y_test[te].astype(np.int64))
    num_classes = int(p.meta.get("n_classes", 10))

    training = build_training({**settings["training"], "seed": seed, "progress": False})
    model = build_model(settings, x_tr.shape[1:], num_classes, training.seed)
    loader = training.loader(torch.utils.data.TensorDataset(x_tr, y_tr))
    t0 = time.perf_counter()
    result = training.fit(model, loader, checkpoint_dir=Path(workdir) / checkpoint_key(settings, seed))
    seconds_train = time.perf_counter() - t0
    dev = resolve_device(training.device)
    model = result.eval_model.to(dev).eval()
    x_te, y_te = x_te.to(dev), y_te.to(dev)

    t0 = time.perf_counter()
    bs = int(settings["attacks"].get("batch_size", 500))
    df = evaluate(model, x_te, y_te, attack_plan(settings, model), bs)
    summary = {"job": settings["job"], "settings": settings, "meta": p.meta, "history": result.history,
               "seconds_train": seconds_train, "nfe_per_forward": nfe_per_forward(model, x_te[:bs]),
               "test_indices": te.tolist()}
    if settings["extras"]["masking"].get("enabled", True):
        summary["masking"] = masking(model, x_te, y_te, settings, seed)
    if "table4" in settings:
        summary["grids"] = table4_grids(model, x_te, y_te, settings, seed)
    summary["seconds_eval"] = time.perf_counter() - t0
    write_per_sample(df, out_csv)
    io.write_json(out_json, summary)
    return summary


# --- the tables ----------------------------------------------------------------------------------------------------

def _acc(df, attack: str | None = None, norm: str | None = None) -> float:
    """Percent: clean accuracy (no attack), robust accuracy under ``attack``, or the worst case over ``norm``."""
    from ..evaluate.per_sample import clean_accuracy, robust_accuracy

    if norm is not None:
        return 100.0 * float((df["clean_correct"].astype(bool) & ~df[f"worst_success:{norm}"].astype(bool)).mean())
    return 100.0 * (clean_accuracy(df) if attack is None else robust_accuracy(df, attack))


def _t12_rows(table: str, jobs: dict, cells: Cells) -> None:
    for arch, (_m, label1, label2, _b) in ARCHS.items():
        for ch in CHANNELS:
            df, js = jobs[f"{arch}_{ch}"]
            s, meta = js["settings"], js["meta"]
            tag = dataset_tag(meta)
            base = deviations(s, meta)
            channel = f"Channel {CHANNELS[ch]}"
            if table == "table2":
                row = f"{label2} / {channel}"
                cells.add(row, "A_nat", _acc(df), reasons=base, dataset=tag)
                cells.add(row, "A_rob CW-Linf", _acc(df, "cw_linf"), dataset=tag,
                          reasons=base + attack_deviations(s, ["linf.eps", "cw_linf.steps"]))
                cells.add(row, "A_rob SPSA", _acc(df, "spsa"), dataset=tag,
                          reasons=base + attack_deviations(s, ["linf.eps", "spsa.nb_iter", "spsa.nb_sample"]))
                continue
            for k in ("pgd20", "pgd1000"):
                row = f"{label1} / {channel} / PGD-{k[3:]}"
                steps = [f"{k}_steps"]
                cells.add(row, "A_nat", _acc(df), reasons=base, dataset=tag)
                cells.add(row, "A_rob eps=0.031 (l_inf)", _acc(df, k), dataset=tag,
                          reasons=base + attack_deviations(s, ["linf.eps", "linf.alpha", *steps]))
                cells.add(row, "A_rob eps=0.5 (l_2)", _acc(df, f"{k}_l2"), dataset=tag,
                          reasons=base + attack_deviations(s, ["l2.eps", "l2.alpha", *steps]))
            _extra_columns(f"{label1} / {channel} / PGD-20", df, js, cells, tag, norms=("linf", "l2"))


def _extra_columns(row: str, df, js: dict, cells: Cells, tag: str, norms=("linf",)) -> None:
    """Beyond the paper: the adaptive (BPDA) attack, AutoAttack, the per-sample worst case, NFE."""
    has = set(c[len("success:"):] for c in df.columns if c.startswith("success:"))
    ex = js["settings"]["extras"]
    aa = ex["autoattack"]
    cut = [f"{k}={aa[k]}" for k in ("steps", "square_queries") if aa.get(k) is not None]
    why = {"bpda_pgd20": [f"{ex['bpda']['steps']} steps, gradient through {ex['bpda']['solver']} with step "
                          f"{ex['bpda']['step_size']}"],
           "autoattack": ([f"AutoAttack {aa.get('version', 'standard')} with a cut budget ({', '.join(cut)})"]
                          if cut else [])}
    for label, column in (("bpda_pgd20", "A_rob BPDA-PGD-20, fixed-grid gradient (l_inf)"),
                          ("autoattack", "A_rob AutoAttack (l_inf)")):
        if label in has:
            cells.add(row, column, _acc(df, label), beyond=True, dataset=tag, reasons=why[label])
    names = {"linf": "l_inf", "l2": "l_2"}
    for norm in norms:
        cells.add(row, f"A_rob worst case over attacks ({names[norm]})", _acc(df, norm=norm), beyond=True,
                  dataset=tag)
    if js.get("nfe_per_forward") is not None:
        cells.add(row, "NFE per forward (clean batch)", js["nfe_per_forward"], unit="count", beyond=True,
                  dataset=tag)


def _t3_rows(jobs: dict, cells: Cells) -> None:
    for model, (label, rows) in TABLE3_MODELS.items():
        for solver, tol, solver_label in rows:
            df, js = jobs[f"t3_{model}_{solver_key(solver, tol)}"]
            s, meta = js["settings"], js["meta"]
            tag, base = dataset_tag(meta), deviations(s, meta)
            row = f"{label} / {solver_label}"
            cells.add(row, "A_nat", _acc(df), reasons=base, dataset=tag)
            for k in ("pgd20", "pgd1000"):
                cells.add(row, f"A_rob PGD-{k[3:]}", _acc(df, k), dataset=tag,
                          reasons=base + attack_deviations(s, ["linf.eps", "linf.alpha", f"{k}_steps"]))
            _extra_columns(row, df, js, cells, tag)


def _t4_rows(jobs: dict, cells: Cells) -> None:
    from .grids import grid_statistics

    for tol in TABLE4_TOLS:
        df, js = jobs[f"t3_odenet_{solver_key('dopri5', tol)}"]
        s, meta = js["settings"], js["meta"]
        tag = dataset_tag(meta)
        t4 = s["table4"]
        base = deviations(s, meta) + attack_deviations(s, ["linf.eps", "linf.alpha"])
        if t4.get("max_images") is not None:
            base.append(f"grids of {t4['max_images']} test images")
        ran = sorted(int(k) for k in t4["iterations"])
        for printed, k in zip(TABLE4_ITERATIONS, ran):
            row = f"Dopri5(tol={tol:g}) / PGD iterations {printed}"
            reasons = base + ([f"{k} PGD iterations (paper: {printed})"] if k != printed else [])
            st = grid_statistics(js["grids"][str(k)], decimals=int(t4.get("decimals", 3)))
            for i, v in enumerate(st["median"]):
                cells.add(row, f"adaptive step {i + 1}", v, unit="other", reasons=reasons, dataset=tag,
                          note=f"per-position median over the {round(st['modal_length_frequency'] * st['n'])} of "
                               f"{st['n']} images whose grid has the most frequent length {st['modal_length']}")
            for i in range(len(st["median"]), TABLE4_POSITIONS):  # the printed lists have up to 5 points
                cells.add(row, f"adaptive step {i + 1}", None, unit="other", dataset=tag,
                          reasons=reasons + [f"the most frequent grid here has {st['modal_length']} time points"])
            cells.add(row, "grid length (most frequent)", st["modal_length"], unit="count", beyond=True,
                      dataset=tag)
            cells.add(row, "images with that length", st["modal_length_frequency"], unit="fraction", beyond=True,
                      dataset=tag)
            cells.add(row, "most frequent grid (3 decimals): frequency", st["mode_frequency"], unit="fraction",
                      beyond=True, dataset=tag, note=f"most frequent grid {st['mode']}")


def _masking_rows(jobs: dict, cells: Cells) -> None:
    for job, (_df, js) in jobs.items():
        for r in js.get("masking") or []:
            cells.rows.append({**r, "row": f"{job}: {r['row']}", "dataset": dataset_tag(js["meta"])})


def run_table(target: str, out_csv, *, job_files: dict, scale: str, seed: int, out_png=None) -> list[dict]:
    """Assemble ``target`` (one of :data:`TARGETS`) from its jobs' files ``{job: (per_sample.csv, summary.json)}``:
    the long-format CSV and its provenance sidecar (and, for table4, a plot of the grids)."""
    from .. import provenance

    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}")
    missing = [j for j in TABLE_JOBS[target] if j not in job_files]
    if missing:
        raise ValueError(f"{target} needs the jobs {missing}")
    jobs = {j: load_job(*job_files[j]) for j in TABLE_JOBS[target]}
    cells = Cells()
    if target in ("table1", "table2"):
        _t12_rows(target, jobs, cells)
    elif target == "table3":
        _t3_rows(jobs, cells)
    elif target == "table4":
        _t4_rows(jobs, cells)
    else:
        _masking_rows(jobs, cells)
    cells.add_timings(jobs)
    prov = provenance.record(
        paper="sonet", target=target, scale=scale, seed=seed, datasets=job_datasets(jobs),
        settings={j: js["settings"] for j, (_df, js) in jobs.items()},
        extra={"our_choices_not_in_paper": [
            "augmentation, the TRADES inner attack, PGD random starts, CW-Linf step size",
            "Table 3: the channel; Table 4: which ODE block's grid, the summary of per-image grids",
            "SONet/SOBlock/ODENet layout details from the authors' code (advrep.models.ode)"],
            "robust_accuracy": "per sample from the toolkit's evaluation table; clean-misclassified images count "
                               "as broken"})
    provenance.write_result(cells.rows, out_csv, prov)
    if target == "table4" and out_png is not None:
        plot_grids(jobs, out_png)
    return cells.rows


def plot_grids(jobs: dict, out_png) -> None:
    """Table 4 as a picture: every image's accepted time points per tolerance and PGD iteration count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    fig, axes = plt.subplots(1, len(TABLE4_TOLS), figsize=(4.5 * len(TABLE4_TOLS), 3.5), squeeze=False)
    for ax, tol in zip(axes[0], TABLE4_TOLS):
        _df, js = jobs[f"t3_odenet_{solver_key('dopri5', tol)}"]
        ks = sorted(js["grids"], key=int)
        for j, k in enumerate(ks):
            pts = [t for g in js["grids"][k] for t in g]
            ax.scatter(pts, np.full(len(pts), j) + np.random.default_rng(j).uniform(-0.15, 0.15, len(pts)), s=6,
                       alpha=0.4)
        ax.set(title=f"ODENet, Dopri5(tol={tol:g})", xlabel="accepted time points t in [0, 1]",
               yticks=range(len(ks)), yticklabels=[f"PGD {k}" for k in ks], xlim=(-0.05, 1.05))
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
