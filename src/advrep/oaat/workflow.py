"""oaat Tables 1-2 and Figure 1 (Addepalli, Jain, Sriramanan, Khare, Babu: "Towards achieving adversarial
robustness beyond perceptual limits", OA-AT) as jobs of the workflow.

What the paper states (line numbers of ``shared/papers/004_56204911272491b2.txt``):

* Table 1 (L96-112): CIFAR-10 ResNet-18, eight baselines and OA-AT; CIFAR-100 ResNet-18, AWP vs OA-AT (AutoAugment
  for both, L132); "We train all models on ResNet-18 architecture for 110 epochs" (L118); every baseline tuned "to
  achieve clean accuracy of around 80%" (L118: the tuned settings are not published, so no baseline cell is
  comparable and each says why); the two "AWP [23]" rows: the 8th is AWP-TRADES (L120, L132), the 3rd unidentified;
* Table 2 (L120-130): CIFAR-10, AWP-TRADES vs OA-AT on RN-18, RN-34, WRN-34-10, and WRN-34-10 with weight averaging
  (WA, L132);
* attacks (L132): GAMA PGD-100 and AutoAttack at 8/255, Square (5000 queries) at 12/255 and 16/255; the authors'
  ``eval.py`` gives the rest (GAMA: step 2 eps, lambda 50 lowered to 0 over 25 steps, step /10 at 60 and 85, one
  run, all 10,000 test images; Square: p_init 0.8, 1 restart, ``resc_schedule=False``);
* OA-AT (L86-94): TRADES-AWP base with CE attacks, AWP at x + 2 delta, cosine lr, eps 4/255 for the first quarter
  then linear to 16/255, 5 then 10 attack steps, alternate Oracle-Sensitive / Oracle-Invariant iterations above
  12/255 (the objective: :mod:`advrep.oaat.objectives`; LPIPS on the model's own features: :mod:`advrep.oaat.lpips`);
* Figure 1 (L19): one image attacked at growing L-inf bounds from a PGD-AT and a normally trained (NT) model, the
  perturbations, and an attack at 16/255 that leaves the image perceptually unchanged; each panel titled with the
  source model's prediction.  No numbers (the registry has none): our figure1.csv gives each panel's eps,
  prediction and LPIPS.

Work is split as in the workflow: :func:`run_job` trains one (dataset, architecture, method) through the training
engine (resumable epoch checkpoints; ExAT fine-tunes the final weights of the job it starts from) and writes its
per-sample evaluation table (one :func:`~advrep.evaluate.evaluate_per_sample` pass per eps, merged), a JSON summary
and its evaluation weights; :func:`run_table` assembles one target; :func:`run_figure1` draws Figure 1.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np

from ..config import merge, number
from ..results import Cells, dataset_tag, dotted_get, job_datasets, load_job

# --- the paper's line-up ---------------------------------------------------------------------------------------

DATASETS = {"c10": ("cifar10", "CIFAR-10"), "c100": ("cifar100", "CIFAR-100")}
ARCHS = {"rn18": ("resnet18", "RN-18"), "rn34": ("resnet34", "RN-34"), "wrn34": ("wrn34_10", "WRN-34")}
# method key -> (Table 1 label, what it is); the config section ``methods`` holds each one's recipe
METHODS = {
    "nt": ("normally trained (Figure 1)", "cross-entropy on clean images"),
    "fat": ("FAT", "friendly adversarial training (Zhang et al. 2020)"),
    "pgd_at": ("PGD-AT", "Madry et al. 2018"),
    "awp_pgd_at": ("AWP (3rd row)", "AWP on PGD-AT (our reading of the unidentified 3rd row)"),
    "ates": ("ATES", "adversarial training with early stopping (Sitawarin et al. 2020)"),
    "trades": ("TRADES", "Zhang et al. 2019"),
    "exat_pgd": ("ExAT-PGD", "PGD-AT at 8/255 fine-tuned at 16/255 for 5 epochs (Shaeiri et al. 2020)"),
    "exat_awp": ("ExAT + AWP", "AWP-PGD-AT at 8/255 fine-tuned with AWP at 16/255 for 5 epochs"),
    "awp_trades": ("AWP (AWP-TRADES)", "AWP on TRADES (Wu et al. 2020)"),
    "oaat": ("OA-AT (Ours)", "oracle-aligned adversarial training"),
}
BASELINES = ("fat", "pgd_at", "awp_pgd_at", "ates", "trades", "exat_pgd", "exat_awp", "awp_trades")
TABLE1_METHODS = BASELINES + ("oaat",)
EPS = {8: 8 / 255, 12: 12 / 255, 16: 16 / 255}
T1_COLUMNS = [("Clean", None, None), ("GAMA (8/255)", "gama", 8), ("AA (8/255)", "aa", 8),
              ("GAMA (12/255)", "gama", 12), ("Square (12/255)", "square", 12), ("GAMA (16/255)", "gama", 16),
              ("Square (16/255)", "square", 16)]
T2_COLUMNS = [("Clean", None, None), ("AA (8/255)", "aa", 8), ("Square (12/255)", "square", 12),
              ("AA (12/255)", "aa", 12), ("Square (16/255)", "square", 16), ("AA (16/255)", "aa", 16)]
ATTACK_NAMES = {"gama": "gama_pgd", "aa": "autoattack", "square": "square"}
TARGETS = ("table1", "table2", "masking")


def job_name(data: str, arch: str, method: str, wa: bool = False) -> str:
    return f"{data}_{arch}_{method}" + ("_wa" if wa else "")


def _jobs() -> dict[str, dict]:
    jobs = {}

    def add(data, arch, method, wa=False, tables=()):
        name = job_name(data, arch, method, wa)
        spec = jobs.setdefault(name, {"data": data, "arch": arch, "method": method, "wa": wa, "tables": []})
        spec["tables"] = sorted(set(spec["tables"]) | set(tables))

    for m in TABLE1_METHODS:
        add("c10", "rn18", m, tables=["table1"])
    add("c10", "rn18", "nt", tables=["figure1"])
    add("c10", "rn18", "pgd_at", tables=["figure1"])
    for m in ("awp_trades", "oaat"):
        add("c100", "rn18", m, tables=["table1"])
        for arch in ("rn18", "rn34", "wrn34"):
            add("c10", arch, m, tables=["table2"])
        add("c10", "wrn34", m, wa=True, tables=["table2"])
    for name, spec in jobs.items():
        spec["masking"] = name in ("c10_rn18_oaat", "c10_rn18_awp_trades")
    return jobs


JOBS = _jobs()
INIT_FROM = {"exat_pgd": "pgd_at", "exat_awp": "awp_pgd_at"}  # ExAT fine-tunes the final weights of this method


def training_job(job: str) -> str:
    """The job whose training run ``job`` evaluates: a "+ WA" job evaluates the weight average of its twin's run
    (one training keeps both the weights and their average), every other job its own."""
    s = JOBS[job]
    return job_name(s["data"], s["arch"], s["method"]) if s["wa"] else job


def keeps_average(job: str) -> bool:
    """Whether ``job``'s training run keeps the weight average (it has a "+ WA" twin, or is one)."""
    s = JOBS[job]
    return job_name(s["data"], s["arch"], s["method"], True) in JOBS


def _t1_rows() -> list[tuple[str, str | None]]:
    rows = [(f"CIFAR-10 (ResNet-18) / {METHODS[m][0]}", job_name("c10", "rn18", m)) for m in TABLE1_METHODS]
    rows.append(("CIFAR-10 (ResNet-18) / Gain w.r.t. AWP", None))
    rows += [(f"CIFAR-100 (ResNet-18) / {METHODS[m][0]}", job_name("c100", "rn18", m)) for m in ("awp_trades",
                                                                                                  "oaat")]
    rows.append(("CIFAR-100 (ResNet-18) / Gain w.r.t. AWP", None))
    return rows


def _t2_rows() -> list[tuple[str, str]]:
    rows = []
    for arch in ("rn18", "rn34", "wrn34"):
        rows += [(f"AWP / {ARCHS[arch][1]}", job_name("c10", arch, "awp_trades")),
                 (f"Ours / {ARCHS[arch][1]}", job_name("c10", arch, "oaat"))]
    rows += [("AWP + WA / WRN-34", job_name("c10", "wrn34", "awp_trades", True)),
             ("Ours + WA / WRN-34", job_name("c10", "wrn34", "oaat", True))]
    return rows


T1_ROWS, T2_ROWS = _t1_rows(), _t2_rows()
GAINS = {"CIFAR-10 (ResNet-18) / Gain w.r.t. AWP": ("c10_rn18_oaat", "c10_rn18_awp_trades"),
         "CIFAR-100 (ResNet-18) / Gain w.r.t. AWP": ("c100_rn18_oaat", "c100_rn18_awp_trades")}
TABLE_JOBS = {
    "table1": [j for _, j in T1_ROWS if j],
    "table2": [j for _, j in T2_ROWS],
    "masking": [j for j, s in JOBS.items() if s["masking"]],
    "figure1": ["c10_rn18_nt", "c10_rn18_pgd_at"],
}


def init_job(job: str) -> str | None:
    """The job whose final weights ``job`` starts from (ExAT), else None."""
    s = JOBS[job]
    base = INIT_FROM.get(s["method"])
    return None if base is None else job_name(s["data"], s["arch"], base, s["wa"])


def attack_keys(job: str) -> list[tuple[str, int]]:
    """(attack, eps in 255ths) a job is evaluated with: the columns of its tables, and GAMA at every eps (a strong
    white-box attack for the per-sample worst case)."""
    s = JOBS[job]
    keys = {(a, k) for t in s["tables"] if t in ("table1", "table2")
            for _, a, k in (T1_COLUMNS if t == "table1" else T2_COLUMNS) if a}
    if keys:
        keys |= {("gama", k) for k in EPS}
    return sorted(keys, key=lambda t: (t[1], t[0]))


# --- the paper's stated settings (anything else is not comparable) -------------------------------------------------
PAPER_EPOCHS_RN18 = 110  # L118
# the attacks' settings stated by the paper (L132: GAMA PGD-100, AutoAttack, Square with 5000 queries) and by the
# authors' eval.py (GAMA: E153-213, E288; Square: E557)
PAPER_ATTACKS = {"gama.steps": 100, "gama.lam": 50, "gama.lam_steps": 25, "gama.decay_at": [60, 85], "gama.decay": 10,
                 "gama.restarts": 1, "square.n_queries": 5000, "square.p_init": 0.8, "square.n_restarts": 1,
                 "square.resc_schedule": False, "autoattack.version": "standard", "autoattack.paper": True,
                 "autoattack.steps": None, "autoattack.square_queries": None}
CONFIG_GROUP = {"gama": "gama", "aa": "autoattack", "square": "square"}
PAPER_EXAT = {"epochs": 5, "eps": 16 / 255}  # L46 (fine-tuned "for merely 5 training epochs" at 16/255)
TUNING = ("baseline recipe from its own paper/code (config oaat.methods); the paper tuned every baseline to about "
          "80% clean accuracy with settings it does not publish (L118)")
THIRD_ROW = ("the paper does not say which base defence its 3rd-row AWP uses (registry note); ours is AWP on PGD-AT")


# --- settings ------------------------------------------------------------------------------------------------------

def _override(tr: dict, over: dict) -> dict:
    """``over`` on top of a training config: ``optimizer`` settings merge key by key, everything else (schedule,
    augment, epochs, ...) is replaced whole (a method's schedule is its own, not a blend with the shared one)."""
    out = dict(tr)
    for k, v in over.items():
        out[k] = merge(out.get(k) or {}, v) if k == "optimizer" and isinstance(v, dict) else copy.deepcopy(v)
    return out


def _method_training(cfg: dict, job: str) -> dict:
    """The training config of a job: the shared ``training`` section, the method's ``training`` overrides, its
    ``objective``, the per-(dataset, architecture) ``variants`` overrides, and EMA for the WA jobs."""
    spec = JOBS[job]
    m = cfg["methods"][spec["method"]]
    tr = _override(copy.deepcopy(cfg["training"]), m.get("training") or {})
    obj = copy.deepcopy(m["objective"])
    tr["objective"] = obj if isinstance(obj, dict) else {"name": obj}
    variant = (cfg.get("variants") or {}).get(f"{spec['data']}_{spec['arch']}") or {}
    for key in ("all", spec["method"]):
        over = dict(variant.get(key) or {})
        obj = over.pop("objective", None)
        tr = _override(tr, over)
        if obj:
            tr["objective"] = merge(tr["objective"], obj)
    if keeps_average(job):  # the "+ WA" row evaluates the average of this same run
        tr["ema"] = cfg["wa"]["decay"]
    return tr


def job_settings(cfg: dict, job: str) -> dict:
    """Everything one job needs, from config ``oaat`` (resolved for the scale): data, model, training, attacks."""
    if job not in JOBS:
        raise ValueError(f"unknown oaat job {job!r}; known: {', '.join(JOBS)}")
    spec = JOBS[job]
    models = cfg["models"]
    d = cfg["data"]
    out = {"job": job, **{k: v for k, v in spec.items() if k != "tables"}, "tables": list(spec["tables"]),
           "model": ARCHS[spec["arch"]][0], "width": models["widths"][spec["arch"]],
           "model_kw": dict((models.get("model_kw") or {}).get(spec["arch"]) or {}),
           "normalization": models.get("normalization"),
           "data": {"dataset": d["datasets"][spec["data"]], "paper_dataset": DATASETS[spec["data"]][0],
                    "max_train": d.get("max_train"), "max_test": d.get("max_test"),
                    "holdout_per_class": d["holdout_per_class"][spec["data"]]},
           "training": _method_training(cfg, job),
           "attacks": copy.deepcopy(cfg["attacks"]), "attack_keys": [list(k) for k in attack_keys(job)]}
    parent = init_job(job)
    if parent is not None:
        out["init"] = {"job": parent, "checkpoint_key": checkpoint_key(job_settings(cfg, parent), None)}
    if spec["masking"]:
        out["masking_settings"] = copy.deepcopy(cfg["masking"])
    return out


def validate(cfg: dict) -> None:
    """What the schema cannot say: every objective builds (its own range checks: alpha, lambda, ...), the OA-AT eps
    schedule ends at eps_max, no engine eps ramp stops short of it, every architecture builds and runs on its
    dataset's images (and has OA-AT's LPIPS layers).  Raises ValueError naming the key (called at DAG time by
    rules/common.smk)."""
    import torch

    from . import objectives as _objectives  # noqa: F401  (registers fat, ates, oaat)
    from ..train import make_objective
    from .lpips import default_layers

    for method, m in cfg["methods"].items():
        if method not in METHODS:
            raise ValueError(f"oaat.methods.{method}: unknown method; known: {', '.join(METHODS)}")
        try:
            make_objective(copy.deepcopy(m["objective"]))
        except (ValueError, TypeError) as e:
            raise ValueError(f"oaat.methods.{method}.objective: {e}") from None
    for key, variant in (cfg.get("variants") or {}).items():
        for method in variant:
            if method != "all" and method not in METHODS:
                raise ValueError(f"oaat.variants.{key}.{method}: unknown method; known: all, {', '.join(METHODS)}")
    for job in JOBS:
        tr = _method_training(cfg, job)
        where = f"oaat.methods.{JOBS[job]['method']}"
        try:
            obj = make_objective(copy.deepcopy(tr["objective"]))
        except (ValueError, TypeError) as e:
            raise ValueError(f"oaat.variants.{JOBS[job]['data']}_{JOBS[job]['arch']}.{JOBS[job]['method']} "
                             f"(job {job}): {e}") from None
        epochs = int(tr["epochs"])
        ramp = tr.get("eps_schedule")
        if ramp is not None:
            ramp_epochs = number(ramp.get("ramp_epochs", 0) if isinstance(ramp, dict) else ramp)
            if hasattr(obj, "phase"):
                raise ValueError(f"{where}.training.eps_schedule: OA-AT owns its eps ramp (4/255, then linear to "
                                 "eps at the last epoch); an engine eps_schedule would scale it below eps_max")
            if ramp_epochs > epochs:
                raise ValueError(f"{where}.training.eps_schedule: ramp_epochs={ramp_epochs:g} > epochs={epochs}: "
                                 "the eps schedule would not reach the objective's eps by the last epoch")
        if hasattr(obj, "phase"):  # OA-AT: the ramp must end at eps_max, alpha and lambda stay in range
            last = obj.phase(epochs - 1, epochs)
            if not math.isclose(last.eps, obj.eps_max, rel_tol=1e-9):
                raise ValueError(f"{where}.objective: the eps schedule ends at {last.eps * 255:g}/255, not at eps "
                                 f"= {obj.eps_max * 255:g}/255 (eps_start, warm_fraction, epochs={epochs})")
            if not 0.0 <= last.alpha <= 1.0 or last.lpips_weight < 0:
                raise ValueError(f"{where}.objective: alpha ends at {last.alpha:g} (must stay in [0, 1]) and lambda "
                                 f"at {last.lpips_weight:g} (must be >= 0): check mixup_alpha and lpips_weight")
    pairs = {(s["arch"], s["data"], s["method"] == "oaat") for s in JOBS.values()}
    for arch, data, lpips in sorted(pairs):  # every architecture builds and runs on its dataset's images
        name = cfg["data"]["datasets"][data]
        try:
            net = build_model({"model": ARCHS[arch][0], "width": "tiny", "normalization": None,
                               "model_kw": (cfg["models"].get("model_kw") or {}).get(arch) or {}},
                              IMAGE_SHAPES[name], 100 if data == "c100" else 10, seed=0)
            with torch.no_grad():
                net.eval()(torch.zeros(1, *IMAGE_SHAPES[name]))
            if lpips:  # OA-AT's LPIPS reads the model's stage outputs
                default_layers(net)
        except (ValueError, TypeError, RuntimeError) as e:
            shape = "x".join(map(str, IMAGE_SHAPES[name]))
            raise ValueError(f"oaat.models.{arch} on oaat.data.datasets.{data} ({name}, images {shape}): "
                             f"{ARCHS[arch][0]} cannot take it: {e}") from None


IMAGE_SHAPES = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "digits32": (3, 32, 32), "digits28": (1, 28, 28),
                "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "fashion32": (3, 32, 32), "fashion28": (1, 28, 28),
                "standin32": (3, 32, 32), "standin28": (1, 28, 28)}  # symbolic (advrep.data.standins): either shape


def data_deviations(settings: dict, meta: dict) -> list[str]:
    d = settings["data"]
    want = d["paper_dataset"]
    label = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[want]
    out = []
    if meta.get("standin_for"):
        out.append(f"stand-in data: {meta.get('name')} in place of {label}")
    elif meta.get("name") != want:
        out.append(f"dataset {meta.get('name')} (paper: {want})")
    if d.get("max_train") is not None:
        out.append(f"{d['max_train']} training images (paper: all but the authors' validation split)")
    if d.get("max_test") is not None:
        out.append(f"a seeded subset of {d['max_test']} test images (paper: all 10,000)")
    return out


def training_deviations(settings: dict) -> list[str]:
    out = []
    method, tr = settings["method"], settings["training"]
    if settings["width"] is not None:
        out.append(f"width {settings['width']} (paper: the published {ARCHS[settings['arch']][1]})")
    if settings.get("model_kw"):
        out.append(f"model options {settings['model_kw']} (paper: the published {ARCHS[settings['arch']][1]})")
    if method in INIT_FROM:
        if int(tr["epochs"]) != PAPER_EXAT["epochs"]:
            out.append(f"fine-tuned {tr['epochs']} epochs (paper: {PAPER_EXAT['epochs']})")
        eps = _objective_eps(tr["objective"])
        if eps is None or not math.isclose(eps, PAPER_EXAT["eps"], rel_tol=1e-6):
            out.append(f"fine-tuned at eps={eps} (paper: 16/255)")
    elif settings["arch"] == "rn18" and int(tr["epochs"]) != PAPER_EPOCHS_RN18:
        out.append(f"{tr['epochs']} training epochs (paper: {PAPER_EPOCHS_RN18})")
    if method == "oaat":
        sched = tr.get("schedule") or {}
        if str(sched.get("name", "")).lower() != "cosine":
            out.append(f"lr schedule {sched.get('name')} (paper: cosine, L90)")
    elif method in BASELINES:
        out.append(TUNING)
        if method == "awp_pgd_at":
            out.append(THIRD_ROW)
    return out


def _objective_eps(obj: dict):
    cur = obj
    while isinstance(cur, dict):
        if "eps" in cur:
            return number(cur["eps"])
        cur = cur.get("base")
    return None


def attack_deviations(settings: dict, attack: str | None) -> list[str]:
    if attack is None:
        return []
    a = settings["attacks"]
    group = CONFIG_GROUP[attack]
    out = []
    for key, want in PAPER_ATTACKS.items():
        if not key.startswith(group + "."):
            continue
        got = dotted_get(a, key)
        if (got is None) != (want is None) or (want is not None and str(got).lower() != str(want).lower()
                                               and not _num_equal(got, want)):
            out.append(f"{key}={got} (paper: {'the full budget' if want is None else want})")
    return out


def _num_equal(a, b) -> bool:
    try:
        return math.isclose(number(a), number(b), rel_tol=1e-9)
    except (ValueError, TypeError):
        return False


def deviations(settings: dict, meta: dict, attack: str | None = None) -> list[str]:
    """Why a job's cells are not the paper's (empty: comparable): data, model and training, and the settings of
    the attack the cell reads."""
    return data_deviations(settings, meta) + training_deviations(settings) + attack_deviations(settings, attack)


# --- one job: train and evaluate one model -----------------------------------------------------------------------

def build_model(settings: dict, in_shape, num_classes: int, seed: int):
    from ..models import create_model

    return create_model(settings["model"], in_shape=tuple(in_shape), num_classes=num_classes,
                        width=settings["width"], normalization=settings.get("normalization"), seed=seed,
                        **settings.get("model_kw", {}))


def attack_plan(settings: dict) -> dict[int, list[tuple[str, str, dict]]]:
    """eps (255ths) -> [(label, attack, params)] for :func:`advrep.evaluate.evaluate_per_sample`."""
    a = settings["attacks"]
    params = {
        "gama": {k: a["gama"][k] for k in ("steps", "lam", "lam_steps", "decay", "restarts") if k in a["gama"]},
        "square": {k: a["square"][k] for k in ("n_queries", "p_init", "n_restarts", "resc_schedule")
                   if k in a["square"]},
        "aa": {k: a["autoattack"][k] for k in ("version", "paper", "steps", "square_queries")
               if a["autoattack"].get(k) is not None},
    }
    params["gama"]["decay_at"] = tuple(int(s) for s in a["gama"]["decay_at"])
    for k in ("lam", "decay", "p_init"):
        for p in params.values():
            if k in p:
                p[k] = number(p[k])
    plan: dict[int, list] = {}
    for attack, k in settings["attack_keys"]:
        plan.setdefault(int(k), []).append((f"{attack}_{k}", ATTACK_NAMES[attack], dict(params[attack])))
    return plan


def evaluate(model, x, y, plan: dict, batch_size: int):
    """One per-sample table: the base columns once, each attack's ``success:``/``calls:`` columns, and
    ``worst_success:<k>`` (the per-sample OR over the attacks at eps = k/255)."""
    import pandas as pd

    from ..evaluate import evaluate_per_sample

    merged = None
    for k in sorted(plan):
        df = evaluate_per_sample(model, (x, y), attacks=plan[k], eps=EPS[k], norm="linf", gradient_norms=False,
                                 batch_size=batch_size)
        keep = [c for c in df.columns if c.startswith(("success:", "calls:"))]
        part = df[keep].copy()
        part[f"worst_success:{k}"] = df["worst_success"].to_numpy()
        merged = (df[["index", "label", "clean_pred", "clean_correct"]].join(part) if merged is None
                  else merged.join(part))
    if merged is None:  # a job evaluated clean only (the normally trained model of Figure 1)
        from ..attacks import eval_mode
        import torch

        with eval_mode(model), torch.no_grad():
            pred = torch.cat([model(x[s:s + batch_size]).argmax(1) for s in range(0, len(y), batch_size)])
        merged = pd.DataFrame({"index": np.arange(len(y)), "label": y.cpu().numpy(),
                               "clean_pred": pred.cpu().numpy(), "clean_correct": (pred == y).cpu().numpy()})
    return pd.DataFrame(merged)


def masking(model, x, y, settings: dict, seed: int) -> list[dict]:
    from ..evaluate import gradient_masking_checks, masking_rows

    m = settings["masking_settings"]
    checks = gradient_masking_checks(model, (x, y), eps=number(m["eps"]), norm="linf",
                                     steps=tuple(int(s) for s in m["steps"]),
                                     square_queries=int(m["square_queries"]), seed=seed,
                                     batch_size=int(settings["attacks"].get("batch_size", 500)))
    return masking_rows(checks)


def checkpoint_key(settings: dict, seed: int | None) -> str:
    """A hash of everything that decides the trained weights (a changed setting trains afresh, never resumes)."""
    from ..provenance import settings_hash

    keys = ("model", "width", "model_kw", "normalization", "training", "init")
    return settings_hash({**{k: settings.get(k) for k in keys}, "seed": seed,
                          "data": {k: settings["data"].get(k) for k in ("dataset", "max_train", "holdout_per_class")}})


def holdout(y: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): the first ``per_class`` images of every class in index order are held
    out, as the authors' code does (train_OAAT.py L227-256: 100 per class for CIFAR-10, 10 per class for
    CIFAR-100); ``per_class = 0`` holds nothing out."""
    val = []
    if per_class > 0:
        for c in np.unique(y):
            val.extend(np.flatnonzero(y == c)[:per_class].tolist())
    val = np.array(sorted(val), dtype=np.int64)
    train = np.setdiff1d(np.arange(len(y)), val)
    return train, val


def load_data(data_file, settings: dict, seed: int, train: bool = True):
    """(prepared data, (x, y) training, (x, y) validation, (x, y) test, test indices); ``train=False`` skips the
    training and validation images (None in their place)."""
    import torch

    from .. import data as advdata
    from ..voronoi.figures45 import images, subset

    p = advdata.load(data_file)
    d = settings["data"]
    tr_all, val = holdout(p.y_train, int(d["holdout_per_class"]))
    tr = tr_all[subset(len(tr_all), d.get("max_train"), seed)]
    te = subset(len(p.y_test), d.get("max_test"), seed + 1)

    def pair(x, y, idx):
        return images(x[idx]), torch.from_numpy(y[idx].astype(np.int64))

    if not train:
        return p, None, None, pair(p.x_test, p.y_test, te), te
    return p, pair(p.x_train, p.y_train, tr), pair(p.x_train, p.y_train, val), pair(p.x_test, p.y_test, te), te


def train(settings: dict, data, seed: int, workdir, init_model=None):
    """Train one job's model (checkpoints under ``workdir/<key>``, resumed if present); ``init_model``: a weights
    file to start from (ExAT), loaded before ``fit`` (a resumed run's ``last.pt`` then overrides it)."""
    import torch

    from ..train import build_training, load_checkpoint

    p, (x_tr, y_tr), (x_val, y_val), _, _ = data
    num_classes = int(p.meta.get("n_classes", 10))
    training = build_training({**settings["training"], "seed": seed, "progress": False})
    model = build_model(settings, x_tr.shape[1:], num_classes, training.seed)
    if init_model is not None:
        model.load_state_dict(load_checkpoint(init_model, map_location="cpu")["model"])
    loader = training.loader(torch.utils.data.TensorDataset(x_tr, y_tr))
    val = (training.loader(torch.utils.data.TensorDataset(x_val, y_val), shuffle=False)
           if len(y_val) else None)
    return training.fit(model, loader, checkpoint_dir=Path(workdir) / checkpoint_key(settings, seed),
                        val_loader=val)


def run_job(data_file, out_csv, out_json, out_model, *, settings: dict, seed: int, workdir, init_model=None,
            threads: int = 1) -> dict:
    """Train one model and evaluate it; write the per-sample table (``out_csv``), the job summary (``out_json``)
    and the evaluation weights (``out_model``, read by ExAT and Figure 1), all atomically."""
    import torch

    from . import objectives as _objectives  # noqa: F401  (registers fat, ates, oaat)
    from .. import io
    from ..evaluate import write_per_sample
    from ..train import resolve_device, save_checkpoint

    if settings.get("init") and init_model is None:
        raise ValueError(f"job {settings['job']} fine-tunes {settings['init']['job']}: give its weights (init_model)")
    torch.set_num_threads(max(1, int(threads)))
    data = load_data(data_file, settings, seed)
    p, _, _, (x_te, y_te), te = data
    t0 = time.perf_counter()
    result = train(settings, data, seed, workdir, init_model)
    seconds_train = time.perf_counter() - t0
    dev = resolve_device(settings["training"].get("device", "auto"))
    model = (result.ema.module if settings["wa"] else result.model).to(dev).eval()
    x_te, y_te = x_te.to(dev), y_te.to(dev)

    t0 = time.perf_counter()
    bs = int(settings["attacks"].get("batch_size", 500))
    df = evaluate(model, x_te, y_te, attack_plan(settings), bs)
    summary = {"job": settings["job"], "settings": settings, "meta": p.meta, "history": result.history,
               "seconds_train": seconds_train, "test_indices": te.tolist(), "resumed_from": result.resumed_from}
    if settings.get("masking_settings"):
        summary["masking"] = masking(model, x_te, y_te, settings, seed)
    summary["seconds_eval"] = time.perf_counter() - t0
    save_checkpoint(out_model, {"epoch": len(result.history), "model": {k: v.cpu() for k, v in
                                                                        model.state_dict().items()},
                                "job": settings["job"], "checkpoint_key": checkpoint_key(settings, seed)})
    write_per_sample(df, out_csv)
    io.write_json(out_json, summary)
    return summary


# --- the tables ----------------------------------------------------------------------------------------------------

def _acc(df, label: str | None = None, worst: int | None = None) -> float:
    """Percent: clean accuracy, robust accuracy under attack ``label``, or the worst case at eps = ``worst``/255."""
    clean = df["clean_correct"].astype(bool).to_numpy()
    if worst is not None:
        return 100.0 * float((clean & ~df[f"worst_success:{worst}"].astype(bool).to_numpy()).mean())
    if label is None:
        return 100.0 * float(clean.mean())
    return 100.0 * float((clean & ~df[f"success:{label}"].astype(bool).to_numpy()).mean())


def _cell(df, js, column: str, attack: str | None, k: int | None):
    s, meta = js["settings"], js["meta"]
    value = _acc(df) if attack is None else _acc(df, f"{attack}_{k}")
    return value, deviations(s, meta, attack)


def _table_rows(target: str, jobs: dict, cells: Cells) -> None:
    columns = T1_COLUMNS if target == "table1" else T2_COLUMNS
    rows = T1_ROWS if target == "table1" else T2_ROWS
    computed: dict[str, dict[str, tuple]] = {}
    for row, job in rows:
        if job is None:
            continue
        df, js = jobs[job]
        tag = dataset_tag(js["meta"])
        computed[job] = {}
        for column, attack, k in columns:
            value, reasons = _cell(df, js, column, attack, k)
            computed[job][column] = (value, reasons, tag)
            cells.add(row, column, value, reasons=reasons, dataset=tag)
        for k in sorted({int(kk) for _, kk in js["settings"]["attack_keys"]}):
            cells.add(row, f"worst case over attacks ({k}/255)", _acc(df, worst=k), beyond=True, dataset=tag,
                      note="per-sample OR over " + ", ".join(f"{a}" for a, kk in js["settings"]["attack_keys"]
                                                             if int(kk) == k))
    if target == "table1":
        for row, (ours, awp) in GAINS.items():
            for column, _a, _k in columns:
                (v1, r1, t1), (v2, r2, t2) = computed[ours][column], computed[awp][column]
                cells.add(row, column, v1 - v2, reasons=["derived: OA-AT minus AWP-TRADES"] * bool(r1 + r2) + r1 + r2,
                          dataset=t1 if t1 == t2 else f"{t1}; {t2}", note="OA-AT (Ours) minus AWP (AWP-TRADES)")


def _masking_rows(jobs: dict, cells: Cells) -> None:
    for job, (_df, js) in jobs.items():
        for r in js.get("masking") or []:
            cells.rows.append({**r, "row": f"{job}: {r['row']}", "dataset": dataset_tag(js["meta"])})


def run_table(target: str, out_csv, *, job_files: dict, scale: str, seed: int) -> list[dict]:
    """Assemble ``target`` (one of :data:`TARGETS`) from its jobs' files ``{job: (per_sample.csv, summary.json)}``:
    the long-format CSV and its provenance sidecar."""
    from .. import provenance

    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}")
    missing = [j for j in TABLE_JOBS[target] if j not in job_files]
    if missing:
        raise ValueError(f"{target} needs the jobs {missing}")
    jobs = {j: load_job(*job_files[j]) for j in TABLE_JOBS[target]}
    cells = Cells()
    if target in ("table1", "table2"):
        _table_rows(target, jobs, cells)
    else:
        _masking_rows(jobs, cells)
    cells.add_timings(jobs)
    prov = provenance.record(
        paper="oaat", target=target, scale=scale, seed=seed, datasets=job_datasets(jobs),
        settings={j: js["settings"] for j, (_df, js) in jobs.items()},
        extra={"our_choices_not_in_paper": [
            "every baseline's recipe (its own paper's/code's CIFAR-10 ResNet-18 setting; config oaat.methods)",
            "the 3rd-row AWP read as AWP on PGD-AT; ExAT + AWP fine-tunes that model",
            "ExAT's fine-tuning lr; WA = the engine's EMA with the authors' first tau",
            "worst case over attacks per sample (extra columns)"],
            "robust_accuracy": "per sample from the toolkit's evaluation table; clean-misclassified images count "
                               "as broken"})
    provenance.write_result(cells.rows, out_csv, prov)
    return cells.rows


# --- Figure 1 --------------------------------------------------------------------------------------------------------

def figure1_image(models: dict, x, y) -> int:
    """The first test image (of the evaluated subset order) that every source model classifies correctly."""
    import torch

    from ..attacks import eval_mode

    ok = torch.ones(len(y), dtype=torch.bool)
    for m in models.values():
        with eval_mode(m), torch.no_grad():
            ok &= m(x).argmax(1).cpu() == y.cpu()
    idx = ok.nonzero().squeeze(1)
    return int(idx[0]) if idx.numel() else 0


def _pgd(model, x, y, eps: float, steps: int, lpips=None, lam: float = 0.0):
    """The full PGD iterate at eps (no early stop: the figure shows the image the attack ends at): CE, or
    CE - lam * LPIPS(x, x_hat) with ``lpips`` (the Oracle-Invariant attack)."""
    import torch
    from torch.nn import functional as F

    from ..attacks import eval_mode, maximize

    def loss(z):
        value = F.cross_entropy(model(z), y, reduction="none")
        if lpips is not None and lam > 0:
            value = value - lam * lpips(x, z)
        return value

    with eval_mode(model), torch.enable_grad():
        return maximize(loss, x, eps=eps, alpha=2.5 * eps / steps, steps=steps, norm="linf", init=None)


def run_figure1(data_file, model_files: dict, out_csv, out_png, *, settings: dict, scale: str, seed: int) -> list:
    """Figure 1: one test image attacked at ``settings['eps']`` from the normally trained and the PGD-AT model,
    the perturbations, and the LPIPS-penalised (Oracle-Invariant) attack at ``settings['oi_eps']`` from the PGD-AT
    model.  ``model_files``: {"nt": weights, "pgd_at": weights}; ``settings``: config ``oaat.figure1`` plus the two
    jobs' settings under ``jobs``."""
    import torch

    from .. import provenance
    from ..attacks import eval_mode
    from ..train import load_checkpoint
    from .lpips import FeatureLPIPS

    jobs = settings["jobs"]
    any_job = jobs["pgd_at"]
    p, _, _, (x_te, y_te), te = load_data(data_file, any_job, seed, train=False)
    num_classes = int(p.meta.get("n_classes", 10))
    models = {}
    for key, path in model_files.items():
        m = build_model(jobs[key], x_te.shape[1:], num_classes, seed)
        m.load_state_dict(load_checkpoint(path, map_location="cpu")["model"])
        models[key] = m.eval()
    i = figure1_image(models, x_te, y_te)
    x, y = x_te[i:i + 1], y_te[i:i + 1]
    names = p.meta.get("class_names") or [str(c) for c in range(num_classes)]
    lp = FeatureLPIPS(models["pgd_at"])  # OA-AT's LPIPSDistance (square root) on the PGD-AT features
    steps = int(settings["steps"])
    panels = [{"source": "original", "eps": 0.0, "x": x, "kind": "image"}]
    for key, label in (("pgd_at", "AT"), ("nt", "NT")):
        for e in settings["eps"]:
            eps = number(e)
            panels.append({"source": label, "eps": eps, "x": _pgd(models[key], x, y, eps, steps), "kind": "image"})
    oi_eps, lam = number(settings["oi_eps"]), number(settings["oi_lambda"])
    panels.append({"source": "AT, LPIPS-penalised (Oracle-Invariant)", "eps": oi_eps,
                   "x": _pgd(models["pgd_at"], x, y, oi_eps, steps, lpips=lp, lam=lam), "kind": "image"})
    rows = []
    tag = dataset_tag(p.meta)
    why = data_deviations(any_job, p.meta)
    for pan in panels:
        src = models["nt"] if pan["source"] == "NT" else models["pgd_at"]
        with eval_mode(src), torch.no_grad():
            pred = int(src(pan["x"]).argmax(1))
            dist = float(lp(x, pan["x"]).squeeze())
        pan.update(pred=pred, lpips=dist, linf=float((pan["x"] - x).abs().max()))
        row = f"{pan['source']} / eps={pan['eps'] * 255:g}/255"
        for column, value, unit in (("eps", pan["eps"], "epsilon"), ("prediction", pred, "other"),
                                    ("prediction correct", float(pred == int(y)), "bool"),
                                    ("LPIPS to the original (PGD-AT features)", dist, "distance"),
                                    ("L-inf distance to the original", pan["linf"], "distance")):
            rows.append({"row": row, "column": column, "value": float(value), "unit": unit, "status": "ok",
                         "comparable": False, "dataset": tag, "note": f"prediction {names[pred]}",
                         "reason": "; ".join(["Figure 1 prints no numbers (an illustration)"] + why)})
    plot_figure1(panels, x, names, out_png)
    prov = provenance.record(paper="oaat", target="figure1", scale=scale, seed=seed, datasets=[p.meta],
                             settings={"figure1": {k: v for k, v in settings.items() if k != "jobs"},
                                       "jobs": jobs, "test_index": int(te[i])},
                             extra={"attack": "PGD on the CE loss from zero perturbation, step 2.5 eps / steps, "
                                              "no early stop; the Oracle-Invariant panel maximises CE - lambda * "
                                              "LPIPS with LPIPS on the PGD-AT model's own features"})
    provenance.write_result(rows, out_csv, prov)
    return rows


def plot_figure1(panels: list, x, names, out_png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    def show(ax, img, title):
        a = img[0].detach().cpu().permute(1, 2, 0).numpy()
        ax.imshow(a.squeeze(), cmap="gray" if a.shape[-1] == 1 else None, vmin=0, vmax=1)
        ax.set_title(title, fontsize=7)
        ax.axis("off")

    groups = [("original", [pan for pan in panels if pan["source"] == "original"])]
    for src in ("AT", "NT", "AT, LPIPS-penalised (Oracle-Invariant)"):
        groups.append((src, [pan for pan in panels if pan["source"] == src]))
    cols = max(len(g) for _, g in groups) + 1
    fig, axes = plt.subplots(len(groups), cols, figsize=(1.6 * cols, 1.9 * len(groups)), squeeze=False)
    for r, (src, pans) in enumerate(groups):
        for c in range(cols):
            axes[r][c].axis("off")
        for c, pan in enumerate(pans):
            show(axes[r][c], pan["x"], f"{src} {pan['eps'] * 255:g}/255\npred: {names[pan['pred']]}"
                 if src != "original" else f"original\npred: {names[pan['pred']]}")
        if src != "original" and pans:
            last = pans[-1]
            delta = (last["x"] - x) / (2 * max(last["eps"], 1e-12)) + 0.5
            show(axes[r][len(pans)], delta.clamp(0, 1), f"perturbation {last['eps'] * 255:g}/255")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
