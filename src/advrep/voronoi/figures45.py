"""voronoi Figures 4 and 5: MNIST and CIFAR-10, Voronoi-constrained adversarial training against Madry et al.'s
models and the Jacobian-regularisation baseline (003_ecf3e37839b8b53b.txt, Sections 5.2-5.3).

What the paper states (line numbers of the text copy):

* models: "the same model architectures as in Madry et al. (2018)"; "We train the MNIST model using Adam for 100
  epochs and the CIFAR-10 model using SGD for 250 epochs" (L84); m = 10 constraining samples per other class (L60);
* baselines: "the robust pretrained models of Madry et al. (2018)" -- the MNIST and CIFAR-10 challenge models
  (L109, footnotes L113/L115); "the Jacobian regularization algorithm of Hoffman et al. (2019) with lambda_jr = 1.0"
  (L109; :mod:`advrep.voronoi.jacobian`); Figure 5: Madry's training at eps = 0.4 "for only 100 epochs" and for 150
  epochs (L127);
* attacks: MNIST "300-step projected gradient descent (PGD), with step sizes {0.05, 0.07, 0.1, 0.15, 0.17, 0.2}";
  CIFAR-10 "20-step PGD with step sizes {2.0, 3.0, 4.0}" (pixel units: /255 here); FGSM on both; evaluated "per
  sample": broken at eps if any attack breaks it (L86); L_inf (L117);
* NAUC (eq. 5, L90): (1 / eps_max) * integral_0^eps_max acc(eps) d eps (trapezoidal over our grid).

The pretrained challenge checkpoints cannot be downloaded here, so the Madry rows are models we TRAIN with the
challenge recipe (MadryLab/mnist_challenge and cifar10_challenge ``config.json`` / ``train.py``).  Everything the
paper does not state is a setting in config ``voronoi.figure4`` / ``voronoi.figure5`` with a comment saying so (the
Voronoi inner attack, learning rates and schedules, eps_max and the eps grid, PGD random starts, the test subset).

Work is split as in the workflow: :func:`run_job` trains one (panel, method) model through the training engine
(resumable checkpoints) and evaluates its robust-accuracy curve, saving the per-sample verdicts; :func:`run`
assembles one figure (CSV + PNG + provenance) from the job files.  A cell is comparable with the paper only when the
job ran on the paper's dataset with the paper's stated settings (:func:`deviations`); otherwise the reason says why.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

PANELS = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
METHOD_LABELS = {"voronoi": "Voronoi", "madry": "Madry", "jacobian": "Jacobian reg."}
FIGURE4_METHODS = ("voronoi", "madry", "jacobian")
EPS04 = "madry_eps04"  # Figure 5's extra model: Madry's training at eps = 0.4 (MNIST)
METHODS = (*FIGURE4_METHODS, EPS04)
FINAL, SNAPSHOT = "final", "snapshot"
# Which jobs each figure is assembled from: (panel, method)
FIGURE_JOBS = {
    "figure4": [(p, m) for p in PANELS for m in FIGURE4_METHODS],
    "figure5": [("mnist", "voronoi"), ("mnist", "madry"), ("mnist", EPS04)],
}
# Row labels of Figure 5 (the registry's where it has the row)
FIGURE5_ROWS = {("voronoi", FINAL): "Voronoi (MNIST)", ("madry", FINAL): "Madry (MNIST)",
                (EPS04, SNAPSHOT): "Madry (MNIST, eps=0.4, 100 epochs)",
                (EPS04, FINAL): "Madry (MNIST, eps=0.4, 150 epochs)"}
# eps values every grid contains, whatever its size: the cells the registry and the claims name
REQUIRED_EPS = {"mnist": (0.0, 0.3, 0.4), "cifar10": (0.0,)}
EPS_DENOMINATOR = {"mnist": 1, "cifar10": 255}  # eps labels: MNIST in [0, 1] units, CIFAR-10 in pixels /255

# --- the paper's stated settings (anything else is not comparable) -------------------------------------------------
PAPER_DATA = {"mnist": ("mnist", "madry_mnist_cnn"), "cifar10": ("cifar10", "madry_cifar_wrn")}
PAPER_EVAL = {"mnist": {"pgd_steps": 300, "step_sizes": [0.05, 0.07, 0.1, 0.15, 0.17, 0.2], "fgsm": True},
              "cifar10": {"pgd_steps": 20, "step_sizes": [2 / 255, 3 / 255, 4 / 255], "fgsm": True}}
# (panel, method) -> dotted setting -> value.  Voronoi and Jacobian: the paper (L60, L84, L109); Madry: the challenge
# recipe of the pretrained models (MNIST: Adam 1e-4, batch 50, 100,000 steps = 84 epochs of 60,000 at batch 50, PGD
# eps 0.3, 40 steps of 0.01, random start; CIFAR-10: SGD momentum 0.9, weight decay 2e-4, batch 128, 80,000 steps =
# 205 epochs, PGD eps 8/255, 10 steps of 2/255, random start); eps = 0.4 model: eps, 100 and 150 epochs (L127).
PAPER_TRAINING = {
    ("mnist", "voronoi"): {"epochs": 100, "optimizer.name": "adam", "objective.name": "voronoi_at", "objective.m": 10},
    ("cifar10", "voronoi"): {"epochs": 250, "optimizer.name": "sgd", "objective.name": "voronoi_at",
                             "objective.m": 10},
    ("mnist", "madry"): {"epochs": 84, "batch_size": 50, "optimizer.name": "adam", "optimizer.lr": 1e-4,
                         "objective.name": "pgd_at", "objective.eps": 0.3, "objective.steps": 40,
                         "objective.alpha": 0.01},
    ("cifar10", "madry"): {"epochs": 205, "batch_size": 128, "optimizer.name": "sgd", "optimizer.lr": 0.1,
                           "optimizer.momentum": 0.9, "optimizer.weight_decay": 2e-4, "objective.name": "pgd_at",
                           "objective.eps": 8 / 255, "objective.steps": 10, "objective.alpha": 2 / 255},
    ("mnist", "jacobian"): {"objective.name": "jacobian_reg", "objective.lam": 1.0},
    ("cifar10", "jacobian"): {"objective.name": "jacobian_reg", "objective.lam": 1.0},
    ("mnist", EPS04): {"epochs": 150, "snapshot_epoch": 100, "objective.name": "pgd_at", "objective.eps": 0.4},
}


def number(v):
    """A config scalar as a float: numbers as they are, strings such as ``"2/255"``, ``"1e-4"`` or ``"inf"``."""
    from ..config import number as _as_float

    return _as_float(v)


# --- settings ------------------------------------------------------------------------------------------------------

def job_settings(voronoi_config: dict, panel: str, method: str) -> dict:
    """One job's settings from config ``voronoi``: the panel's data, model and evaluation (``figure4.<panel>``) plus
    the method's training (``figure4.<panel>.<method>``, or ``figure5.madry_eps04`` for the eps = 0.4 model)."""
    if panel not in PANELS or method not in METHODS:
        raise ValueError(f"unknown job {panel}/{method}")
    p = voronoi_config["figure4"][panel]
    s = {k: v for k, v in p.items() if k not in METHODS}
    if method == EPS04:
        if panel != "mnist":
            raise ValueError("the eps = 0.4 Madry model is an MNIST model (Figure 5)")
        m = voronoi_config["figure5"][EPS04]
    else:
        m = p[method]
    return {"panel": panel, "method": method, **s, **m}


def eps_grid(settings: dict) -> list[float]:
    """0 ... eps_max in ``eps_points`` steps, plus the eps values the registry names (rounded to 10 decimals so that
    labels are exact)."""
    ev = settings["eval"]
    grid = np.linspace(0.0, number(ev["eps_max"]), int(ev["eps_points"]))
    out = {round(float(e), 10) for e in grid} | {round(e, 10) for e in REQUIRED_EPS[settings["panel"]]
                                                 if e <= number(ev["eps_max"]) + 1e-12}
    return sorted(out)


def eps_label(e: float, panel: str) -> str:
    d = EPS_DENOMINATOR[panel]
    return f"{e:g}" if d == 1 or e == 0 else f"{round(e * d, 6):g}/{d}"


def _get(settings: dict, dotted: str):
    cur = settings.get("training", {}) if dotted != "snapshot_epoch" else settings
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _same(a, b) -> bool:
    if isinstance(b, str) or isinstance(a, str) and not _is_number(a):
        return str(a).lower() == str(b).lower()
    if a is None:
        return False
    return math.isclose(number(a), float(b), rel_tol=1e-6, abs_tol=1e-12)


def _is_number(v) -> bool:
    try:
        number(v)
        return True
    except (ValueError, TypeError):
        return False


def deviations(settings: dict, meta: dict) -> list[str]:
    """Why a job's cells are not the paper's (empty list: comparable)."""
    panel, method = settings["panel"], settings["method"]
    dataset, model = PAPER_DATA[panel]
    out = []
    if meta.get("standin_for"):
        out.append(f"stand-in data: {meta.get('name')} in place of {PANELS[panel]}")
    elif meta.get("name") != dataset:
        out.append(f"dataset {meta.get('name')} (paper: {dataset})")
    if settings["model"] != model:
        out.append(f"model {settings['model']} (paper: {model})")
    if settings.get("width") is not None:
        out.append(f"model width {settings['width']} (paper: published size)")
    if settings.get("model_kw"):
        out.append(f"model options {settings['model_kw']} (paper: none)")
    if settings.get("max_train") is not None:
        out.append(f"{settings['max_train']} training images (paper: all)")
    ev = settings["eval"]
    if ev.get("max_test") is not None:
        out.append(f"{ev['max_test']} test images (paper: all)")
    for k, v in PAPER_EVAL[panel].items():
        got = ev.get(k)
        if k == "step_sizes":
            ok = got is not None and len(got) == len(v) and all(_same(a, b) for a, b in zip(sorted(map(number, got)),
                                                                                          sorted(v)))
        else:
            ok = got is not None and (got == v if isinstance(v, bool) else _same(got, v))
        if not ok:
            out.append(f"eval {k}={got} (paper: {v})")
    for k, v in PAPER_TRAINING[(panel, method)].items():
        got = _get(settings, k)
        if not _same(got, v):
            out.append(f"{k}={got} (paper: {v:g})" if isinstance(v, float) else f"{k}={got} (paper: {v})")
    return out


# --- one job: train and evaluate one model -----------------------------------------------------------------------

def images(x: np.ndarray):
    """Prepared uint8 NHWC images -> float32 NCHW tensor in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def subset(n: int, k: int | None, seed: int) -> np.ndarray:
    """``k`` of ``n`` indices (a seeded random choice, sorted), or all when ``k`` is None or >= n."""
    if k is None or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(k), replace=False))


def build_model(settings: dict, in_shape, num_classes: int, seed: int):
    from ..models import create_model

    return create_model(settings["model"], in_shape=tuple(in_shape), num_classes=num_classes,
                        width=settings.get("width"), seed=seed, **(settings.get("model_kw") or {}))


def make_objective(objective: dict, x_train, y_train):
    """The training objective: ``voronoi_at`` gets a :class:`NeighbourIndex` over the training images; every other
    name goes to :func:`advrep.train.make_objective` (``jacobian_reg`` is registered by importing
    :mod:`advrep.voronoi.jacobian`)."""
    from ..train import make_objective as make
    from . import jacobian  # noqa: F401  (registers jacobian_reg)
    from .constraints import NeighbourIndex
    from .training import VoronoiAT

    cfg = dict(objective)
    if cfg.get("name") != "voronoi_at":
        return make(cfg)
    cfg.pop("name")
    kw = {"m": int(cfg.pop("m", 10)), "steps": int(cfg.pop("steps")), "alpha": number(cfg.pop("alpha")),
          "step_norm": cfg.pop("step_norm", "linf"), "p": number(cfg.pop("p", 2.0))}
    if cfg:
        raise ValueError(f"voronoi_at: unknown setting(s) {sorted(cfg)}")
    return VoronoiAT(NeighbourIndex(x_train.numpy(), y_train.numpy()), box=(0.0, 1.0), **kw)


def attack_list(ev: dict) -> list[tuple[str, dict]]:
    """FGSM (when enabled) and PGD at every step size (L86), for :func:`advrep.evaluate.robust_accuracy_at`."""
    out = [("fgsm", {})] if ev.get("fgsm", True) else []
    start = bool(ev.get("random_start", True))
    out += [("pgd", {"steps": int(ev["pgd_steps"]), "alpha": number(a), "random_start": start})
            for a in ev["step_sizes"]]
    if not out:
        raise ValueError("no attack to evaluate with")
    return out


def robust_curve(model, x, y, eps: list[float], ev: dict, device=None) -> np.ndarray:
    """Per-sample robust correctness (len(eps), N) under the per-sample worst case over :func:`attack_list`."""
    from ..evaluate import robust_accuracy_at

    dev = device or next(model.parameters()).device
    return robust_accuracy_at(model.eval(), x.to(dev), y.to(dev), eps, attack_list(ev), norm="linf",
                              batch_size=int(ev.get("batch_size", 4096)))


def train_and_evaluate(x_train, y_train, x_test, y_test, settings: dict, seed: int, workdir, *,
                       num_classes: int = 10) -> dict:
    """Train one model through :func:`advrep.train.fit` (checkpoints under ``workdir``, resumed if present; with
    ``snapshot_epoch`` the weights after that epoch are kept too) and evaluate every curve.

    Returns ``{"eps", "curves": {name: (len(eps), N) bool}, "history", "seconds_train", "seconds_eval"}``."""
    import torch

    from ..train import IndexedDataset, build_training, load_checkpoint, resolve_device, save_checkpoint
    from .training import VoronoiAT

    workdir = Path(workdir)
    training_cfg = dict(settings["training"])
    objective_cfg = training_cfg.pop("objective")
    training_cfg.setdefault("seed", seed)
    training_cfg["progress"] = False
    training = build_training({**training_cfg, "objective": "ce"})
    objective = make_objective(objective_cfg, x_train, y_train)
    model = build_model(settings, x_train.shape[1:], num_classes, training.seed)
    snap = settings.get("snapshot_epoch")
    snap_path = workdir / f"epoch{snap}.pt"
    if snap is not None and not 1 <= int(snap) <= training.epochs:
        raise ValueError(f"snapshot_epoch {snap} is outside 1..{training.epochs}")

    def keep_snapshot(epoch: int, record: dict) -> None:
        if snap is not None and epoch + 1 == int(snap):
            save_checkpoint(snap_path, {"epoch": int(snap), "model": model.state_dict()})

    dataset = torch.utils.data.TensorDataset(x_train, y_train)
    if isinstance(objective, VoronoiAT):
        # batches carry training-set indices: each sample's constraining neighbours are searched once per training
        # set (kept beside the checkpoints for a resumed run); augmented rows are searched per batch (the paper)
        objective.cache_dir = workdir
        dataset = IndexedDataset(dataset)
    loader = training.loader(dataset)
    t0 = time.perf_counter()
    result = training.fit(model, loader, checkpoint_dir=workdir, objective=objective, callbacks=[keep_snapshot])
    seconds_train = time.perf_counter() - t0
    dev = resolve_device(training.device)
    models = {FINAL: result.eval_model}
    if snap is not None:
        if not snap_path.exists():
            raise FileNotFoundError(f"{snap_path} is missing although training is past epoch {snap}; delete "
                                    f"{workdir} to retrain")
        m = build_model(settings, x_train.shape[1:], num_classes, training.seed)
        m.load_state_dict(load_checkpoint(snap_path, map_location="cpu")["model"])
        models[SNAPSHOT] = m.to(dev)
    eps = eps_grid(settings)
    t0 = time.perf_counter()
    curves = {name: robust_curve(m.to(dev), x_test, y_test, eps, settings["eval"], dev) for name, m in models.items()}
    return {"eps": eps, "curves": curves, "history": result.history, "seconds_train": seconds_train,
            "seconds_eval": time.perf_counter() - t0}


def checkpoint_key(settings: dict, seed: int) -> str:
    """A hash of everything that decides the trained weights: a changed setting trains afresh in its own folder
    instead of resuming a checkpoint made with other settings."""
    from ..provenance import settings_hash

    keys = ("panel", "method", "dataset", "model", "width", "model_kw", "max_train", "training", "snapshot_epoch")
    return settings_hash({**{k: settings.get(k) for k in keys}, "seed": seed})


def run_job(data_file, out_npz, *, settings: dict, seed: int, workdir, threads: int = 1) -> dict:
    """Train and evaluate one (panel, method) model on a prepared dataset; save the per-sample curves, the training
    history, timings and the dataset's metadata to ``out_npz`` (atomically)."""
    import faiss
    import torch

    from .. import data as advdata
    from ..io import atomic_path

    torch.set_num_threads(max(1, int(threads)))
    faiss.omp_set_num_threads(max(1, int(threads)))
    p = advdata.load(data_file)
    tr = subset(len(p.y_train), settings.get("max_train"), seed)
    te = subset(len(p.y_test), settings["eval"].get("max_test"), seed + 1)
    x_tr, y_tr = images(p.x_train[tr]), torch.from_numpy(p.y_train[tr].astype(np.int64))
    x_te, y_te = images(p.x_test[te]), torch.from_numpy(p.y_test[te].astype(np.int64))
    out = train_and_evaluate(x_tr, y_tr, x_te, y_te, settings, seed, Path(workdir) / checkpoint_key(settings, seed),
                             num_classes=int(p.meta.get("n_classes", 10)))
    with atomic_path(out_npz) as tmp:
        np.savez(tmp, eps=np.asarray(out["eps"]), curve_names=np.array(list(out["curves"])),
                 **{f"curve_{k}": v for k, v in out["curves"].items()},
                 history=np.array(json.dumps(out["history"], default=float)),
                 meta=np.array(json.dumps(p.meta)), settings=np.array(json.dumps(settings, default=str)),
                 seconds_train=np.array(out["seconds_train"]), seconds_eval=np.array(out["seconds_eval"]),
                 test_indices=te)
    return out


def load_job(path) -> dict:
    z = np.load(path, allow_pickle=False)
    return {"eps": [float(e) for e in z["eps"]], "curves": {str(n): z[f"curve_{n}"] for n in z["curve_names"]},
            "history": json.loads(str(z["history"])), "meta": json.loads(str(z["meta"])),
            "settings": json.loads(str(z["settings"])), "seconds_train": float(z["seconds_train"]),
            "seconds_eval": float(z["seconds_eval"])}


# --- one figure ------------------------------------------------------------------------------------------------------

def nauc_of(eps, ok: np.ndarray) -> float:
    from ..evaluate import nauc

    return nauc(eps, ok.mean(1))


def row_label(figure: str, panel: str, method: str, curve: str) -> str:
    if figure == "figure5":
        return FIGURE5_ROWS[(method, curve)]
    if curve != FINAL:
        raise ValueError(f"figure4 has no {curve} curves")
    return f"{METHOD_LABELS[method]} ({PANELS[panel]})"


def curve_rows(label: str, panel: str, eps, ok: np.ndarray, cell: dict) -> list[dict]:
    """NAUC (fraction) and the accuracy (percent) at every eps of the grid, from one curve."""
    rows = [dict(row=label, column="NAUC", value=nauc_of(eps, ok), unit="fraction", **cell)]
    for e, a in zip(eps, ok.mean(1)):
        rows.append(dict(row=label, column=f"accuracy at eps={eps_label(e, panel)}", value=100.0 * float(a),
                         unit="percent", **cell))
    return rows


def run(out_csv, out_png, *, figure: str, job_files: dict, scale: str, seed: int) -> list[dict]:
    """Assemble ``figure`` ("figure4" or "figure5") from its job files (``{(panel, method): npz}`` written by
    :func:`run_job`): the long-format CSV, its provenance sidecar and the PNG."""
    from .. import provenance

    if figure not in FIGURE_JOBS:
        raise ValueError(f"figure must be one of {sorted(FIGURE_JOBS)}")
    missing = [j for j in FIGURE_JOBS[figure] if j not in job_files]
    if missing:
        raise ValueError(f"{figure} needs the jobs {missing}")
    rows, plotted, metas, job_settings_used = [], {}, {}, {}
    naucs = {}
    for panel, method in FIGURE_JOBS[figure]:
        job = load_job(job_files[(panel, method)])
        s = job["settings"]
        reasons = deviations(s, job["meta"])
        tag = provenance.dataset_tag(job["meta"])
        metas[job["meta"].get("content_sha256")] = job["meta"]
        job_settings_used[f"{panel}/{method}"] = s
        cell = dict(status="ok", comparable=not reasons, reason="; ".join(reasons), dataset=tag)
        for curve, ok in job["curves"].items():
            label = row_label(figure, panel, method, curve)
            rows += curve_rows(label, panel, job["eps"], ok, cell)
            plotted.setdefault(panel, []).append((label, job["eps"], ok.mean(1)))
            naucs[(panel, method, curve)] = (nauc_of(job["eps"], ok), cell)
        timing = dict(status="ok", comparable=False, reason="timing, not a result", dataset=tag, unit="seconds")
        rows.append(dict(row=f"{panel}/{method}", column="seconds (training)", value=job["seconds_train"], **timing))
        rows.append(dict(row=f"{panel}/{method}", column="seconds (evaluation)", value=job["seconds_eval"], **timing))
    if figure == "figure4":
        for panel in PANELS:
            (nv, cv), (nm, cm) = naucs[(panel, "voronoi", FINAL)], naucs[(panel, "madry", FINAL)]
            reason = "; ".join(dict.fromkeys(r for r in (cv["reason"], cm["reason"]) if r))
            cell = dict(row=row_label(figure, panel, "voronoi", FINAL), column="NAUC improvement over Madry",
                        unit="percent", dataset=cv["dataset"])
            if nm > 0:  # relative NAUC gain (L117: "an improvement of 20.8%")
                rows.append(dict(value=100.0 * (nv - nm) / nm, status="ok", reason=reason,
                                 comparable=cv["comparable"] and cm["comparable"], **cell))
            else:
                rows.append(dict(value=None, status="not run", comparable=False,
                                 reason="the Madry model's NAUC is 0: no relative improvement", **cell))
    plot(figure, plotted, out_png)
    prov = provenance.record(
        paper="voronoi", target=figure, scale=scale, settings=job_settings_used, seed=seed,
        datasets=list(metas.values()),
        extra={"our_choices_not_in_paper": [
            "Voronoi inner attack (steps, alpha, step_norm, p)", "learning rates, batch sizes and lr schedules of the "
            "Voronoi and Jacobian models", "eval eps_max, eps_points, random_start, the test subset",
            "Madry rows: models trained here with the challenge recipe (the pretrained checkpoints are not "
            "downloadable here)"],
            "eps_labels": "MNIST eps in [0, 1] pixel units; CIFAR-10 eps as k/255", "threat_model": "L_inf"})
    provenance.write_result(rows, out_csv, prov)
    return rows


def plot(figure: str, plotted: dict, out_png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..evaluate import nauc
    from ..io import atomic_path

    panels = [p for p in PANELS if p in plotted]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        d = EPS_DENOMINATOR[panel]
        for label, eps, acc in plotted[panel]:
            ax.plot(np.asarray(eps) * d, acc, marker=".", label=f"{label}: NAUC {nauc(eps, acc):.2f}")
        ax.set(title=f"{PANELS[panel]} ({figure})", xlabel="eps (L_inf)" + ("" if d == 1 else f" x {d}"),
               ylabel="robust accuracy", ylim=(0, 1.02))
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
