"""One evaluation pass that writes a per-sample table, and the pure aggregations every paper table is made of.

:func:`evaluate_per_sample` runs every attack on every sample (each attack sees the whole batch, so the worst case
is exactly the OR of the per-attack successes), optionally the minimal adversarial distance
(:func:`advrep.attacks.minimal_distance`) and the two gradient norms of lipreg, and returns one row per sample:

==========================  ==========================================================================================
column                      meaning
==========================  ==========================================================================================
``index``                   position of the sample in the data, in iteration order
``label``                   true class
``clean_pred``              the model's prediction at the clean input (eval mode)
``clean_correct``           ``clean_pred == label``
``success:<attack>``        the attack's verdict (:class:`~advrep.attacks.AttackResult`); True for a sample already
                            misclassified at x (attack contract: success with 0 calls)
``calls:<attack>``          forward passes the attack spent on the sample until its first success (or in all)
``worst_success``           OR of ``success:<attack>`` over every attack
``robust_correct``          ``clean_correct & ~worst_success``
``min_distance``            (when requested) minimal adversarial distance found; 0 for misclassified, inf if none
``grad_loss_l2``            (``gradient_norms``) ||grad_x CE(f(x), y)||_2 at the clean input
``grad_f_2inf``             (``gradient_norms``) ||grad_x f(x)||_{2,inf}: max over classes k of ||grad_x f_k(x)||_2
==========================  ==========================================================================================

The model Jacobian's (2, inf) norm (lipreg = Finlay, Calder, Abbasi & Oberman, text copy
``shared/papers/001_92ec5d875816d6ad.txt``; Figure 4 caption L513, Tables 2/3 L456-471, detection rule (7.1) L534):
the operator norm of the Jacobian from (R^d, ||.||_2) to (R^K, ||.||_inf), i.e. ``max_k ||grad_x f_k(x)||_2`` (the
largest row norm).  Input 2-norm, output inf-norm is what L504/L515 say: the Lipschitz constant of a *dataset* in
the (2, inf) norm is the reciprocal of the smallest out-of-class 2-norm distance, which holds for one-hot labels
(||y_i - y_j||_inf = 1).  ``f`` is the model's map into the label space Y (L76), the probability simplex (L239), so
by default ``f = softmax(logits)`` (``jacobian_of="softmax"``); ``"logits"`` takes the raw logits instead.  The
tables rule logits out: per sample ||grad CE||_2 = ||sum_k (p_k - 1[k=y]) grad z_k||_2 <= 2 (1 - p_y) max_k ||grad
z_k||_2, so mean ||grad l||_2 could not exceed 2 x mean ||grad z||_{2,inf}; Table 2's undefended row (L459) has
1.90 vs 0.37 and Table 3's (L471) 5.19 vs 0.14.  With softmax, ||grad l||_2 = ||grad p_y||_2 / p_y, consistent.
Both norms are taken at the clean test inputs over all test images ("sampling the norm of the gradient on the test
data", L515), in eval mode, one backward pass for the loss and one per class for the Jacobian (samples are
independent in eval mode, so the gradient of a batch sum is each sample's own gradient).

Aggregations (pure functions of the table): :func:`clean_accuracy`, :func:`robust_accuracy`,
:func:`accuracy_curve`, :func:`distance_nauc`, :func:`median_adversarial_distance`,
:func:`median_time_to_success`, :func:`mean_gradient_norm` / :func:`max_gradient_norm`, and
:func:`summary_rows` (long-format result rows for :func:`advrep.provenance.write_result`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from .. import io
from ..attacks import eval_mode, run_attack
from ..attacks import minimal_distance as _minimal_distance
from .curves import nauc as _nauc

SUCCESS, CALLS = "success:", "calls:"
GRAD_COLUMNS = {"loss": "grad_loss_l2", "model": "grad_f_2inf"}
JACOBIAN_OF = ("softmax", "logits")


# -- the evaluation pass -----------------------------------------------------------------------------------------

def _device(model: nn.Module, device) -> torch.device:
    """``"auto"``/``None``: where the model's parameters are (CPU for a parameter-free model); otherwise the given
    device, to which the model is moved (in place, as :meth:`torch.nn.Module.to` does)."""
    if device in (None, "auto"):
        p = next(iter(model.parameters()), None)
        return p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device)
    return device


def _is_tensor_pair(data) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)


def _batches(data, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` tensors (cut into batches of ``batch_size``) or any iterable of ``(x, y, ...)`` batches (a
    DataLoader)."""
    if _is_tensor_pair(data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError("x and y have different lengths")
        for s in range(0, x.shape[0], batch_size):
            yield x[s:s + batch_size], y[s:s + batch_size]
        return
    for batch in data:
        if isinstance(batch, Mapping):
            yield batch["x"], batch["y"]
        else:
            yield batch[0], batch[1]


def input_gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, jacobian_of: str = "softmax"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(||grad_x CE(f(x), y)||_2, ||grad_x f(x)||_{2,inf})`` at ``x`` in eval mode (module docstring:
    ``f`` = softmax probabilities by default, or the logits; the (2, inf) norm is the largest over classes of the L2
    norm of one output's input gradient)."""
    if jacobian_of not in JACOBIAN_OF:
        raise ValueError(f"jacobian_of must be one of {JACOBIAN_OF}, got {jacobian_of!r}")
    with eval_mode(model), torch.enable_grad():
        z = x.detach().clone().requires_grad_(True)
        logits = model(z)
        loss = F.cross_entropy(logits, y, reduction="none").sum()  # sum: sample i's gradient is its own loss's
        (g,) = torch.autograd.grad(loss, z, retain_graph=True)
        loss_norm = g.flatten(1).norm(dim=1)
        out = logits.softmax(1) if jacobian_of == "softmax" else logits
        k = out.shape[1]
        rows = []
        for j in range(k):
            (gj,) = torch.autograd.grad(out[:, j].sum(), z, retain_graph=j < k - 1)
            rows.append(gj.flatten(1).norm(dim=1))
        jac_norm = torch.stack(rows, 1).amax(1)
    return loss_norm.detach(), jac_norm.detach()


def evaluate_per_sample(model: nn.Module, loader_or_tensors, *, attacks: Sequence[tuple[str, str, Mapping]],
                        eps, norm: str = "linf", minimal_distance: Mapping | None = None,
                        gradient_norms: bool = True, jacobian_of: str = "softmax", device="auto",
                        batch_size: int = 256) -> pd.DataFrame:
    """Evaluate ``model`` sample by sample (columns in the module docstring).

    ``loader_or_tensors``: ``(x, y)`` tensors (batched by ``batch_size``) or an iterable of ``(x, y)`` batches, x in
    [0, 1].  ``attacks``: ``(label, name, params)`` triples, each run by :func:`advrep.attacks.run_attack` at
    ``eps`` in ``norm`` on every sample (labels name the columns and must be unique).  ``minimal_distance``: keyword
    arguments of :func:`advrep.attacks.minimal_distance` (``max_eps`` required; ``norm`` defaults to ``norm``), or
    ``None`` for no ``min_distance`` column.  ``gradient_norms``: add ``grad_loss_l2`` and ``grad_f_2inf``
    (``jacobian_of``: ``"softmax"`` or ``"logits"``).  Attacks run the model in eval mode and restore its mode.

    The settings are kept in ``df.attrs`` (eps, norm, attacks, minimal_distance, jacobian_of).
    """
    labels = [a[0] for a in attacks]
    if len(set(labels)) != len(labels):
        raise ValueError(f"attack labels must be unique, got {labels}")
    if any(not isinstance(lab, str) or not lab for lab in labels):
        raise ValueError("attack labels must be non-empty strings")
    md = dict(minimal_distance) if minimal_distance is not None else None
    if md is not None and "max_eps" not in md:
        raise ValueError("minimal_distance needs max_eps")
    dev = _device(model, device)
    parts: dict[str, list[np.ndarray]] = {}

    def add(col, value):
        parts.setdefault(col, []).append(value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value)

    start = 0
    for x, y in _batches(loader_or_tensors, batch_size):
        x, y = x.to(dev), y.to(dev).long()
        n = x.shape[0]
        if n == 0:
            continue
        with eval_mode(model), torch.no_grad():
            pred = model(x).argmax(1)
        add("index", np.arange(start, start + n))
        add("label", y)
        add("clean_pred", pred)
        add("clean_correct", pred == y)
        worst = torch.zeros(n, dtype=torch.bool, device=dev)
        for label, name, params in attacks:
            r = run_attack(name, model, x, y, eps=eps, norm=norm, clean_correct=pred == y, **dict(params))
            add(SUCCESS + label, r.success)
            add(CALLS + label, r.model_calls)
            worst |= r.success.to(dev)
        add("worst_success", worst)
        add("robust_correct", (pred == y) & ~worst)
        if md is not None:
            kw = dict(md)
            add("min_distance", _minimal_distance(model, x, y, kw.pop("norm", norm), **kw))
        if gradient_norms:
            gl, gf = input_gradient_norms(model, x, y, jacobian_of=jacobian_of)
            add(GRAD_COLUMNS["loss"], gl)
            add(GRAD_COLUMNS["model"], gf)
        start += n
    if not parts:
        raise ValueError("no samples to evaluate")
    df = pd.DataFrame({col: np.concatenate(v) for col, v in parts.items()})
    for col in df.columns:
        if col in ("clean_correct", "worst_success", "robust_correct") or col.startswith(SUCCESS):
            df[col] = df[col].astype(bool)
        elif col in ("index", "label", "clean_pred") or col.startswith(CALLS):
            df[col] = df[col].astype(np.int64)
    df.attrs.update(eps=float(eps), norm=norm,
                    attacks=[(lab, name, dict(p)) for lab, name, p in attacks], minimal_distance=md,
                    jacobian_of=jacobian_of if gradient_norms else None)
    return df


def write_per_sample(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the per-sample table as CSV, atomically (a reader never sees a half-written file)."""
    path = Path(path)
    with io.atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def read_per_sample(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`write_per_sample` (``inf`` distances survive the round trip)."""
    return pd.read_csv(path)


# -- aggregations (pure functions of the table) ------------------------------------------------------------------

def attack_labels(df: pd.DataFrame) -> list[str]:
    """The attack labels of a per-sample table, in column order."""
    return [c[len(SUCCESS):] for c in df.columns if c.startswith(SUCCESS)]


def _bool(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df:
        raise KeyError(f"the table has no column {col!r}")
    return df[col].to_numpy().astype(bool)


def clean_accuracy(df: pd.DataFrame) -> float:
    """Fraction of samples classified correctly at the clean input."""
    return float(_bool(df, "clean_correct").mean())


def robust_accuracy(df: pd.DataFrame, attack: str | None = None) -> float:
    """Fraction of samples correct at x and not broken: by ``attack`` (a label), or by any attack (``None``:
    the per-sample worst case, ``robust_correct``)."""
    if attack is None:
        return float(_bool(df, "robust_correct").mean())
    return float((_bool(df, "clean_correct") & ~_bool(df, SUCCESS + attack)).mean())


def _distances(data) -> np.ndarray:
    d = data["min_distance"] if isinstance(data, pd.DataFrame) else data
    d = np.asarray(d.detach().cpu() if isinstance(d, torch.Tensor) else d, dtype=float).ravel()
    if np.isnan(d).any():
        raise ValueError("minimal distances contain NaN")
    return d


def accuracy_curve(distances, eps_list: Sequence[float]) -> np.ndarray:
    """Robust accuracy at each eps of ``eps_list``: the fraction of samples whose minimal adversarial distance
    exceeds eps (misclassified samples have distance 0 and never count; unbroken ones have inf and always count).
    ``distances``: a per-sample table (its ``min_distance``) or an array; same rule as
    :func:`advrep.attacks.robust_accuracy_curve`."""
    d = _distances(distances)
    e = np.asarray(list(eps_list), dtype=float)
    if d.size == 0:
        return np.zeros_like(e)
    return (d[None, :] > e[:, None]).mean(1)


def distance_nauc(distances, eps_list: Sequence[float]) -> float:
    """NAUC (voronoi eq. 5, :func:`advrep.evaluate.curves.nauc`) of the curve :func:`accuracy_curve` gives on the
    grid ``eps_list`` (from 0 to eps_max)."""
    return _nauc(eps_list, accuracy_curve(distances, eps_list))


def median_adversarial_distance(distances, *, include_misclassified: bool = True) -> float:
    """Median of the per-sample minimal adversarial distances over the test images (``np.median``: the mean of the
    two middle values for an even count; samples never broken count as inf, so the median is inf when fewer than
    half were broken).

    lipreg (L478) reports the median adversarial distance as "the x-intercept of 50% on the attack curves", whose
    error at eps = 0 is the clean test error (Tables 2/3, "% Err at eps = 0"), and sets eps(x) = 0 for an image
    that is already misclassified (L167): so misclassified images count, with distance 0 (the default).
    ``include_misclassified=False`` takes the median over the clean-correct samples only (needs a table)."""
    d = _distances(distances)
    if not include_misclassified:
        if not isinstance(distances, pd.DataFrame):
            raise ValueError("include_misclassified=False needs the per-sample table (clean_correct)")
        d = d[_bool(distances, "clean_correct")]
    return float(np.median(d)) if d.size else float("nan")


def median_time_to_success(df: pd.DataFrame, attack: str, *, include_misclassified: bool = False) -> float:
    """Median of ``calls:<attack>`` over the samples the attack broke: lipreg's "median time to successful attack
    (as a ratio over one model call)" (L480).  Samples already misclassified at x are successes with 0 calls; they
    were never attacked and are left out unless ``include_misclassified``.  NaN when no sample qualifies."""
    ok = _bool(df, SUCCESS + attack)
    if not include_misclassified:
        ok &= _bool(df, "clean_correct")
    calls = df[CALLS + attack].to_numpy()[ok]
    return float(np.median(calls)) if calls.size else float("nan")


def _grad(df: pd.DataFrame, which: str) -> np.ndarray:
    if which not in GRAD_COLUMNS:
        raise ValueError(f"which must be one of {sorted(GRAD_COLUMNS)}, got {which!r}")
    col = GRAD_COLUMNS[which]
    if col not in df:
        raise KeyError(f"the table has no column {col!r} (evaluate with gradient_norms=True)")
    return df[col].to_numpy(dtype=float)


def mean_gradient_norm(df: pd.DataFrame, which: str = "loss") -> float:
    """Mean over the test images of ||grad_x loss||_2 (``which="loss"``) or ||grad_x f||_{2,inf} (``"model"``):
    lipreg's "mean test statistics" (Tables 2/3), the model's (or loss's) Total Variation estimate."""
    return float(_grad(df, which).mean())


def max_gradient_norm(df: pd.DataFrame, which: str = "loss") -> float:
    """Maximum over the test images: lipreg's "max test statistics", its Lipschitz-constant estimate via (2.3)
    (L515)."""
    return float(_grad(df, which).max())


def summary_rows(df: pd.DataFrame, *, row: str, eps_list: Sequence[float] | None = None, prefix: str = "",
                 comparable: bool = False, reason: str = "", extra: Mapping | None = None) -> list[dict]:
    """Long-format result rows (``row, column, value, unit, status, comparable, reason`` + ``extra``) for
    :func:`advrep.provenance.write_result`: clean accuracy; robust accuracy per attack and worst case; median
    model calls to success per attack; with ``min_distance``: median adversarial distance, and with ``eps_list``
    the accuracy curve on that grid and its NAUC; with gradient columns: mean and max of both norms.  Column names
    start with ``prefix``.  A statistic with no data (e.g. no attack succeeded) is a ``not run`` cell with the
    reason."""
    extra = dict(extra or {})
    rows: list[dict] = []

    def cell(column, value, unit, why_missing=""):
        base = {"row": row, "column": prefix + column, "unit": unit, **extra}
        if value is None or (isinstance(value, float) and np.isnan(value)):
            rows.append({**base, "value": None, "status": "not run", "comparable": False,
                         "reason": why_missing or "no data"})
        else:
            rows.append({**base, "value": float(value), "status": "ok", "comparable": comparable,
                         "reason": reason})

    cell("clean accuracy", clean_accuracy(df), "fraction")
    labels = attack_labels(df)
    for lab in labels:
        cell(f"robust accuracy ({lab})", robust_accuracy(df, lab), "fraction")
    if labels:
        cell("robust accuracy (worst case)", robust_accuracy(df), "fraction")
    for lab in labels:
        cell(f"median model calls to success ({lab})", median_time_to_success(df, lab), "model calls",
             f"{lab} broke no correctly classified sample")
    if "min_distance" in df:
        cell("median adversarial distance", median_adversarial_distance(df), "distance")
        if eps_list is not None:
            for e, a in zip(eps_list, accuracy_curve(df, eps_list)):
                cell(f"accuracy at eps={float(e):g}", a, "fraction")
            cell("NAUC", distance_nauc(df, eps_list), "fraction")
    for which, name in (("loss", "||grad l||_2"), ("model", "||grad f||_2,inf")):
        if GRAD_COLUMNS[which] in df:
            cell(f"mean {name}", mean_gradient_norm(df, which), "")
            cell(f"max {name}", max_gradient_norm(df, which), "")
    return rows
