"""The abstain paper's workflow targets (``rules/abstain.smk``): one exact adversary pass per feature set, then every
table and figure from the saved passes.

Stages
------
``attack_pass``  features (``advrep.abstain.features``) -> the exact adversary for one ``n3`` and every sigma a
                 target needs (one :func:`~advrep.abstain.adversary.tau_star_multi` pass, the linear protocol under
                 the same subspaces) -> ``.npz``.  The expensive step; everything below only reads it.
``table1``       Table 1 (paper layout, percent).
``figure1``      adversarial accuracy vs abstention as tau varies, one curve per (features, sigma); the curve is exact
                 (evaluated just right of every breakpoint, then thinned for plotting) plus the two limits the text
                 states, which the audit compares.
``tuning``       data-driven tau: exact batch minimisation of ``g = E_adv + c D_nat`` on a validation split, reported
                 on the held-out split; online continuous exponential weights with its regret vs T (Theorem 3.1).
``n3_sweep``     beyond the paper: robust error vs the adversary's dimension n3 at a fixed tau.
``theory``       beyond the paper: Theorems 2.1 / 2.2 on well-separated synthetic clusters.

Comparability (the audit's "match"/"deviates" only where data and settings are the paper's): CIFAR-10 features
from encoders trained with the paper's recipe (:data:`advrep.abstain.features.PAPER_SETTINGS`), every test point,
``n3 = 1``; otherwise every cell says why not.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .adversary import AttackResult, tau_star_multi
from .defence import nearest_other_label_distance, preprocess
from .linear import fit_linear, linear_adversary_wins, linear_predict
from .subspace import random_subspaces
from .table1 import SIGMA_GROUPS, figure1_rows, long_format, table1_rows

METHOD_LABELS = {"simclr": "Self-supervised", "supcon": "Supervised"}
PAPER_DATASET = "cifar10"
PAPER_TAUS = (3.0, 2.0)


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def sigma_key(sigma: float) -> float:
    return round(float(sigma), 12)


def table1_sigmas(taus) -> list[float]:
    """The sigmas Table 1 needs: ``0, 0.9 tau, tau`` for every tau."""
    return sorted({sigma_key(f * t) for t in taus for _, f in SIGMA_GROUPS})


# ------------------------------------------------------------------------------------------------- the attack pass
def attack_pass(features_path, out_npz, *, sigmas, n3: int, seed: int, k0: int = 128, max_test: int | None = None,
                threads: int | None = None) -> dict:
    """Run the exact adversary (and the linear protocol under the same subspaces) on one feature file.

    ``sigmas``: every preprocessing threshold to evaluate (one kept training set each; sigma = 0 keeps all).
    ``max_test``: evaluate the first ``max_test`` test points of a seeded permutation (``None`` = all; a subset is
    reported as not comparable).  Subspaces are drawn from ``seed`` per test point, shared by every sigma and by
    the linear protocol (common random numbers).
    """
    from ..io import atomic_path
    from .features import read_features

    t0 = time.perf_counter()
    X, y, T, ty, fmeta = read_features(features_path)
    n_test_all = len(T)
    idx = np.arange(n_test_all)
    if max_test is not None and max_test < n_test_all:
        idx = np.sort(np.random.default_rng(seed).permutation(n_test_all)[:max_test])
    T, ty = T[idx], ty[idx]
    n_classes = int(max(y.max(), ty.max())) + 1
    B = random_subspaces(len(T), T.shape[1], n3, seed)
    W, b = fit_linear(X, y, n_classes=n_classes)
    lin_pred = linear_predict(W, b, T)
    lin_wins = linear_adversary_wins(W, b, T, ty, B)
    sigmas = sorted({sigma_key(s) for s in sigmas})
    nearest_other = nearest_other_label_distance(X, y) if any(s > 0 for s in sigmas) else None
    keeps = [preprocess(X, y, s, nearest_other=nearest_other) for s in sigmas]
    results = tau_star_multi(X, y, T, ty, keeps, subspaces=B, k0=k0, threads=threads, progress=True)
    meta = {"features": fmeta, "features_file": str(features_path), "n3": n3, "seed": seed, "sigmas": sigmas,
            "n_test_all": n_test_all, "n_test": len(T), "max_test": max_test, "n_train": len(X),
            "kept": [int(k.sum()) for k in keeps], "stats": [r.stats for r in results],
            "seconds": time.perf_counter() - t0}
    with atomic_path(out_npz) as tmp:
        np.savez(tmp, sigmas=np.array(sigmas), tau_star=np.stack([r.tau_star for r in results]),
                 d_nn=np.stack([r.d_nn for r in results]), nn_label=np.stack([r.nn_label for r in results]),
                 test_labels=ty, test_index=idx, linear_pred=lin_pred, linear_wins=lin_wins,
                 meta=np.array(json.dumps(meta, default=float)))
    return meta


@dataclass
class AttackPass:
    """A saved :func:`attack_pass`: per-sigma exact results and the linear protocol."""

    sigmas: list[float]
    results: dict[float, AttackResult]
    linear_pred: np.ndarray
    linear_wins: np.ndarray
    test_labels: np.ndarray
    meta: dict

    def at(self, sigma: float) -> AttackResult:
        key = sigma_key(sigma)
        if key not in self.results:
            raise KeyError(f"sigma={sigma} was not evaluated in {self.meta.get('features_file')} (have "
                           f"{self.sigmas}); add it to the config and rerun the attack pass")
        return self.results[key]

    @property
    def linear(self) -> dict[str, float]:
        return {"E_nat": float(np.mean(self.linear_pred != self.test_labels)),
                "E_adv": float(np.mean(self.linear_wins))}

    @property
    def dataset_meta(self) -> dict:
        return self.meta["features"].get("dataset", {})


def load_pass(path) -> AttackPass:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        sigmas = [sigma_key(s) for s in z["sigmas"]]
        ty = z["test_labels"]
        results = {s: AttackResult(z["tau_star"][i], z["d_nn"][i], z["nn_label"][i], ty, meta["kept"][i],
                                   meta["n3"], meta["stats"][i]) for i, s in enumerate(sigmas)}
        return AttackPass(sigmas, results, z["linear_pred"], z["linear_wins"], ty, meta)


# ------------------------------------------------------------------------------------------------ comparability
def deviations(p: AttackPass, *, paper_settings: dict | None = None) -> list[str]:
    """Why a pass is not the paper's experiment (empty list: it is)."""
    from .features import PAPER_SETTINGS, TEMPERATURE

    paper_settings = PAPER_SETTINGS if paper_settings is None else paper_settings
    out = []
    fmeta = p.meta["features"]
    ds = p.dataset_meta
    name = ds.get("name")
    if name != PAPER_DATASET or ds.get("standin_for"):
        what = f"stand-in for {ds['standin_for']}" if ds.get("standin_for") else "not the paper's data"
        out.append(f"features of {name} ({what}); the paper uses CIFAR-10")
    method = fmeta.get("method")
    used = fmeta.get("settings", {})
    want = dict(paper_settings, temperature=TEMPERATURE.get(method, paper_settings.get("temperature")))
    for k, v in want.items():
        if k in ("num_workers",):
            continue
        if k in used and _differs(used[k], v):
            out.append(f"encoder {k}={used[k]!r} (paper {v!r})")
    if p.meta["n_test"] < p.meta["n_test_all"]:
        out.append(f"{p.meta['n_test']} of {p.meta['n_test_all']} test points")
    if p.meta["n3"] != 1:
        out.append(f"n3={p.meta['n3']} (Table 1: n3=1)")
    return out


def _differs(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a != b


def _cell_info(p: AttackPass, extra: list[str] | None = None) -> dict:
    from .. import provenance

    dev = deviations(p) + list(extra or [])
    return {"status": "ok", "comparable": not dev, "reason": "; ".join(dev),
            "dataset": provenance.dataset_tag(p.dataset_meta)}


def _provenance(target: str, scale: str, settings: dict, seed: int, passes: dict, extra: dict | None = None):
    from .. import provenance

    datasets, seen = [], set()
    for p in passes.values():
        d = p.dataset_meta
        if d.get("content_sha256") not in seen:
            seen.add(d.get("content_sha256"))
            datasets.append(d)
    info = {"attack_passes": {str(k): {key: p.meta[key] for key in ("features_file", "n3", "seed", "n_test",
                                                                     "n_test_all", "n_train", "kept", "seconds")}
                              | {"sigmas": p.sigmas,
                                 "encoder": {k: p.meta["features"].get(k) for k in
                                             ("method", "settings", "stats", "device", "seconds")}}
                              for k, p in passes.items()}}
    return provenance.record(paper="abstain", target=target, scale=scale, settings=settings, seed=seed,
                             datasets=datasets, extra={**info, **(extra or {})})


# ----------------------------------------------------------------------------------------------------- Table 1
def table1(out_csv, *, pass_files: dict, settings: dict, scale: str, seed: int) -> list[dict]:
    """Table 1 from the n3 = 1 passes (``pass_files``: method -> npz)."""
    from .. import provenance

    taus = tuple(float(t) for t in settings["taus"])
    passes = {m: load_pass(f) for m, f in pass_files.items()}
    extra = [] if tuple(taus) == PAPER_TAUS else [f"taus {list(taus)} (paper {list(PAPER_TAUS)})"]
    rows = []
    for method, p in passes.items():
        res = {"linear": p.linear, "ours": {}}
        for tau in taus:
            for lab, f in SIGMA_GROUPS:
                res["ours"][(tau, lab)] = p.at(f * tau).rates(tau)
        info = _cell_info(p, extra)
        for r in table1_rows({_label(method): res}, taus=taus):
            rows.append({**r, **info})
    # the preprocessing: how many training points each sigma keeps (not in the paper; helps read the table)
    for method, p in passes.items():
        for s in p.sigmas:
            rows.append({"row": f"{_label(method)} / kept training points (sigma={s:g})", "column": "n_kept",
                         "value": float(p.at(s).n_train), "unit": "count", "status": "ok", "comparable": False,
                         "reason": "not in the paper", "dataset": _cell_info(p)["dataset"]})
    provenance.write_result(rows, out_csv, _provenance("table1", scale, settings, seed, passes))
    return rows


# ----------------------------------------------------------------------------------------------------- Figure 1
def exact_curve(result: AttackResult, max_points: int | None = None) -> dict[str, np.ndarray]:
    """The trade-off curve ``tau -> (D_nat, A_adv, E_nat)``: both rates are step functions of tau with jumps at the
    values ``tau*`` and ``d_nn``; evaluating just right of every jump (and at 0) gives every distinct point.
    ``max_points`` thins it (evenly in rank) for plotting."""
    from .tuning import breakpoints

    p = breakpoints(result.tau_star, result.d_nn)
    taus = np.r_[0.0, np.nextafter(p, np.inf)]
    if max_points is not None and len(taus) > max_points:
        taus = taus[np.unique(np.linspace(0, len(taus) - 1, max_points).round().astype(int))]
    ts = np.sort(result.tau_star)
    ds = np.sort(result.d_nn)
    M = len(ts)
    e_adv = np.searchsorted(ts, taus, side="left") / M
    d_nat = (M - np.searchsorted(ds, taus, side="left")) / M
    answered_wrong = np.sort(result.d_nn[result.nn_label != result.test_labels])
    e_nat = np.searchsorted(answered_wrong, taus, side="left") / M
    return {"tau": taus, "A_adv": 1.0 - e_adv, "D_nat": d_nat, "E_nat": e_nat}


def figure1(out_csv, out_png, *, pass_files: dict, settings: dict, scale: str, seed: int) -> list[dict]:
    """Figure 1: one curve per (features, sigma); the text's two limits (stated for every curve) are audited on the
    first features' smallest-sigma curve (rows named as in the registry) and reported for every other curve (rows
    suffixed ``[features, sigma]``)."""
    from .. import provenance

    passes = {m: load_pass(f) for m, f in pass_files.items()}
    sigmas = [sigma_key(s) for s in settings["sigmas"]]
    rows, curves = [], {}
    first = next(iter(passes))
    for method, p in passes.items():
        info = _cell_info(p)
        for s in sigmas:
            res = p.at(s)
            c = exact_curve(res, settings["points"])
            curves[(method, s)] = c
            suffix = f" [{_label(method)}, sigma={s:g}]"
            for r in figure1_rows(res):
                audited = method == first and s == min(sigmas)
                rows.append({**r, **info, "row": r["row"] + ("" if audited else suffix)})
            for k in range(len(c["tau"])):
                label = f"curve{suffix.strip()} point {k}"
                for col in ("tau", "A_adv", "D_nat", "E_nat"):
                    rows.append({"row": label, "column": col, "value": float(c[col][k]),
                                 "unit": "other" if col == "tau" else "fraction", **info, "comparable": False,
                                 "reason": "curve point: the paper gives the curve only as a plot"})
    _plot_figure1(curves, out_png)
    provenance.write_result(rows, out_csv, _provenance("figure1", scale, settings, seed, passes))
    return rows


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png) -> None:
    from ..io import atomic_path

    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def _plot_figure1(curves: dict, out_png) -> None:
    plt = _plt()
    methods = list(dict.fromkeys(m for m, _ in curves))
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 4.2), squeeze=False)
    for ax, method in zip(axes[0], methods):
        for (m, s), c in curves.items():
            if m == method:
                ax.step(c["D_nat"], c["A_adv"], where="post", label=f"sigma={s:g}")
        ax.set(title=f"{_label(method)} features, n3=1", xlabel="abstention rate D_nat",
               ylabel="adversarial accuracy A_adv", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, out_png)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------- tuning
def tuning(out_csv, out_png, *, pass_files: dict, settings: dict, scale: str, seed: int) -> list[dict]:
    """(a) batch tau by exact minimisation on a validation split, reported on the held-out split, per cost c;
    (b) online continuous exponential weights, regret vs T beside the sqrt(T log T) shape.  Not in the paper's
    tables (Section 3 states the method and Theorem 3.1 only): every cell is "not comparable"."""
    from .. import provenance
    from .tuning import online_exp_weights, regret_rows, tune_and_evaluate

    passes = {m: load_pass(f) for m, f in pass_files.items()}
    sigma = float(settings["sigma"])
    on = settings["online"]
    rows, regrets = [], {}
    for method, p in passes.items():
        res = p.at(sigma)
        info = {**_cell_info(p), "comparable": False, "reason": "not a number the paper reports"}
        prefix = f"{_label(method)} / batch / "
        recs = tune_and_evaluate(res, settings["costs"], frac=settings["validation_fraction"], seed=seed)
        for r in long_format(recs, "c", prefix=prefix, units={"tau": "other"} | {
                k: "fraction" for k in ("val_g", "test_g", "oracle_test_g", "test_E_nat", "test_E_adv",
                                        "test_D_nat")}):
            rows.append({**r, **info})
        tau_max = on["tau_max"]
        if tau_max is None:  # data-driven range: a little beyond every natural nearest distance
            tau_max = 1.1 * float(np.max(res.d_nn[np.isfinite(res.d_nn)]))
        batch = min(int(on["batch_size"]), max(1, len(res.tau_star) // 4))
        o = online_exp_weights(res.tau_star, res.d_nn, on["c"], batch_size=batch, tau_max=tau_max, seed=seed)
        regrets[method] = o
        for r in long_format(regret_rows(o), "T", prefix=f"{_label(method)} / online / ",
                             units={"regret": "other", "regret_per_round": "other", "sampled_regret": "other",
                                    "sqrtTlogT_shape": "other"}):
            rows.append({**r, **info})
        rows.append({"row": f"{_label(method)} / online", "column": "batch_size", "value": float(batch),
                     "unit": "count", **info})
        rows.append({"row": f"{_label(method)} / online", "column": "tau_max", "value": float(tau_max),
                     "unit": "other", **info})
    _plot_tuning(passes, regrets, settings, out_png)
    provenance.write_result(rows, out_csv, _provenance("tuning", scale, settings, seed, passes))
    return rows


def _plot_tuning(passes: dict, regrets: dict, settings: dict, out_png) -> None:
    from .tuning import breakpoints, objective

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, p in passes.items():
        res = p.at(float(settings["sigma"]))
        taus = np.r_[0.0, np.nextafter(breakpoints(res.tau_star, res.d_nn), np.inf)]
        for c in settings["costs"]:
            axes[0].step(taus, objective(res.tau_star, res.d_nn, c, taus), where="post",
                         label=f"{_label(method)}, c={c:g}")
        o = regrets[method]
        line, = axes[1].plot(o.T, o.regret, label=f"{_label(method)}: expected regret")
        shape = np.sqrt(o.T * np.log(o.T + 1))
        axes[1].plot(o.T, shape * (o.regret[-1] / shape[-1]), ls="--", color=line.get_color(),
                     label="sqrt(T log T), fitted at T_max")
    axes[0].set(title="g(tau) = E_adv + c D_nat (exact, all test points)", xlabel="tau", ylabel="g")
    axes[0].legend(fontsize=7)
    axes[1].set(title=f"online exponential weights, c={settings['online']['c']:g}", xlabel="rounds T",
                ylabel="regret vs best fixed tau")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out_png)
    plt.close(fig)


# -------------------------------------------------------------------------------------------- beyond: n3 sweep
def n3_sweep(out_csv, out_png, *, pass_files: dict, settings: dict, scale: str, seed: int) -> list[dict]:
    """Robust error of Algorithm 1 (and the linear protocol) vs n3 at a fixed tau and sigma.
    ``pass_files``: (method, n3) -> npz."""
    from .. import provenance

    tau, sigma = float(settings["tau"]), float(settings["sigma"])
    passes = {k: load_pass(f) for k, f in pass_files.items()}
    rows, series = [], {}
    for (method, n3), p in sorted(passes.items()):
        res = p.at(sigma)
        r = res.rates(tau)
        info = {**_cell_info(p), "comparable": False, "reason": "beyond the paper (it reports n3 = 1 only)"}
        row = f"{_label(method)} / n3={n3}"
        for col, v in (("E_adv", r["E_adv"]), ("E_nat", r["E_nat"]), ("D_nat", r["D_nat"]),
                       ("E_adv linear protocol", p.linear["E_adv"]), ("test points", p.meta["n_test"]),
                       ("seconds", p.meta["seconds"])):
            unit = {"test points": "count", "seconds": "seconds"}.get(col, "fraction")
            rows.append({"row": row, "column": col, "value": float(v), "unit": unit, **info})
        series.setdefault(method, []).append((n3, r["E_adv"]))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method, pts in series.items():
        pts.sort()
        ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", label=_label(method))
    ax.set(xscale="log", xlabel="adversarial subspace dimension n3", ylabel=f"robust error E_adv (tau={tau:g})",
           ylim=(-0.02, 1.02), title=f"Algorithm 1, sigma={sigma:g}")
    ax.legend()
    fig.tight_layout()
    _save(fig, out_png)
    plt.close(fig)
    provenance.write_result(rows, out_csv, _provenance("n3_sweep", scale, settings, seed,
                                                       {f"{m}/n3={n}": p for (m, n), p in passes.items()}))
    return rows


# ------------------------------------------------------------------------------------------------ beyond: theory
def theory(out_csv, out_png, *, settings: dict, scale: str, seed: int) -> list[dict]:
    """Theorems 2.1 / 2.2 on synthetic well-separated clusters (:func:`advrep.abstain.theory.theorem22_rows`)."""
    from .. import provenance
    from .theory import theorem22_rows

    recs = theorem22_rows(tuple(settings["n2"]), tau=settings["tau"], k=settings["k"],
                          m_per_class=settings["m_per_class"], test_per_class=settings["test_per_class"],
                          sep=settings["sep"], radius=settings["radius"], seed=seed)
    units = {k: "fraction" for k in ("E_adv", "line_within_tau_of_wrong", "bound", "D_nat", "E_adv_nearest_neighbour",
                                     "E_adv_linear")}
    rows = [{**r, "status": "ok", "comparable": False, "reason": "synthetic check of a theorem, not a paper number",
             "dataset": "synthetic simplex clusters"} for r in long_format(recs, "n2", units=units)]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    n2 = [r["n2"] for r in recs]
    for key, lab, style in (("E_adv", "Algorithm 1 robust error (measured)", "o-"),
                            ("bound", "Theorem 2.2 bound m (tau/r)^(n2-1) (capped at 1)", "k--"),
                            ("E_adv_nearest_neighbour", "nearest neighbour, no abstention (Thm 2.1)", "s-"),
                            ("E_adv_linear", "linear protocol (Thm 2.1)", "^-")):
        ax.plot(n2, [r[key] for r in recs], style, label=lab)
    ax.set(xscale="log", xlabel="feature dimension n2", ylabel="robust error", ylim=(-0.02, 1.05),
           title=f"n3=1, tau={settings['tau']:g}, {settings['k']} clusters {settings['sep']:g} apart")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out_png)
    plt.close(fig)
    prov = provenance.record(paper="abstain", target="theory", scale=scale, settings=settings, seed=seed,
                             datasets=[{"name": "synthetic simplex clusters", "source": "generated"}])
    provenance.write_result(rows, out_csv, prov)
    return rows
