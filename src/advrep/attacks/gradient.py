"""Hand-written white-box gradient attacks on :func:`advrep.attacks.core.maximize`: PGD (L-inf / L2), FGSM / FGM,
I-FGSM (BIM) and the Carlini-Wagner margin-loss PGD.  Each sample is tracked separately: its first misclassified
iterate is kept and it is dropped from later forward passes, so a broken sample costs nothing more (and
``model_calls`` is its exact time to success).

These are the implementations adversarial training and evaluation use; each is tested against its library
counterpart (torchattacks / foolbox) in ``tests/test_attacks.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .base import Attack, FirstSuccess, register
from .core import maximize, margin

LossSpec = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
AlphaSpec = float | torch.Tensor | Sequence[float] | Callable[[int], float] | None


def per_sample_loss(loss: LossSpec) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``"ce"`` (cross-entropy), ``"margin"`` (Carlini-Wagner: max_{j!=y} z_j - z_y on logits) or a callable
    ``(logits, y) -> (B,)``; all per sample, to be maximised."""
    if callable(loss):
        return loss
    if loss == "ce":
        return lambda out, y: F.cross_entropy(out, y, reduction="none")
    if loss == "margin":
        return margin
    raise ValueError(f"loss must be 'ce', 'margin' or a callable, got {loss!r}")


def step_schedule(alpha: AlphaSpec, eps: torch.Tensor, steps: int, rows: torch.Tensor | None = None,
                  default: float = 2.5):
    """A step size for :func:`maximize` from a constant, a per-step list, or a callable ``step -> float``;
    ``None`` means ``default * eps / steps`` per sample (2.5 eps / steps: every point of the ball is reachable
    from any start).  A (B,) tensor is a per-sample constant (indexed by ``rows`` when a subset is attacked)."""
    if alpha is None:
        return default * eps / max(steps, 1)
    if isinstance(alpha, torch.Tensor) and alpha.ndim == 1:
        return alpha.to(eps) if rows is None else alpha.to(eps)[rows]
    if callable(alpha):
        return alpha
    if isinstance(alpha, Sequence) and not isinstance(alpha, str):
        if len(alpha) < steps:
            raise ValueError(f"step-size list has {len(alpha)} entries for {steps} steps")
        return lambda step: alpha[step]
    return float(alpha)


def tracked_ascent(tracker: FirstSuccess, rows: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, *, norm: str,
                   loss: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], steps: int, alpha,
                   init, generator: torch.Generator | None,
                   gradient_model: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
    """One projected-ascent run of :func:`maximize` on ``x`` (= the tracked batch's rows ``rows``).

    ``loss(logits, local, step)`` gives the per-sample loss of the forwarded rows ``local`` (indices into ``x``).
    The tracker records each sample's first success and its call count; a broken sample's loss is masked out (it
    no longer moves) and, once most are broken, it is no longer forwarded.  The final iterate is checked with one
    more (counted) call.

    ``gradient_model`` (BPDA, see :class:`~advrep.attacks.bpda.BPDAPGD`): when given, the tracked model is forwarded
    without a graph (its verdicts and call counts only) and the ascent direction is the input gradient of ``loss``
    on ``gradient_model``'s logits, taken on the still unbroken rows only; the objective's value stays the tracked
    model's loss (``value(true) + value(surrogate) - value(surrogate).detach()``).  ``None``: the plain ascent above.
    """
    n = x.shape[0]
    counter = [0]

    def objective(z):
        if gradient_model is not None:
            return substituted(z)
        local, out, live = tracker.logits(z, rows)
        step = counter[0]
        counter[0] += 1
        if out is None:  # every sample broken: nothing moves
            return 0.0 * z.flatten(1)[:, 0]
        if out.shape[0] == n:  # all rows forwarded: mask the broken ones
            value = loss(out, local, step)
            return value if bool(live.all()) else value * live
        per = 0.0 * z.flatten(1)[:, 0]
        if bool(live.any()):
            per = per.index_add(0, local[live], loss(out[live], local[live], step))
        return per

    def substituted(z):
        with torch.no_grad():  # the true model: verdicts and counts, no graph
            local, out, live = tracker.logits(z, rows)
        step = counter[0]
        counter[0] += 1
        per = 0.0 * z.flatten(1)[:, 0]
        if out is None or not bool(live.any()):
            return per
        sel = local[live]
        whole = sel.numel() == n  # then sel is arange(n)
        surrogate = loss(gradient_model(z if whole else z[sel]), sel, step)
        value = loss(out[live], sel, step).detach() + (surrogate - surrogate.detach())
        return value if whole else per.index_add(0, sel, value)

    if n == 0:
        return
    x_last = maximize(objective, x, eps=eps, alpha=alpha, steps=steps, norm=norm, init=init, generator=generator)
    tracker.finish(x_last, rows)


def gradient_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, *, norm: str,
                    loss: LossSpec = "ce", steps: int, alpha: AlphaSpec, random_start: bool, restarts: int = 1,
                    generator: torch.Generator | None = None,
                    gradient_model: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """PGD-type attack with per-sample first-success tracking and restarts on the samples still unbroken;
    returns ``(x_adv, model_calls, success)``.  ``gradient_model``: take the ascent direction from this
    surrogate instead of ``model`` (BPDA; see :func:`tracked_ascent`)."""
    if restarts < 1 or steps < 0:
        raise ValueError("restarts must be >= 1 and steps >= 0")
    fn = per_sample_loss(loss)
    tracker = FirstSuccess(model, x, y)
    for _ in range(restarts):
        rows = tracker.active.nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        ys = y[rows]

        def rows_loss(out, local, step, ys=ys):
            return fn(out, ys if out.shape[0] == ys.shape[0] else ys[local])

        tracked_ascent(tracker, rows, x[rows], eps[rows], norm=norm, steps=steps, generator=generator, loss=rows_loss,
                       alpha=step_schedule(alpha, eps[rows], steps, rows),
                       init="random" if random_start else None, gradient_model=gradient_model)
    return tracker.result()


@register
class PGD(Attack):
    """Projected gradient descent, L-inf or L2 (Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning
    Models Resistant to Adversarial Attacks", ICLR 2018).

    Args:
        steps: number of ascent steps (10, as torchattacks.PGD).
        alpha: step size: a float, a per-step list, a callable ``step -> float`` or a (B,) tensor; ``None``:
            2.5 * eps / steps (the MadryLab ``robustness`` library's rule).
        random_start: start uniformly in the eps-ball (True) or at x.
        restarts: random restarts; each restart only attacks the samples not broken yet.
        loss: ``"ce"`` (cross-entropy, as Madry et al.), ``"margin"`` (CW) or a callable ``(logits, y) -> (B,)``.
        seed: seed of the random starts.

    Every sample keeps its first misclassified iterate and is not forwarded again (early stop per sample);
    ``model_calls`` = (index of the first misclassified iterate) + 1, summed over restarts.
    """

    name = "pgd"

    def __init__(self, model, *, eps, norm="linf", steps: int = 10, alpha: AlphaSpec = None,
                 random_start: bool = True, restarts: int = 1, loss: LossSpec = "ce", seed: int | None = 0):
        super().__init__(model, eps=eps, norm=norm, seed=seed)
        self.steps, self.alpha, self.random_start, self.restarts, self.loss = steps, alpha, random_start, restarts, loss

    def _run(self, x, y, eps):
        return gradient_attack(self.model, x, y, eps, norm=self.norm, loss=self.loss, steps=self.steps,
                               alpha=self.alpha, random_start=self.random_start, restarts=self.restarts,
                               generator=self.generator(x))


@register
class FGSM(Attack):
    """Fast gradient sign method (Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial
    Examples", ICLR 2015): one step of size eps along sign(grad) of the cross-entropy from x; with ``norm="l2"``
    the fast gradient method (one step of L2 length eps along grad / ||grad||_2).  2 model calls per sample (the
    gradient and the check), 0 when already misclassified."""

    name = "fgsm"

    def __init__(self, model, *, eps, norm="linf", loss: LossSpec = "ce", seed: int | None = 0):
        super().__init__(model, eps=eps, norm=norm, seed=seed)
        self.loss = loss

    def _run(self, x, y, eps):
        return gradient_attack(self.model, x, y, eps, norm=self.norm, loss=self.loss, steps=1, alpha=eps,
                               random_start=False)


@register
class IFGSM(Attack):
    """Iterative FGSM / basic iterative method (Kurakin, Goodfellow & Bengio, "Adversarial Examples in the
    Physical World", ICLR 2017 workshop): FGSM steps of size alpha from x, clipped to the eps-ball and [0, 1].

    Paper defaults (L-inf, pixel scale 0..255): alpha = 1 and steps = min(eps + 4, 1.25 eps), i.e. here
    ``alpha = 1/255`` and ``steps = int(min(255 eps + 4, 1.25 * 255 eps))`` (at least 1; the largest eps of the
    batch decides).  L2 (not in the paper): foolbox's L2BasicIterativeAttack defaults, 10 steps of 0.2 * eps.
    """

    name = "ifgsm"

    def __init__(self, model, *, eps, norm="linf", steps: int | None = None, alpha: AlphaSpec = None,
                 loss: LossSpec = "ce", seed: int | None = 0):
        super().__init__(model, eps=eps, norm=norm, seed=seed)
        self.steps, self.alpha, self.loss = steps, alpha, loss

    def _run(self, x, y, eps):
        steps, alpha = self.steps, self.alpha
        if self.norm == "linf":
            if steps is None:
                e = float(eps.max()) * 255
                steps = max(1, int(min(e + 4, 1.25 * e)))
            alpha = 1 / 255 if alpha is None else alpha
        else:
            steps = 10 if steps is None else steps
            alpha = 0.2 * eps if alpha is None else alpha
        return gradient_attack(self.model, x, y, eps, norm=self.norm, loss=self.loss, steps=steps, alpha=alpha,
                               random_start=False)


@register
class CWLinf(Attack):
    """PGD on the Carlini-Wagner margin loss max_{j != y} z_j - z_y of the logits (Carlini & Wagner, "Towards
    Evaluating the Robustness of Neural Networks", S&P 2017, loss f_6 with kappa = 0; optimised by L-inf PGD as
    in Madry et al., ICLR 2018), the "CW-inf" attack of robustness tables.

    Defaults (ours; the papers fix no single budget): 30 steps of 2.5 * eps / steps from a random start.
    """

    name = "cw_linf"
    norms = ("linf",)

    def __init__(self, model, *, eps, norm="linf", steps: int = 30, alpha: AlphaSpec = None,
                 random_start: bool = True, restarts: int = 1, seed: int | None = 0):
        super().__init__(model, eps=eps, norm=norm, seed=seed)
        self.steps, self.alpha, self.random_start, self.restarts = steps, alpha, random_start, restarts

    def _run(self, x, y, eps):
        return gradient_attack(self.model, x, y, eps, norm=self.norm, loss="margin", steps=self.steps,
                               alpha=self.alpha, random_start=self.random_start, restarts=self.restarts,
                               generator=self.generator(x))
