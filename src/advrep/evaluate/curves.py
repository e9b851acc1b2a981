"""Robust accuracy as a function of eps, and the normalised area under it.

NAUC (voronoi paper, eq. 5): (1 / eps_max) * integral_0^eps_max acc(eps) d eps, here by the trapezoidal rule over
the evaluated eps grid (which must start at 0 and end at eps_max).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..attacks.core import eval_mode
from ..attacks.ensemble import worst_case


def nauc(eps: Sequence[float], acc: Sequence[float]) -> float:
    """Normalised area under a robust-accuracy curve (eq. 5), trapezoidal over the grid ``eps`` (0 ... eps_max)."""
    e, a = np.asarray(eps, dtype=float), np.asarray(acc, dtype=float)
    if e.ndim != 1 or e.shape != a.shape or len(e) < 2:
        raise ValueError("eps and acc must be 1-D of the same length >= 2")
    if e[0] != 0 or np.any(np.diff(e) <= 0):
        raise ValueError("the eps grid must start at 0 and increase")
    return float(np.sum(np.diff(e) * (a[1:] + a[:-1]) / 2.0) / e[-1])


def robust_accuracy_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float],
                       attacks: Sequence[tuple[str, Mapping]], *, norm: str, batch_size: int = 4096
                       ) -> np.ndarray:
    """Per-sample robust correctness (len(eps_list), N) bool: a sample counts as broken at eps if ANY attack of
    ``attacks`` breaks it there (the voronoi paper's per-sample evaluation).  All eps values run in one batched
    pass (the test set repeated once per eps, each copy with its own radius).  Misclassified clean samples are
    broken at every eps (eps = 0 is clean accuracy).  An attack's ``alpha_per_eps: f`` sets its step size to
    f * eps for each sample (a step-size grid that scales with the radius)."""
    n, k = x.shape[0], len(eps_list)
    xs = x.repeat(k, *([1] * (x.ndim - 1)))
    ys = y.repeat(k)
    es = torch.tensor(eps_list, dtype=x.dtype, device=x.device).repeat_interleave(n)
    with eval_mode(model), torch.no_grad():  # the clean verdict once, shared by every copy and every attack
        correct = torch.cat([model(x[s:s + batch_size]).argmax(1) == y[s:s + batch_size]
                             for s in range(0, n, batch_size)]).repeat(k)
    ok = torch.empty(k * n, dtype=torch.bool, device=x.device)
    for s in range(0, k * n, batch_size):
        sl = slice(s, s + batch_size)
        zero = es[sl] == 0
        e = es[sl].clamp_min(1e-12)
        concrete = []
        for name, params in attacks:
            params = dict(params)
            if "alpha_per_eps" in params:
                params["alpha"] = float(params.pop("alpha_per_eps")) * e
            concrete.append((name, params))
        res = worst_case(model, xs[sl], ys[sl], concrete, eps=e, norm=norm, clean_correct=correct[sl])
        ok[sl] = ~(res.success & ~zero) & correct[sl]
    return ok.view(k, n).cpu().numpy()
