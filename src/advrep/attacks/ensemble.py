"""Per-sample worst case over several attacks (or several settings of one attack, e.g. PGD step sizes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .base import run_attack
from .core import AttackResult, eps_vector, eval_mode


def worst_case(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[tuple[str, Mapping]], *,
               eps, norm: str = "linf", skip_broken: bool = True, return_index: bool = False,
               clean_correct: torch.Tensor | None = None) -> AttackResult | tuple[AttackResult, torch.Tensor]:
    """A sample is broken if ANY of ``attacks`` (a list of ``(name, params)`` for :func:`run_attack`) breaks it.

    ``x_adv`` of a broken sample is the one of the first attack (in list order) that broke it; an unbroken sample
    gets the last attack's ``x_adv``.  ``model_calls``: the calls of the attacks run before the breaking one (their
    whole budgets) plus the breaking attack's calls until success; for unbroken samples, every attack's calls.
    ``skip_broken`` (default) runs each attack only on the samples still unbroken; with ``skip_broken=False``
    every attack sees the whole batch, so the success set is exactly the OR of the individual runs.
    ``return_index`` also returns, per sample, the index of the breaking attack (-1: unbroken).  The model's verdict
    at the clean ``x`` is taken once (or given as ``clean_correct``) and handed to every attack, so none repeats it.
    Used for Voronoi-style evaluation (several PGD step sizes per sample) and for OAAT's GAMA + AA + Square.
    """
    if not attacks:
        raise ValueError("worst_case needs at least one attack")
    x, y = x.detach(), y.detach()
    e = eps_vector(eps, x)
    n = x.shape[0]
    success = torch.zeros(n, dtype=torch.bool, device=x.device)
    x_adv = x.clone()
    calls = torch.zeros(n, dtype=torch.long, device=x.device)
    index = torch.full((n,), -1, dtype=torch.long, device=x.device)
    if clean_correct is None:
        with eval_mode(model), torch.no_grad():
            clean_correct = model(x).argmax(1) == y
    clean_correct = torch.as_tensor(clean_correct, device=x.device)
    for k, (name, params) in enumerate(attacks):
        rows = (~success).nonzero().squeeze(1) if skip_broken else torch.arange(n, device=x.device)
        if rows.numel() == 0:
            break
        r = run_attack(name, model, x[rows], y[rows], eps=e[rows], norm=norm, clean_correct=clean_correct[rows],
                       **dict(params))
        fresh = ~success[rows]  # not broken by an earlier attack
        rf = rows[fresh]
        calls[rf] += r.model_calls[fresh]
        new = fresh & r.success
        x_adv[rf] = r.x_adv[fresh]
        index[rows[new]] = k
        success[rows[new]] = True
    return (AttackResult(x_adv=x_adv, success=success, model_calls=calls), index) if return_index else \
        AttackResult(x_adv=x_adv, success=success, model_calls=calls)
