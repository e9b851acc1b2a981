"""Table 1 (paper L89-98) and Figure 1's stated limits (L115-117) as long-format rows.

Table 1: CIFAR-10, ``n3 = 1``, 512-d contrastive features; for each feature kind (self-supervised, supervised) and
each sigma group (``sigma = 0, 0.9 tau, tau``): the linear protocol (``E_nat``, ``E_adv``; no abstention, the same
numbers in every sigma group) and Algorithm 1 at ``tau = 3.0`` and ``2.0`` (``E_nat``, ``E_adv``, ``D_nat``), all in
percent over every test point.  Row/column labels are those of ``published/abstain.layout.yaml``.

Common random numbers: every protocol and every sigma sees the same random line per test point (one
:func:`random_subspaces` draw per feature set).  Sigma only changes the kept training set; every distinct sigma
value gets one exact adversary pass, which serves every tau at that sigma.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .adversary import AttackResult, tau_star_multi
from .defence import nearest_other_label_distance, preprocess
from .linear import fit_linear, linear_adversary_wins, linear_predict
from .subspace import random_subspaces

FEATURES = ("Self-supervised", "Supervised")
TAUS = (3.0, 2.0)
SIGMA_GROUPS = (("0", 0.0), ("0.9tau", 0.9), ("tau", 1.0))
COLUMNS = ("E_nat", "E_adv", "D_nat")


def evaluate_features(train_feats, train_labels, test_feats, test_labels, *, taus=TAUS, sigma_groups=SIGMA_GROUPS,
                      n3: int = 1, seed: int = 0, linear: tuple[np.ndarray, np.ndarray] | None = None,
                      k0: int = 128, progress: bool = False) -> dict:
    """Every number of one Table 1 feature block (fractions), plus the per-sigma ``AttackResult``s.

    ``linear``: ``(W, b)`` of the linear protocol; fitted here by multinomial logistic regression when omitted.
    Returns ``{"linear": {E_nat, E_adv}, "ours": {(tau, sigma_label): {E_nat, E_adv, D_nat}},
    "attacks": {sigma: AttackResult}, "kept": {sigma: n_kept}}``.
    """
    X = np.asarray(train_feats, dtype=np.float64)
    y = np.asarray(train_labels).astype(np.int64)
    T = np.asarray(test_feats, dtype=np.float64)
    ty = np.asarray(test_labels).astype(np.int64)
    B = random_subspaces(len(T), T.shape[1], n3, seed)
    if linear is None:
        linear = fit_linear(X, y, n_classes=int(max(y.max(), ty.max())) + 1)
    W, b = linear
    out = {"linear": {"E_nat": float(np.mean(linear_predict(W, b, T) != ty)),
                      "E_adv": float(np.mean(linear_adversary_wins(W, b, T, ty, B)))},
           "ours": {}, "attacks": {}, "kept": {}}
    sigmas = sorted({round(f * tau, 12) for tau in taus for _, f in sigma_groups})
    nearest_other = nearest_other_label_distance(X, y) if any(s > 0 for s in sigmas) else None
    keeps = [preprocess(X, y, s, nearest_other=nearest_other) for s in sigmas]
    if progress:
        print("kept per sigma: " + ", ".join(f"{s}: {k.sum()}" for s, k in zip(sigmas, keeps)), flush=True)
    attacks = tau_star_multi(X, y, T, ty, keeps, subspaces=B, k0=k0, progress=progress)
    for s, keep, att in zip(sigmas, keeps, attacks):
        out["attacks"][s] = att
        out["kept"][s] = int(keep.sum())
    for tau in taus:
        for lab, f in sigma_groups:
            out["ours"][(tau, lab)] = out["attacks"][round(f * tau, 12)].rates(tau)
    return out


def _fmt_tau(tau: float) -> str:
    return f"{tau:.1f}"


def table1_rows(results: Mapping[str, dict], *, taus=TAUS, sigma_groups=SIGMA_GROUPS) -> list[dict]:
    """Long-format rows ``{row, column, value, unit}`` in the paper's layout (values in percent).

    ``results``: feature-kind label (``"Self-supervised"``, ``"Supervised"``) -> :func:`evaluate_features` output.
    Order: sigma group, then feature kind, then protocol (linear, tau=3.0, tau=2.0), columns E_nat, E_adv, D_nat;
    the linear protocol has no D_nat cell (a blank in the layout).
    """
    rows = []
    kinds = [k for k in FEATURES if k in results] + [k for k in results if k not in FEATURES]
    for lab, _ in sigma_groups:
        for kind in kinds:
            res = results[kind]
            name = f"{kind} / Linear Protocol (sigma={lab})"
            for col in ("E_nat", "E_adv"):
                rows.append({"row": name, "column": col, "value": 100.0 * res["linear"][col], "unit": "percent"})
            for tau in taus:
                name = f"{kind} / Ours (tau={_fmt_tau(tau)}, sigma={lab})"
                cell = res["ours"][(tau, lab)]
                for col in COLUMNS:
                    rows.append({"row": name, "column": col, "value": 100.0 * cell[col], "unit": "percent"})
    return rows


def tradeoff_curve(result: AttackResult, taus) -> list[dict]:
    """Figure 1's curve for one (features, sigma): ``A_adv = 1 - E_adv`` and ``D_nat`` (fractions) per tau."""
    out = []
    for tau in taus:
        r = result.rates(float(tau))
        out.append({"tau": float(tau), "A_adv": 1.0 - r["E_adv"], "D_nat": r["D_nat"], "E_nat": r["E_nat"]})
    return out


def figure1_rows(result: AttackResult, *, small_tau: float | None = None) -> list[dict]:
    """The two limits Figure 1's text states (L115-117), labels and units as in ``abstain.csv``.

    "small tau": ``small_tau`` defaults to the smallest natural nearest distance, the largest tau at which every
    natural point is abstained on (``D_nat = 1``); units ``fraction``.  "tau -> infinity (nearest neighbor search)":
    ``E_adv = mean 1{tau* < inf}``, ``D_nat = 0``; units ``percent``.
    """
    if small_tau is None:
        small_tau = float(np.min(result.d_nn))
    small = result.rates(small_tau)
    inf = result.rates(np.inf)
    return [
        {"row": "small tau", "column": "A_adv", "value": 1.0 - small["E_adv"], "unit": "fraction"},
        {"row": "small tau", "column": "D_nat", "value": small["D_nat"], "unit": "fraction"},
        {"row": "tau -> infinity (nearest neighbor search)", "column": "A_adv",
         "value": 100.0 * (1.0 - float(np.mean(np.isfinite(result.tau_star)))), "unit": "percent"},
        {"row": "tau -> infinity (nearest neighbor search)", "column": "D_nat", "value": 100.0 * inf["D_nat"],
         "unit": "percent"},
    ]


def long_format(records, row_key: str, *, units: Mapping[str, str] | None = None, prefix: str = "") -> list[dict]:
    """Flatten records (e.g. :func:`advrep.abstain.tuning.tune_and_evaluate`, :func:`~advrep.abstain.tuning.
    regret_rows`, :func:`advrep.abstain.theory.theorem22_rows`) into ``{row, column, value, unit}`` rows: one row
    label per record (``f"{prefix}{row_key}={record[row_key]}"``), one column per other numeric field.
    ``units`` maps a field to its unit (default ``"other"``)."""
    units = dict(units or {})
    out = []
    for rec in records:
        label = f"{prefix}{row_key}={rec[row_key]}"
        for k, v in rec.items():
            if k == row_key or not isinstance(v, (int, float, np.integer, np.floating)):
                continue
            out.append({"row": label, "column": k, "value": float(v), "unit": units.get(k, "other")})
    return out

