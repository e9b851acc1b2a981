"""BPDA-style PGD: the defended model decides, a differentiable surrogate steers.

Backward Pass Differentiable Approximation (Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of
Security: Circumventing Defenses to Adversarial Examples", ICML 2018): when a defended model's input gradient is
useless (zero almost everywhere, as through a quantisation, or distorted, as through an adaptive ODE solver whose
step-size control and error estimate are part of the computation graph), attack it with the gradient of a
differentiable function that approximates it (the same network without the quantisation, the same ODE network
integrated on a fixed fine grid, ...) while every loss value and every success verdict still comes from the
defended model itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from .base import register
from .core import eval_mode
from .gradient import PGD, AlphaSpec, LossSpec, gradient_attack


@register
class BPDAPGD(PGD):
    """PGD (L-inf or L2) whose ascent direction comes from a surrogate: BPDA (Athalye, Carlini & Wagner, ICML 2018).

    Args:
        gradient_model: the differentiable surrogate, a module (attacked in eval mode, like ``model``; its mode is
            restored afterwards) or a callable ``x -> logits`` on the same inputs in [0, 1].  ``None``: exactly
            :class:`~advrep.attacks.gradient.PGD` (same iterates, same verdicts, same calls bit for bit).
        steps, alpha, random_start, restarts, loss, seed: as for :class:`~advrep.attacks.gradient.PGD`; the same
            ``loss`` is taken of both models' logits.

    Each step forwards ``model`` (the defended one) on the iterate without building a graph: that forward decides
    which samples are broken (each keeps its first iterate ``model`` misclassifies and is not attacked further, as
    in PGD) and gives the objective's value.  The step direction is the input gradient of ``loss`` of
    ``gradient_model``, taken on the unbroken samples only: per sample the objective is
    ``L(model(z)).detach() + L(gradient_model(z)) - L(gradient_model(z)).detach()``, whose value is the defended
    model's loss and whose gradient is the surrogate's (the identity-on-the-backward-pass form of BPDA).  Why
    this form and not ``L(gradient_model(z))`` plus a separate check: the verdicts, the early stop and the
    objective value the iteration sees are the defended model's, so nothing the attack reports rests on the
    surrogate; and the defended model needs no backward pass at all (an adaptive solver's graph is never built).

    ``model_calls`` counts forward passes of ``model`` only, exactly as for PGD (``steps + 1`` per restart for a
    sample never broken).  Surrogate passes (one forward and one backward per ascent step per unbroken sample,
    i.e. ``model_calls`` minus the number of restarts the sample took part in) are not counted.

    Example: an ODE network ``net`` of the model zoo (``sonet``, ``soblock``, ``odenet``) whose forward integrates
    with dopri5 at tol 0.1 is attacked through a weight-sharing copy on a fixed fine grid::

        from advrep.models.ode import with_solver
        run_attack("bpda_pgd", net, x, y, eps=8 / 255, gradient_model=with_solver(net, "rk4", step_size=0.05))
    """

    name = "bpda_pgd"

    def __init__(self, model, *, eps, norm="linf", gradient_model: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 steps: int = 10, alpha: AlphaSpec = None, random_start: bool = True, restarts: int = 1,
                 loss: LossSpec = "ce", seed: int | None = 0):
        super().__init__(model, eps=eps, norm=norm, steps=steps, alpha=alpha, random_start=random_start,
                         restarts=restarts, loss=loss, seed=seed)
        if gradient_model is not None and not callable(gradient_model):
            raise TypeError(f"gradient_model must be a module or a callable x -> logits, got {type(gradient_model)}")
        self.gradient_model = gradient_model

    def _run(self, x, y, eps):
        g = self.gradient_model
        if g is None:
            return super()._run(x, y, eps)
        mode = eval_mode(g) if isinstance(g, nn.Module) else contextlib.nullcontext()
        with mode:
            return gradient_attack(self.model, x, y, eps, norm=self.norm, loss=self.loss, steps=self.steps,
                                   alpha=self.alpha, random_start=self.random_start, restarts=self.restarts,
                                   generator=self.generator(x), gradient_model=g)

    def __repr__(self):
        keys = {k: v for k, v in vars(self).items() if k not in ("model", "gradient_model")}
        g = self.gradient_model
        keys["gradient_model"] = None if g is None else type(g).__name__
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in keys.items())})"
