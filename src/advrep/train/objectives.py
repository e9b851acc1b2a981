"""Training objectives: ``objective(model, x, y, epoch_ctx) -> (loss scalar, logits for accuracy)``.

Registered by name (:data:`OBJECTIVES`, :func:`register_objective`, :func:`make_objective`):

* ``ce`` -- cross-entropy on clean inputs.
* ``pgd_at`` -- Madry et al. (2018) adversarial training: cross-entropy on PGD examples.
* ``trades`` -- Zhang et al. (2019): CE(clean) + beta * KL between clean and adversarial predictions.
* ``awp`` -- Wu et al. (2020) adversarial weight perturbation on top of ``pgd_at`` or ``trades``.
* ``grad_norm`` -- Finlay et al. (lipreg): CE + eps_tv * mean ||grad_x loss|| + lam_lip * max ||grad_x loss||.
* :class:`Hook` -- base for paper-specific objectives (voronoi, OA-AT, contrastive, ...): subclass and decorate
  with ``@register_objective("name")``, or wrap a plain function.

Inputs are in [0, 1]; models carry their own normalisation.  Adversarial inner loops run
:func:`advrep.attacks.core.maximize` (the one projected-ascent loop of the package) with the model in **eval mode**
(BatchNorm statistics fixed, no dropout), as the official TRADES code (``model.eval()`` before generating) and the
TRADES-AWP code (``perturb_input`` calls ``model.eval()``) do; the training loss is then computed in **train mode**.
(Madry's original TensorFlow code has no BatchNorm mode to choose; locuslab/robust_overfitting and AT-AWP attack in
whatever mode the model is in, i.e. mostly train mode.  Eval-mode generation keeps the attack from updating BatchNorm
running statistics on adversarial batches it does not train on.)  After the call the model is in train mode.

Random numbers (random starts, dropout) come from the global torch RNG, which the loop seeds per epoch and
checkpoints, so training is reproducible across a resume.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.core import check_norm, eval_mode, maximize, steepest_ascent
from ..config import parse_number as _number
from .context import EpochContext

OBJECTIVES: dict[str, type] = {}


def register_objective(name: str):
    """Class decorator: make an objective constructible by name (``make_objective({"name": name, ...})``)."""

    def deco(cls):
        if name in OBJECTIVES and OBJECTIVES[name] is not cls:
            raise ValueError(f"objective {name!r} is already registered ({OBJECTIVES[name].__qualname__})")
        OBJECTIVES[name] = cls
        cls.name = name
        return cls

    return deco


class Objective:
    """Base class.  Subclasses implement ``__call__``; the optional hooks default to no-ops.

    The loop calls, per step: ``loss, logits = objective(model, x, y, ctx)`` (under autocast when mixed precision
    is on), ``loss.backward()``, then ``after_backward(model, ctx)`` (always, also when the step fails), then the
    optimizer step.  ``on_epoch_start/on_epoch_end(model, ctx)`` bracket each epoch.  ``state_dict`` /
    ``load_state_dict`` carry objective state (plain types and tensors) through the checkpoint.
    """

    name: str | None = None

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: EpochContext):
        raise NotImplementedError

    def after_backward(self, model: nn.Module, ctx: EpochContext) -> None:
        pass

    def on_epoch_start(self, model: nn.Module, ctx: EpochContext) -> None:
        pass

    def on_epoch_end(self, model: nn.Module, ctx: EpochContext) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @property
    def eps(self) -> float | None:
        """The attack radius, for objectives that have one (recorded in the history with the eps ramp applied)."""
        return None

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


@register_objective("ce")
class CrossEntropy(Objective):
    """Cross-entropy on clean inputs (optionally label-smoothed)."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = float(label_smoothing)

    def __call__(self, model, x, y, ctx):
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits


class AdversarialObjective(Objective):
    """An objective in two stages, so that AWP can reuse them: ``perturb`` (inner maximisation, eval mode, through
    :func:`advrep.attacks.core.maximize`) and ``loss`` (train mode, at given adversarial inputs)."""

    def __init__(self, eps: float, alpha: float | None = None, steps: int = 10, norm: str = "linf"):
        self._eps = float(eps)
        self.alpha = float(alpha) if alpha is not None else self._eps / 4
        self.steps = int(steps)
        self.norm = check_norm(norm)
        if self._eps < 0 or self.alpha < 0 or self.steps < 0:
            raise ValueError(f"{type(self).__name__}: eps, alpha and steps must be >= 0")

    @property
    def eps(self) -> float:
        return self._eps

    def radius(self, ctx: EpochContext | None) -> tuple[float, float]:
        """(eps, alpha) at this step: both scaled by the epsilon ramp."""
        f = 1.0 if ctx is None else float(ctx.eps_fraction)
        return self._eps * f, self.alpha * f

    def perturb(self, model, x, y, ctx) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, model, x, x_adv, y, ctx):
        raise NotImplementedError

    def __call__(self, model, x, y, ctx):
        x_adv = self.perturb(model, x, y, ctx)
        model.train()
        return self.loss(model, x, x_adv, y, ctx)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self._eps!r}, alpha={self.alpha!r}, steps={self.steps}, "
                f"norm={self.norm!r}" + "".join(f", {k}={v!r}" for k, v in self._extra().items()) + ")")

    def _extra(self) -> dict:
        return {}


@register_objective("pgd_at")
class PGDAT(AdversarialObjective):
    """Madry et al. 2018: minimise CE at PGD examples (random start uniform in the ball, ``steps`` steepest-ascent
    steps of size ``alpha`` on the per-sample CE, projected onto the eps-ball and [0, 1]).  Generated in eval mode,
    trained in train mode.  Accuracy is measured on the adversarial logits (robust training accuracy)."""

    def __init__(self, eps: float, alpha: float | None = None, steps: int = 10, norm: str = "linf",
                 random_start: bool = True):
        super().__init__(eps, alpha, steps, norm)
        self.random_start = bool(random_start)

    def _extra(self):
        return {"random_start": self.random_start}

    def perturb(self, model, x, y, ctx):
        eps, alpha = self.radius(ctx)
        with torch.enable_grad(), eval_mode(model):
            return maximize(lambda z: F.cross_entropy(model(z), y, reduction="none"), x, eps=eps, alpha=alpha,
                            steps=self.steps, norm=self.norm, init="random" if self.random_start else None)

    def loss(self, model, x, x_adv, y, ctx):
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits


def _kl_per_sample(logits_q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """sum_k p_k (log p_k - log q_k) per sample: ``F.kl_div(log_softmax(q), p)`` summed over classes, as TRADES."""
    return F.kl_div(F.log_softmax(logits_q.float(), dim=1), p.float(), reduction="none").sum(1)


@register_objective("trades")
class TRADES(AdversarialObjective):
    """Zhang et al. 2019 (TRADES): ``CE(f(x), y) + beta * KL``.

    Facts followed from the official code (github.com/yaodongyu/TRADES, ``trades.py`` ``trades_loss``; also
    csdongxian/AWP ``trades_AWP/train_trades_cifar.py`` ``perturb_input``):

    * inner maximisation starts at ``x + 0.001 * N(0, I)`` and ascends the **sum**-reduced
      ``KLDivLoss(log_softmax(f(x_adv)), softmax(f(x)))`` with sign steps of ``step_size`` (L-inf), projecting onto
      the eps-ball and [0, 1] after each step (here: :func:`maximize` with that start, which also projects the start);
      the official defaults on CIFAR-10 are eps=0.031, step 0.007, 10 steps, beta=6 (AWP: 8/255, 2/255, 10, 6);
    * generation in ``model.eval()``, loss in ``model.train()``;
    * outer loss ``CE(f(x), y) + beta * KLDivLoss(log_softmax(f(x_adv)), softmax(f(x))) / batch_size``
      (= ``reduction="batchmean"``), gradients flowing through both f(x_adv) and the clean target softmax(f(x)).

    ``KLDivLoss(log q, p)`` is KL(p || q) = KL(p(x) || p(x_adv)) (clean distribution first), which is what the
    official code computes; the paper writes the surrogate as KL(f(x) || f(x')) too.  One clean forward is shared by
    the CE and the KL target (the official code runs ``model(x_natural)`` twice in train mode; identical without
    dropout).  Accuracy is measured on the clean logits.  ``beta = 0`` gives exactly CE on clean data.
    """

    def __init__(self, eps: float, alpha: float | None = None, steps: int = 10, norm: str = "linf",
                 beta: float = 6.0, init_std: float = 0.001):
        super().__init__(eps, alpha, steps, norm)
        self.beta = float(beta)
        self.init_std = float(init_std)

    def _extra(self):
        return {"beta": self.beta, "init_std": self.init_std}

    def perturb(self, model, x, y, ctx):
        eps, alpha = self.radius(ctx)
        with torch.enable_grad(), eval_mode(model):
            with torch.no_grad():
                p_clean = F.softmax(model(x).float(), dim=1)
            init = self.init_std * torch.randn_like(x)
            return maximize(lambda z: _kl_per_sample(model(z), p_clean), x, eps=eps, alpha=alpha,
                            steps=self.steps, norm=self.norm, init=init)

    def loss(self, model, x, x_adv, y, ctx):
        logits = model(x)
        logits_adv = model(x_adv)
        natural = F.cross_entropy(logits, y)
        robust = F.kl_div(F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits.float(), dim=1),
                          reduction="batchmean")
        ctx.log("kl", robust)
        return natural + self.beta * robust, logits


@register_objective("awp")
class AWP(Objective):
    """Wu, Xia, Wang 2020, Adversarial Weight Perturbation, on top of ``pgd_at`` (AT-AWP) or ``trades``
    (TRADES-AWP).  ``base`` is such an objective (or its config dict).

    Facts from the official code, github.com/csdongxian/AWP (``AT_AWP/utils_awp.py``, ``trades_AWP/utils_awp.py``,
    ``AT_AWP/train_cifar10.py``, ``trades_AWP/train_trades_cifar.py``):

    * per step: craft ``x_adv`` at the current weights (TRADES-AWP: ``perturb_input`` in eval mode); then in train
      mode compute the weight perturbation ``calc_awp``, ``perturb`` the model, compute the base loss at the
      perturbed weights, ``loss.backward()``, ``optimizer.step()``, ``restore``;
    * ``calc_awp``: a proxy copy of the model (so BatchNorm statistics of the model are untouched) in train mode takes
      ONE SGD step on ``-(base loss)`` (AT: ``-CE(proxy(x_adv), y)``; TRADES: ``-(CE(proxy(x), y) + beta *
      KL_batchmean)``), proxy lr 0.01 (AT) / the training lr (TRADES);
    * ``diff_in_weights``: for every state-dict entry with ``'weight'`` in its name and more than one dimension (conv
      and linear weights; no biases, no BatchNorm), ``diff = ||w|| / (||w_proxy - w|| + 1e-20) * (w_proxy - w)``:
      layer-wise, relative to the layer's weight norm;
    * ``perturb`` adds ``gamma * diff``, ``restore`` subtracts it; defaults ``--awp-gamma`` 0.01 (AT-AWP) and 0.005
      (TRADES-AWP), ``--awp-warmup`` 0 (AT-AWP, epochs counted from 0) and 10 (TRADES-AWP, epochs counted from 1, so
      AWP starts in the 10th epoch); ``gamma <= 0`` disables AWP (``awp_warmup = inf``).

    Implemented here without a proxy model: the proxy's SGD step without momentum or weight decay is ``lr * grad``,
    and the layer-wise normalisation cancels ``lr``, so ``diff = ||w|| * g / (||g|| + 1e-20)`` with ``g`` the gradient
    of the base loss at the current weights; BatchNorm buffers changed by that forward pass are put back.  ``warmup``
    counts 0-based epochs: AWP is applied when ``epoch >= warmup`` (TRADES-AWP's setting is ``warmup=9``).

    Restore order: the original weights are saved and copied back in ``after_backward`` -- after the gradient at the
    perturbed weights is computed, before the optimizer step -- so the weights are restored bit-exactly and only the
    optimizer step changes them.  (The official code steps at ``w + v`` and subtracts ``v`` afterwards; the two agree
    except that weight decay is applied to ``w`` here rather than to ``w + v``.)
    """

    def __init__(self, base: AdversarialObjective | dict | str, gamma: float = 5e-3, warmup: int = 0):
        base = make_objective(base)
        if not isinstance(base, AdversarialObjective):
            raise TypeError(f"awp needs an adversarial base objective (pgd_at, trades), got {base!r}")
        self.base = base
        self.gamma = float(gamma)
        self.warmup = int(warmup)
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def eps(self):
        return self.base.eps

    def active(self, ctx: EpochContext) -> bool:
        return self.gamma > 0 and ctx.epoch >= self.warmup

    @staticmethod
    def perturbed_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1 and "weight" in n]

    def weight_perturbation(self, model, x, x_adv, y, ctx) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """``[(param, gamma * ||w|| * g / ||g||)]``; leaves weights, gradients and buffers of the model as they were."""
        params = [p for _, p in self.perturbed_parameters(model)]
        buffers = [b.detach().clone() for b in model.buffers()]
        model.train()
        with torch.enable_grad():
            loss, _ = self.base.loss(model, x, x_adv, y, dataclasses.replace(ctx, metrics={}))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
            out = []
            for p, g in zip(params, grads):
                if g is None:
                    continue
                g = g.to(p.dtype)
                out.append((p, self.gamma * p.norm() / (g.norm() + 1e-20) * g))
        return out

    def __call__(self, model, x, y, ctx):
        self.after_backward(model, ctx)  # never stack perturbations
        x_adv = self.base.perturb(model, x, y, ctx)
        model.train()
        if self.active(ctx):
            v = self.weight_perturbation(model, x, x_adv, y, ctx)
            with torch.no_grad():
                self._saved = [(p, p.detach().clone()) for p, _ in v]
                for p, d in v:
                    p.add_(d)
        return self.base.loss(model, x, x_adv, y, ctx)

    def after_backward(self, model, ctx):
        """Put the unperturbed weights back, bit-exactly (idempotent)."""
        if self._saved is not None:
            with torch.no_grad():
                for p, w in self._saved:
                    p.copy_(w)
            self._saved = None

    def __repr__(self):
        return f"AWP(base={self.base!r}, gamma={self.gamma!r}, warmup={self.warmup})"


@register_objective("grad_norm")
class GradNormPenalty(Objective):
    """Finlay, Calder, Abbasi, Oberman (lipreg), Eq. (2.6)/(2.9): ``mean_i l(x_i) + eps_tv * mean_i ||grad_x l(x_i)||
    + lam_lip * max_i ||grad_x l(x_i)||`` -- "The Total Variation term is the average over the batch, and the
    Lipschitz term is the maximum over the batch" (paper Sec. 2.2).

    ``method``:

    * ``"finite_difference"`` (the paper's): ``||grad_x l(x)|| ~= (l(x + h d) - l(x)) / h`` with ``d`` the attack
      direction (the normalised input gradient, computed without a graph and held fixed) and ``h = 1e-3``.
      Differentiable in the weights through both loss evaluations; one extra forward pass, no double backprop.
    * ``"exact"``: ``grad_x l`` by autograd with ``create_graph=True`` (double backpropagation, Drucker & LeCun).

    ``norm`` is the attack norm, as everywhere in advrep: ``"l2"`` penalises ``||grad||_2`` (direction
    ``g / ||g||_2``; the paper's "l2 TV"), ``"linf"`` penalises the dual norm ``||grad||_1`` (direction ``sign(g)``,
    i.e. FGSM; the paper's "l1 TV (AT, FGSM)").  Per-sample gradients are those of the summed loss, so with BatchNorm
    in train mode they include the (small) coupling between samples through the batch statistics.  With
    ``eps_tv = lam_lip = 0`` this is plain CE.  The per-sample norms' batch mean and max are logged as
    ``grad_norm_mean`` / ``grad_norm_max``.  Under mixed precision the finite-difference variant runs in fp32
    (autocast off): the difference of two losses 1e-3 apart is below bf16/fp16 resolution.
    """

    METHODS = ("finite_difference", "exact")

    def __init__(self, eps_tv: float = 0.0, lam_lip: float = 0.0, method: str = "finite_difference",
                 h: float = 1e-3, norm: str = "l2"):
        if method not in self.METHODS:
            raise ValueError(f"grad_norm: method must be one of {self.METHODS}, got {method!r}")
        self.eps_tv = float(eps_tv)
        self.lam_lip = float(lam_lip)
        self.method = method
        self.h = float(h)
        self.norm = check_norm(norm)

    def per_sample(self, model, x, y) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-sample losses (B,), per-sample gradient-norm estimates (B,), logits), differentiable in the weights."""
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xr)
            losses = F.cross_entropy(logits, y, reduction="none")
            if self.method == "exact":
                (g,) = torch.autograd.grad(losses.sum(), xr, create_graph=True)
                flat = g.flatten(1)
                norms = flat.norm(p=2, dim=1) if self.norm == "l2" else flat.abs().sum(1)
            else:
                (g,) = torch.autograd.grad(losses.sum(), xr, retain_graph=True)
                d = steepest_ascent(g.detach().float(), self.norm).to(x.dtype)
                losses_h = F.cross_entropy(model(x.detach() + self.h * d), y, reduction="none")
                norms = (losses_h - losses) / self.h
        return losses, norms, logits

    def __call__(self, model, x, y, ctx):
        if self.eps_tv == 0 and self.lam_lip == 0:
            logits = model(x)
            return F.cross_entropy(logits, y), logits
        if self.method == "finite_difference":
            # (l(x + h d) - l(x)) / h needs fp32: in bf16/fp16 the difference drowns in rounding
            with torch.autocast(x.device.type, enabled=False):
                losses, norms, logits = self.per_sample(model, x.float(), y)
        else:
            losses, norms, logits = self.per_sample(model, x, y)
        ctx.log("grad_norm_mean", norms.mean())
        ctx.log("grad_norm_max", norms.max())
        return losses.mean() + self.eps_tv * norms.mean() + self.lam_lip * norms.max(), logits


class Hook(Objective):
    """Paper-specific objectives (voronoi, OA-AT, contrastive, ...).

    Either subclass, implement ``__call__(model, x, y, ctx) -> (loss, logits)`` (and any of the hooks
    ``after_backward``, ``on_epoch_start``, ``on_epoch_end``, ``state_dict``, ``load_state_dict``), and register it::

        @register_objective("voronoi")
        class Voronoi(Hook):
            def __init__(self, eps, ...): ...
            def __call__(self, model, x, y, ctx): ...

    or wrap a function: ``Hook(fn, **params)`` calls ``fn(model, x, y, ctx, **params)``.  Adversarial inner loops
    should call :func:`advrep.attacks.core.maximize` under :func:`advrep.attacks.core.eval_mode`.
    """

    def __init__(self, fn: Callable | None = None, **params):
        self.fn = fn
        self.params = params

    def __call__(self, model, x, y, ctx):
        if self.fn is None:
            raise NotImplementedError(f"{type(self).__name__} must implement __call__ or wrap a function")
        return self.fn(model, x, y, ctx, **self.params)


def make_objective(spec) -> Objective:
    """An :class:`Objective` from a name (``"ce"``), a dict (``{"name": "trades", "eps": 0.031, ...}``; numbers may
    be strings such as ``"8/255"``), or an objective/callable (a callable is wrapped in :class:`Hook`)."""
    if isinstance(spec, Objective):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("name", None)
        if name not in OBJECTIVES:
            raise ValueError(f"unknown objective {name!r}; registered: {sorted(OBJECTIVES)} "
                             "(register a paper's own with @register_objective)")
        cls = OBJECTIVES[name]
        kwargs = {k: _number(v, k) for k, v in spec.items()}
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ValueError(f"objective {name!r}: {e}") from None
    if callable(spec):
        return Hook(spec)
    raise TypeError(f"cannot make an objective from {spec!r}")
