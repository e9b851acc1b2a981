"""A gradient-masking check any defence can run (the sanity checks of Athalye, Carlini & Wagner, ICML 2018, Sec. 3
"Identifying obfuscated and masked gradients", and Carlini et al. 2019, "On Evaluating Adversarial Robustness").

A model whose gradients are masked (shattered, vanishing or stochastic) looks robust to gradient attacks only.  The
four checks, all on the same samples and from one :func:`~advrep.evaluate.per_sample.evaluate_per_sample` pass plus
one at a large radius (accuracies are robust accuracies: correct at x and not broken):

``more_pgd_steps``   more PGD steps never help the model: acc(PGD-k_large) <= acc(PGD-k_small) + tol.
``square_vs_pgd``    black-box Square is not stronger than white-box PGD: acc(Square) >= acc(PGD) - tol, with
                     acc(PGD) the lower of the two PGD runs (the strongest white-box result).
``large_eps``        accuracy goes to ~0 at a large radius: acc(PGD-k_large at large_eps) <= tol.  Default
                     ``large_eps``: 0.5 for L-inf, 0.5 sqrt(d) for L2 (d: input dimension): radii at which every
                     input in [0, 1]^d can reach the constant mid-grey image, so a working attack must succeed.
``fgsm_vs_pgd``      single-step FGSM is not stronger than iterative PGD: acc(FGSM) >= acc(PGD) - tol.

Each check returns its numbers and a one-line explanation; a failed check says which and what it suggests.
:func:`masking_rows` turns the checks into long-format result rows (value 1/0 for passed, plus the numbers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .per_sample import _batches, _is_tensor_pair, evaluate_per_sample, robust_accuracy

CHECKS = ("more_pgd_steps", "square_vs_pgd", "large_eps", "fgsm_vs_pgd")
DEFAULT_TOLERANCES = {"more_pgd_steps": 0.02, "square_vs_pgd": 0.02, "large_eps": 0.05, "fgsm_vs_pgd": 0.02}


@dataclass
class MaskingCheck:
    """One check: ``name`` (see :data:`CHECKS`), ``passed``, the numbers it compared and a one-line explanation."""

    name: str
    passed: bool
    values: dict[str, float] = field(default_factory=dict)
    explanation: str = ""


def default_large_eps(norm: str, dim: int) -> float:
    """0.5 (L-inf) or 0.5 sqrt(dim) (L2): every input in [0, 1]^dim is within that radius of the mid-grey image."""
    return 0.5 if norm == "linf" else 0.5 * math.sqrt(dim)


def gradient_masking_checks(model: nn.Module, loader_or_tensors, *, eps: float, norm: str = "linf",
                            steps: tuple[int, int] = (10, 100), large_eps: float | None = None,
                            square_queries: int = 500, tolerances: Mapping[str, float] | None = None,
                            pgd_params: Mapping | None = None, seed: int = 0, device="auto",
                            batch_size: int = 256) -> list[MaskingCheck]:
    """Run the four checks of the module docstring on ``loader_or_tensors`` (``(x, y)`` tensors or ``(x, y)``
    batches, x in [0, 1]) at radius ``eps`` in ``norm``.

    ``steps``: (k_small, k_large) PGD steps (step size 2.5 eps / steps each, random start).  ``square_queries``:
    Square's query budget (small by default for speed; raise it for a final evaluation).  ``tolerances``: per
    check (keys of :data:`DEFAULT_TOLERANCES`; missing keys keep their defaults), as fractions of the samples.
    ``pgd_params``: extra PGD parameters (e.g. ``restarts``, ``loss``).  All attacks use ``seed``.
    """
    k_small, k_large = (int(s) for s in steps)
    if not 0 < k_small < k_large:
        raise ValueError(f"steps must be (k_small, k_large) with 0 < k_small < k_large, got {steps}")
    tol = dict(DEFAULT_TOLERANCES)
    unknown = set(tolerances or {}) - set(tol)
    if unknown:
        raise ValueError(f"unknown tolerances {sorted(unknown)}; known: {sorted(tol)}")
    tol.update({k: float(v) for k, v in (tolerances or {}).items()})
    pgd = {**dict(pgd_params or {}), "seed": seed}
    small, large = f"pgd{k_small}", f"pgd{k_large}"
    attacks = [(small, "pgd", {**pgd, "steps": k_small}), (large, "pgd", {**pgd, "steps": k_large}),
               ("fgsm", "fgsm", {"seed": seed}), ("square", "square", {"n_queries": square_queries, "seed": seed})]
    if _is_tensor_pair(loader_or_tensors):
        data = tuple(loader_or_tensors)  # tensors: reusable as they are
    else:
        xs, ys = zip(*_batches(loader_or_tensors, batch_size))  # a loader may be one-shot: read it once
        data = (torch.cat(xs), torch.cat(ys))
    df = evaluate_per_sample(model, data, attacks=attacks, eps=eps, norm=norm, gradient_norms=False,
                             device=device, batch_size=batch_size)
    if large_eps is None:
        large_eps = default_large_eps(norm, int(data[0][0].numel()))
    big = evaluate_per_sample(model, data, attacks=[("pgd_large_eps", "pgd", {**pgd, "steps": k_large})],
                              eps=large_eps, norm=norm, gradient_norms=False, device=device, batch_size=batch_size)
    clean = float(df["clean_correct"].mean())
    a_small, a_large = robust_accuracy(df, small), robust_accuracy(df, large)
    a_pgd = min(a_small, a_large)
    a_fgsm, a_square = robust_accuracy(df, "fgsm"), robust_accuracy(df, "square")
    a_big = robust_accuracy(big, "pgd_large_eps")
    n = len(df)

    def check(name, passed, values, ok_text, fail_text):
        values = {"n": float(n), "clean accuracy": clean, **values, "tolerance": tol[name]}
        verdict = "passed" if passed else "FAILED"
        return MaskingCheck(name, bool(passed), values, f"{name} {verdict}: {ok_text if passed else fail_text}")

    out = [
        check("more_pgd_steps", a_large <= a_small + tol["more_pgd_steps"],
              {f"acc PGD-{k_small}": a_small, f"acc PGD-{k_large}": a_large},
              f"PGD-{k_large} ({a_large:.3f}) is at least as strong as PGD-{k_small} ({a_small:.3f})",
              f"PGD-{k_large} ({a_large:.3f}) is weaker than PGD-{k_small} ({a_small:.3f}) by more than "
              f"{tol['more_pgd_steps']:g}: more ascent steps hurt the attack, the loss surface misleads gradients "
              "(masked/shattered gradients)"),
        check("square_vs_pgd", a_square >= a_pgd - tol["square_vs_pgd"],
              {"acc Square": a_square, "acc PGD": a_pgd, "Square queries": float(square_queries)},
              f"black-box Square ({a_square:.3f}) is not stronger than white-box PGD ({a_pgd:.3f})",
              f"black-box Square ({a_square:.3f}) beats white-box PGD ({a_pgd:.3f}) by more than "
              f"{tol['square_vs_pgd']:g}: the gradients do not lead to adversarials the model has (gradient "
              "masking/obfuscation)"),
        check("large_eps", a_big <= tol["large_eps"],
              {"acc PGD at large eps": a_big, "large eps": float(large_eps)},
              f"PGD-{k_large} at eps={large_eps:g} ({norm}) brings accuracy to {a_big:.3f}",
              f"PGD-{k_large} at eps={large_eps:g} ({norm}), where every input can reach a blank image, leaves "
              f"accuracy {a_big:.3f} > {tol['large_eps']:g}: the attack cannot follow the gradients (masking)"),
        check("fgsm_vs_pgd", a_fgsm >= a_pgd - tol["fgsm_vs_pgd"],
              {"acc FGSM": a_fgsm, "acc PGD": a_pgd},
              f"single-step FGSM ({a_fgsm:.3f}) is not stronger than iterative PGD ({a_pgd:.3f})",
              f"single-step FGSM ({a_fgsm:.3f}) beats iterative PGD ({a_pgd:.3f}) by more than "
              f"{tol['fgsm_vs_pgd']:g}: iterating on the gradient hurts, a sign of masked/shattered gradients"),
    ]
    return out


def failed(checks: Sequence[MaskingCheck]) -> list[str]:
    """Names of the checks that failed."""
    return [c.name for c in checks if not c.passed]


def masking_rows(checks: Sequence[MaskingCheck], *, row: str = "gradient masking", extra: Mapping | None = None
                 ) -> list[dict]:
    """Long-format result rows: per check ``<name>: passed`` (1.0 / 0.0) and ``<name>: <number>`` for each of its
    numbers; the explanation goes in a ``note`` column.  Not comparable with any paper (a diagnostic)."""
    extra = dict(extra or {})
    rows = []
    for c in checks:
        base = {"row": row, "status": "ok", "comparable": False, "reason": "diagnostic, not a paper number",
                "note": c.explanation, **extra}
        rows.append({**base, "column": f"{c.name}: passed", "value": 1.0 if c.passed else 0.0, "unit": "bool"})
        for key, value in c.values.items():
            unit = "fraction" if key.startswith("acc") or key in ("clean accuracy", "tolerance") else ""
            rows.append({**base, "column": f"{c.name}: {key}", "value": float(value), "unit": unit})
    return rows
