"""The training objectives the OA-AT paper adds to the engine: ``fat``, ``ates`` and ``oaat``.

Each is registered with :func:`advrep.train.register_objective`, so a training config names it::

    objective: {name: fat, eps: 8/255, alpha: 2/255, steps: 10, tau: [0, 1, 2], tau_milestones: [50/120, 90/120]}
    objective: {name: ates, eps: 8/255, alpha: 2/255, steps: 10, threshold_start: 0.0, threshold_end: 1.0}
    objective: {name: oaat, eps: 16/255, beta: 1.5, beta_final: 3.0, mixup_alpha: 0.2, lpips_weight: 1.0}

(numbers may be strings such as ``"16/255"``; every parameter has the default of its source, see each class).
The toolkit's ``pgd_at``, ``trades`` and ``awp`` cover PGD-AT, TRADES, AT-AWP, TRADES-AWP and ExAT (``pgd_at`` at
16/255 fine-tuning an 8/255 PGD-AT model).  ``fat`` and ``ates`` are :class:`~advrep.train.objectives.PGDAT`
variants (so ``awp`` can wrap them too); ``oaat`` is a whole objective of its own.

As everywhere in advrep, adversarial examples are generated with the model in **eval mode** and the loss computed
in train mode (the authors' OA-AT code runs its attacks in whatever mode the model is in, i.e. train mode: it
calls ``model.train()`` after each attack, ``train_OAAT.py`` lines 424 and 523, and never ``model.eval()`` before
the next; FAT's ``earlystop.py`` calls ``model.eval()`` as we do).  Random numbers come from the global torch RNG,
which the training loop seeds per epoch and checkpoints, so runs resume bit for bit on CPU.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.core import eval_mode, margin, maximize, start_delta
from ..config import number
from ..train.context import EpochContext
from ..train.objectives import AWP, PGDAT, TRADES, Objective, register_objective
from .lpips import FeatureLPIPS


def _num(value, key: str, owner: str) -> float:
    try:
        return number(value, f"{owner}: {key}")
    except ValueError:
        raise ValueError(f"{owner}: {key} must be a number, got {value!r}") from None


def _int(value, key: str, owner: str, minimum: int = 0) -> int:
    v = _num(value, key, owner)
    if v != int(v) or v < minimum:
        raise ValueError(f"{owner}: {key} must be an integer >= {minimum}, got {value!r}")
    return int(v)


def _in_range(value, key: str, owner: str, lo: float, hi: float, *, hi_open: bool = False) -> float:
    v = _num(value, key, owner)
    if not (lo <= v < hi if hi_open else lo <= v <= hi):
        raise ValueError(f"{owner}: {key} must be in [{lo}, {hi}{')' if hi_open else ']'}, got {value!r}")
    return v


# ----------------------------------------------------------------------------------------- early-stopped PGD


def early_stopped_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int,
                      stop: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                      init: str | None = "random", omega: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """L-inf PGD on the cross-entropy in which every sample leaves the iteration on its own.

    Before each of the ``steps`` gradient steps the samples still iterating are forwarded once; ``stop(logits,
    y, index) -> (n,) bool`` (logits and labels of those samples, ``index`` their positions in the batch) says which
    of them stop now: they keep their current iterate.  The others take one signed-gradient step of size ``alpha``
    (plus ``omega * N(0, I)`` when ``omega > 0``, FAT's exploration noise), projected onto the eps-ball and [0, 1].
    Samples still iterating after ``steps`` steps keep their last iterate.  Only the iterating samples are forwarded,
    so early stopping saves compute as in the authors' code.  The caller chooses the model's mode (eval).

    Returns ``(x_adv, steps_taken)``: the examples and the (B,) number of gradient steps each sample took.
    """
    x = x.detach()
    x_adv = (x + start_delta(x, eps, "linf", init)).detach()
    active = torch.ones(len(x), dtype=torch.bool, device=x.device)
    taken = torch.zeros(len(x), dtype=torch.long, device=x.device)
    for _ in range(int(steps)):
        index = active.nonzero().squeeze(1)
        if index.numel() == 0:
            break
        z = x_adv[index].requires_grad_(True)
        logits = model(z)
        halt = stop(logits.detach(), y[index], index).to(torch.bool)
        active[index[halt]] = False
        go = ~halt
        if not bool(go.any()):
            break
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y[index], reduction="none").sum(), z)
        moving = index[go]
        with torch.no_grad():
            step = alpha * grad[go].sign()
            if omega > 0:
                step = step + omega * torch.randn_like(step)
            x0 = x[moving]
            new = torch.minimum(torch.maximum(x_adv[moving] + step, x0 - eps), x0 + eps).clamp_(0.0, 1.0)
            x_adv[moving] = new
        taken[moving] += 1
    return x_adv.detach(), taken


def _check_linf(owner: str, norm: str) -> None:
    if norm != "linf":
        raise ValueError(f"{owner}: only norm='linf' is implemented (signed steps and box clipping as the authors' "
                         f"code), got {norm!r}")


@register_objective("fat")
class FAT(PGDAT):
    """Friendly Adversarial Training (Zhang, Xu, Han, Niu, Cui, Sugiyama, Kankanhalli, ICML 2020, "Attacks which do
    not kill training make adversarial learning stronger"): CE at early-stopped PGD examples.

    Facts from the official code, github.com/zjfheart/Friendly-Adversarial-Training (commit 80a0640):

    * ``earlystop.py`` ``earlystop``: model in eval mode (line 18); uniform random start in the eps-ball, clipped to
      [0, 1] (``"uniform_randominit"``, line 33, the one ``FAT.py`` line 56 uses); before every step (loop from line
      43) each sample still iterating is forwarded: misclassified with budget ``control`` (initially ``tau``) 0 ->
      it stops with its current iterate (line 53); misclassified with budget left -> the budget drops by 1 and it
      goes on (line 56); correctly classified -> goes on; a step is ``step_size * sign(grad CE) + omega * N(0, I)``
      (lines 93-95), projected onto the ball and [0, 1] (lines 96-97); after ``perturb_steps`` steps the rest keep
      their last iterate.  So a sample stops at its ``(tau+1)``-th misclassified iterate: ``tau`` steps after its
      first misclassification when it stays misclassified;
    * ``FAT.py``: loss ``CrossEntropyLoss(model(x_adv), y)`` in train mode (line 65); defaults (lines 18-27)
      ``--epsilon 0.031``, ``--step_size 0.007``, ``--num_steps 10``, ``--omega 0.001``, ``--rand_init True``;
      ``adjust_tau`` (lines 77-86) with ``--dynamictau``: tau = 0 for (1-based) epochs <= 50, 1 for <= 90, 2 after,
      of 120 epochs (``--epochs 120``, line 14).

    Parameters: ``eps`` (0.031), ``alpha`` (the step, 0.007), ``steps`` (10), ``tau`` (a list of per-stage values,
    default ``[0, 1, 2]``, or one int for a constant tau), ``tau_milestones`` (the fractions of training at which tau
    moves to its next value: 1-based epoch ``e`` uses ``tau[i]`` for the first ``i`` with ``e <= milestone_i *
    epochs``; default ``[50/120, 90/120]``, FAT.py's 50 and 90 of 120 epochs), ``omega`` (0.001),
    ``random_start`` (True), ``norm`` (``"linf"`` only).  eps and alpha follow the engine's eps ramp if one is set.
    Logs ``fat_tau`` and ``attack_steps`` (mean gradient steps per sample).
    """

    def __init__(self, eps: float = 0.031, alpha: float | None = 0.007, steps: int = 10, norm: str = "linf",
                 random_start: bool = True, tau=(0, 1, 2), tau_milestones=("50/120", "90/120"), omega: float = 0.001):
        _check_linf("fat", norm)
        super().__init__(_num(eps, "eps", "fat"), None if alpha is None else _num(alpha, "alpha", "fat"),
                         _int(steps, "steps", "fat"), norm, random_start)
        taus = [tau] if isinstance(tau, (int, float, str)) else list(tau)
        self.tau = [_int(t, "tau", "fat") for t in taus]
        if not self.tau:
            raise ValueError("fat: tau must be an integer or a non-empty list of integers")
        milestones = [] if len(self.tau) == 1 and isinstance(tau, (int, float, str)) else list(tau_milestones)
        self.tau_milestones = [_in_range(m, "tau_milestones", "fat", 0.0, 1.0) for m in milestones]
        if len(self.tau_milestones) != len(self.tau) - 1:
            raise ValueError(f"fat: tau_milestones needs len(tau) - 1 = {len(self.tau) - 1} fractions of training, "
                             f"got {len(self.tau_milestones)}")
        if any(b <= a for a, b in zip(self.tau_milestones, self.tau_milestones[1:])):
            raise ValueError(f"fat: tau_milestones must increase, got {self.tau_milestones}")
        self.omega = _num(omega, "omega", "fat")
        if self.omega < 0:
            raise ValueError(f"fat: omega must be >= 0, got {omega!r}")

    def _extra(self):
        return {"random_start": self.random_start, "tau": self.tau, "tau_milestones": self.tau_milestones,
                "omega": self.omega}

    def tau_at(self, epoch: int, epochs: int) -> int:
        """tau in (0-based) ``epoch`` of ``epochs`` (FAT.py ``adjust_tau(epoch + 1)`` scaled to ``epochs``)."""
        e = epoch + 1
        for t, m in zip(self.tau, self.tau_milestones):
            if e <= m * epochs + 1e-9:
                return t
        return self.tau[-1]

    def perturb(self, model, x, y, ctx):
        eps, alpha = self.radius(ctx)
        tau = self.tau_at(ctx.epoch, ctx.epochs) if ctx is not None else self.tau[-1]
        control = torch.full((len(y),), tau, dtype=torch.long, device=y.device)

        def stop(logits, yy, index):
            wrong = logits.argmax(1) != yy
            halt = wrong & (control[index] == 0)
            control[index[wrong & ~halt]] -= 1
            return halt

        with torch.enable_grad(), eval_mode(model):
            x_adv, taken = early_stopped_pgd(model, x, y, eps=eps, alpha=alpha, steps=self.steps, stop=stop,
                                             init="random" if self.random_start else None, omega=self.omega)
        if ctx is not None:
            ctx.log("fat_tau", tau)
            ctx.log("attack_steps", taken.float().mean())
        return x_adv


@register_objective("ates")
class ATES(PGDAT):
    """Adversarial Training with Early Stopping (Sitawarin, Chakraborty, Wagner 2020, arXiv:2003.09347, "Improving
    adversarial robustness through progressive hardening"; the OA-AT paper's reference [17]): PGD-AT in which the
    attack on a sample stops as soon as its softmax margin ``max_{j != y} p_j(x') - p_y(x')`` (in [-1, 1]) reaches
    a threshold that rises over training, so training starts on easy examples and hardens progressively.

    The authors' training code is not public (github.com/chawins/ates-minimal holds only their evaluation script;
    its README describes ``train_cifar.py`` with ``early_stop: True``), so the recipe is the paper's description:
    the margin is checked before every PGD step (as FAT's check in :func:`early_stopped_pgd`), the threshold grows
    linearly per epoch from ``threshold_start`` (epoch 0) to ``threshold_end`` (last epoch), and the loss is the
    cross-entropy at the examples (``pgd_at``'s).  The threshold end points are **our choice**, not the authors':
    0 (stop once misclassified) to 1 (never reached: full PGD) by default.

    Parameters: ``eps`` (8/255), ``alpha`` (2/255), ``steps`` (10), ``threshold_start`` (0.0) and ``threshold_end``
    (1.0), both in [-1, 1] with start <= end, ``random_start`` (True), ``norm`` (``"linf"`` only).  Logs
    ``ates_threshold`` and ``attack_steps``.
    """

    def __init__(self, eps: float = 8 / 255, alpha: float | None = 2 / 255, steps: int = 10, norm: str = "linf",
                 random_start: bool = True, threshold_start: float = 0.0, threshold_end: float = 1.0):
        _check_linf("ates", norm)
        super().__init__(_num(eps, "eps", "ates"), None if alpha is None else _num(alpha, "alpha", "ates"),
                         _int(steps, "steps", "ates"), norm, random_start)
        self.threshold_start = _in_range(threshold_start, "threshold_start", "ates", -1.0, 1.0)
        self.threshold_end = _in_range(threshold_end, "threshold_end", "ates", -1.0, 1.0)
        if self.threshold_end < self.threshold_start:
            raise ValueError(f"ates: threshold_end ({threshold_end!r}) must be >= threshold_start "
                             f"({threshold_start!r}): the threshold rises over training")

    def _extra(self):
        return {"random_start": self.random_start, "threshold_start": self.threshold_start,
                "threshold_end": self.threshold_end}

    def threshold_at(self, epoch: int, epochs: int) -> float:
        return self.threshold_start + (self.threshold_end - self.threshold_start) * epoch / max(epochs - 1, 1)

    def perturb(self, model, x, y, ctx):
        eps, alpha = self.radius(ctx)
        threshold = self.threshold_at(ctx.epoch, ctx.epochs) if ctx is not None else self.threshold_end

        def stop(logits, yy, index):
            return margin(F.softmax(logits.float(), dim=1), yy) >= threshold

        with torch.enable_grad(), eval_mode(model):
            x_adv, taken = early_stopped_pgd(model, x, y, eps=eps, alpha=alpha, steps=self.steps, stop=stop,
                                             init="random" if self.random_start else None)
        if ctx is not None:
            ctx.log("ates_threshold", threshold)
            ctx.log("attack_steps", taken.float().mean())
        return x_adv


# ------------------------------------------------------------------------------------------------------ OA-AT


@dataclass(frozen=True)
class OAATPhase:
    """What OA-AT does in one epoch (0-based ``epoch``): the attack radius ``eps`` and its ``steps`` /
    ``step_size``, whether iterations alternate between Oracle-Sensitive and Oracle-Invariant samples, and the
    ramps: ``alpha`` (weight of f(x) in the Oracle-Sensitive target), ``lpips_weight`` (lambda) and ``beta``."""

    epoch: int
    eps: float
    steps: int
    step_size: float
    alternate: bool
    alpha: float
    lpips_weight: float
    beta: float


def _kl_batchmean(logits_q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``F.kl_div(log_softmax(q), p, reduction="batchmean")`` = mean_i KL(p_i || q_i), in float32."""
    return F.kl_div(F.log_softmax(logits_q.float(), dim=1), p.float(), reduction="batchmean")


@register_objective("oaat")
class OAAT(Objective):
    """Oracle-Aligned Adversarial Training (Addepalli, Jain, Sriramanan, Khare, Babu 2022, Sec. 4 and Alg. A1).

    Facts from the authors' code, github.com/val-iisc/OAAT (``train_OAAT.py``, ``defaults.py`` ``CIFAR10_RN18``;
    epochs ``e`` 1-based, ``E`` epochs in all, as there):

    * eps ramp (``main``, lines 690 and 716-718): ``4/255`` while ``e <= E // 4``, then ``e * eps / E`` (reaching
      ``eps = 16/255`` at ``e = E``); attack (``train``, lines 399-404): 5 steps of ``eps_e / 2`` while
      ``e <= E // 4``, else 10 steps of ``eps_e / 4``;
    * plain epochs (``train``, lines 409-452): PGD on the **cross-entropy** (``--use_CE 1``, ``perturb_input`` lines
      302-330) from ``x + U(-noi, noi)``, ``noi = min(4/255, eps_e)`` (line 416); AWP (from epoch ``--awp-warmup``
      10 on, ``utils_awp.py`` ``TradesAWP``, gamma 0.005) maximises the TRADES loss at ``clip(x + 2 (x_adv - x))``
      (line 426); loss ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))`` (``F.kl_div(log_softmax(f(x_adv)),
      softmax(f(x)), 'batchmean')``, lines 434-444);
    * alternate epochs, once ``eps_e > 12/255`` (``--alternate_iter_eps``, line 719; ``train_lpips_alt``, lines
      487-557): even batches (``batch_idx % 2 == 0``) are **Oracle-Sensitive**: ``x_hat`` = PGD-CE at ``24/255``
      (``--mixup_epsilon``), 10 steps of ``24/255 / 4`` from ``x + U(-4/255, 4/255)``; ``x_tilde`` = ``x_hat``
      clipped into the current ``eps_e``-ball (line 536: the "attack at the current eps" is this projection, not a
      second attack); loss ``CE(f(x), y) + beta * KL(alpha f(x) + (1 - alpha) f(x_hat) || f(x_tilde))`` (lines
      538-540; gradients flow through the mixed target too).  Odd batches are **Oracle-Invariant**:
      ``perturb_input_lpips`` (lines 334-388) ascends ``CE(f(x'), y) - lambda * LPIPS(x, x')`` (batch means; the
      per-sample sum here gives the same signed steps) for 10 steps of ``eps_e / 4`` from ``x + U(-eps_e, eps_e)``;
      loss as in plain epochs.  AWP in alternate epochs maximises the TRADES loss at the batch's ``x_adv``
      (``x_hat`` or the LPIPS example, lines 524-529);
    * LPIPS (``main``, lines 724-732; :mod:`advrep.oaat.lpips`): computed on the exponential moving average of the
      model being trained, tau 0.995 per iteration (``--tau_swa_list[0]``; ``start_wa[0] = 1``: the average equals
      the model through epoch 1 and averages from epoch 2 on, lines 464-472 and 676), as saved at the end of the
      previous epoch (fixed during an epoch), in eval mode;
    * ramps over the ``n = E - e0 + 1`` alternate epochs (``e0`` the first, ``k = e - e0 + 1``; with the defaults
      ``e0 = int(3E/4) + 1`` and these are the code's formulas, lines 728-730): ``alpha = 1 - mixup_alpha * k /
      (n + 1)`` (the code's alpha starts at 1 and drops by ``mixup_alpha / (E - int(3E/4) + 1)`` per alternate
      epoch: the weight of f(x_hat), ``1 - alpha``, rises -- "we increase alpha" in the paper's Sec. 4 is this
      change of the mixture), ``lambda = lpips_weight * k / n``, ``beta = beta + (beta_final - beta) * k / n``;
      before alternation ``beta`` stays at its initial value;
    * ``defaults.py`` ``CIFAR10_RN18`` (lines 5-39): ``--beta 1.5``, ``--beta_final 3``, ``--mixup_alpha 0.2``,
      ``--mixup_epsilon 24/255``, ``--lpips_weight 1``, ``--epsilon 16/255``, ``--alternate_iter_eps 12/255``,
      ``--label_smoothing 0`` (CIFAR-100: ``LabelSmoothingLoss``, lines 286-299, smoothing 0.1 spread over the
      other classes); ``train_OAAT.py`` lines 72-75: ``--awp-gamma 0.005``, ``--awp-warmup 10`` (1-based; here
      0-based ``awp_warmup = 9``).  Learning rate, weight decay, cosine schedule, epochs, weight averaging for
      evaluation and the validation split are training settings of the workflow, not of the objective.

    Parameters (defaults from the sources above): ``eps`` ("16/255", eps_max), ``eps_start`` ("4/255"),
    ``warm_fraction`` (0.25: epochs ``e <= int(E * warm_fraction)`` train at ``eps_start``), ``steps_start`` (5)
    and ``steps`` (10), ``alternate_eps`` ("12/255"), ``oracle_eps`` ("24/255", ``--mixup_epsilon``),
    ``oracle_steps`` (10), ``init_noise`` ("4/255"), ``beta`` (1.5), ``beta_final`` (3.0), ``mixup_alpha`` (0.2, in
    [0, 1]), ``lpips_weight`` (1.0, lambda_max >= 0), ``lpips_layers`` (None: ``layer1..4`` / ``block1..3``, see
    :func:`advrep.oaat.lpips.default_layers`), ``lpips_tau`` (0.995, in [0, 1)), ``awp_gamma`` (0.005; 0 disables
    AWP), ``awp_warmup`` (9, 0-based epoch), ``awp_delta_scale`` (2.0: AWP at ``x + 2 delta`` in plain epochs),
    ``label_smoothing`` (0.0, in [0, 1)).

    The objective owns its eps ramp: train without an engine ``eps_schedule`` (a ramp factor below 1 is refused).
    Logs per batch: ``eps``, ``alternate`` (1 in alternate epochs), ``oracle_sensitive`` (1 on those batches),
    ``alpha``, ``lpips_weight``, ``beta``, ``kl`` and, on Oracle-Invariant batches, ``lpips`` (mean LPIPS at the
    attack's last evaluated iterate).  Its checkpoint state is the LPIPS average (EMA) model.
    """

    def __init__(self, eps="16/255", eps_start="4/255", warm_fraction: float = 0.25, steps_start: int = 5,
                 steps: int = 10, alternate_eps="12/255", oracle_eps="24/255", oracle_steps: int = 10,
                 init_noise="4/255", beta: float = 1.5, beta_final: float = 3.0, mixup_alpha: float = 0.2,
                 lpips_weight: float = 1.0, lpips_layers: Sequence[str] | None = None, lpips_tau: float = 0.995,
                 awp_gamma: float = 0.005, awp_warmup: int = 9, awp_delta_scale: float = 2.0,
                 label_smoothing: float = 0.0):
        o = "oaat"
        self.eps_max = _num(eps, "eps", o)
        if not self.eps_max > 0:
            raise ValueError(f"oaat: eps must be > 0, got {eps!r}")
        self.eps_start = _in_range(eps_start, "eps_start", o, 0.0, self.eps_max)
        self.warm_fraction = _in_range(warm_fraction, "warm_fraction", o, 0.0, 1.0, hi_open=True)
        self.steps_start = _int(steps_start, "steps_start", o, 1)
        self.steps = _int(steps, "steps", o, 1)
        self.alternate_eps = _num(alternate_eps, "alternate_eps", o)
        if self.alternate_eps < 0:
            raise ValueError(f"oaat: alternate_eps must be >= 0, got {alternate_eps!r}")
        self.oracle_eps = _num(oracle_eps, "oracle_eps", o)
        if self.oracle_eps < self.eps_max:
            raise ValueError(f"oaat: oracle_eps ({oracle_eps!r}) must be >= eps ({eps!r}): delta_hat is the larger "
                             "perturbation (1.5 eps_max in the paper)")
        self.oracle_steps = _int(oracle_steps, "oracle_steps", o, 1)
        self.init_noise = _num(init_noise, "init_noise", o)
        if self.init_noise < 0:
            raise ValueError(f"oaat: init_noise must be >= 0, got {init_noise!r}")
        self.beta = _num(beta, "beta", o)
        self.beta_final = _num(beta_final, "beta_final", o)
        if self.beta < 0 or self.beta_final < 0:
            raise ValueError(f"oaat: beta and beta_final must be >= 0, got {beta!r}, {beta_final!r}")
        self.mixup_alpha = _in_range(mixup_alpha, "mixup_alpha", o, 0.0, 1.0)
        self.lpips_weight = _num(lpips_weight, "lpips_weight", o)
        if self.lpips_weight < 0:
            raise ValueError(f"oaat: lpips_weight (lambda) must be >= 0, got {lpips_weight!r}")
        if lpips_layers is not None and (isinstance(lpips_layers, str) or not all(isinstance(n, str)
                                                                                  for n in lpips_layers)):
            raise ValueError(f"oaat: lpips_layers must be a list of module names, got {lpips_layers!r}")
        self.lpips_layers = None if lpips_layers is None else list(lpips_layers)
        self.lpips_tau = _in_range(lpips_tau, "lpips_tau", o, 0.0, 1.0, hi_open=True)
        self.awp_gamma = _num(awp_gamma, "awp_gamma", o)
        if self.awp_gamma < 0:
            raise ValueError(f"oaat: awp_gamma must be >= 0, got {awp_gamma!r}")
        self.awp_warmup = _int(awp_warmup, "awp_warmup", o)
        self.awp_delta_scale = _num(awp_delta_scale, "awp_delta_scale", o)
        if self.awp_delta_scale < 1:
            raise ValueError(f"oaat: awp_delta_scale must be >= 1, got {awp_delta_scale!r}")
        self.label_smoothing = _in_range(label_smoothing, "label_smoothing", o, 0.0, 1.0, hi_open=True)
        # AWP machinery of the toolkit (weight perturbation from the TRADES loss), driven with our own inputs
        self._trades = TRADES(eps=self.eps_max, beta=self.beta)
        self._awp = AWP(self._trades, gamma=self.awp_gamma, warmup=self.awp_warmup)
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._ema: nn.Module | None = None  # exponential moving average of the model: the LPIPS network's source
        self._ema_state: dict | None = None  # loaded from a checkpoint, applied once the model is known
        self._ema_pending = False  # an optimizer step happened that the average has not seen yet
        self._lpips: FeatureLPIPS | None = None  # this epoch's frozen copy of the average
        self._phase: OAATPhase | None = None
        self._last_lpips: torch.Tensor | None = None

    # ------------------------------------------------------------------ the schedule

    def _eps_at(self, e: int, epochs: int) -> float:
        return self.eps_start if e <= int(epochs * self.warm_fraction) else e * self.eps_max / epochs

    def _alternates(self, e: int, epochs: int) -> bool:
        return self._eps_at(e, epochs) > self.alternate_eps * (1 + 1e-12)  # no alternation from float round-off

    def phase(self, epoch: int, epochs: int) -> OAATPhase:
        """The settings of (0-based) ``epoch`` in a run of ``epochs`` epochs (see the class docstring)."""
        if not 0 <= epoch < epochs:
            raise ValueError(f"oaat: epoch {epoch} outside a run of {epochs} epochs")
        e = epoch + 1
        warm = e <= int(epochs * self.warm_fraction)
        eps = self._eps_at(e, epochs)
        steps, step_size = (self.steps_start, eps / 2) if warm else (self.steps, eps / 4)
        if not self._alternates(e, epochs):
            return OAATPhase(epoch, eps, steps, step_size, False, 1.0, 0.0, self.beta)
        e0 = next(i for i in range(1, epochs + 1) if self._alternates(i, epochs))
        k, n = e - e0 + 1, epochs - e0 + 1
        return OAATPhase(epoch, eps, self.steps, eps / 4, True, 1.0 - self.mixup_alpha * k / (n + 1),
                         self.lpips_weight * k / n, self.beta + (self.beta_final - self.beta) * k / n)

    def schedule(self, epochs: int) -> list[OAATPhase]:
        """Every epoch's :class:`OAATPhase` (for tables and notebooks)."""
        return [self.phase(i, epochs) for i in range(int(epochs))]

    @property
    def eps(self) -> float:
        return self._phase.eps if self._phase is not None else self.eps_max

    # ------------------------------------------------------------------ the LPIPS average

    def _attach_ema(self, model: nn.Module) -> None:
        if self._ema is not None:
            return
        self._ema = copy.deepcopy(model).eval()
        for p in self._ema.parameters():
            p.requires_grad_(False)
        if self._ema_state is not None:
            self._ema.load_state_dict(self._ema_state)
            self._ema_state = None

    @torch.no_grad()
    def _update_ema(self, model: nn.Module, copy_only: bool = False) -> None:
        """``avg <- tau * avg + (1 - tau) * model`` over the whole state (buffers included, as the code's state-dict
        average); integer buffers are copied."""
        self._attach_ema(model)
        for a, m in zip(self._ema.state_dict().values(), model.state_dict().values()):
            if copy_only or not a.is_floating_point():
                a.copy_(m)
            else:
                a.lerp_(m.to(a.dtype), 1.0 - self.lpips_tau)

    def _flush_ema(self, model: nn.Module) -> None:
        if self._ema_pending:
            self._update_ema(model)
            self._ema_pending = False

    def on_epoch_start(self, model, ctx):
        self._attach_ema(model)
        self._phase = self.phase(ctx.epoch, ctx.epochs)
        self._lpips = None
        if self._phase.alternate and self.lpips_weight > 0:
            frozen = copy.deepcopy(self._ema).eval()  # the average as saved at the end of the previous epoch
            self._lpips = FeatureLPIPS(frozen, self.lpips_layers)

    def on_epoch_end(self, model, ctx):
        self._flush_ema(model)
        if ctx.epoch == 0:  # start_wa[0] = 1: through (1-based) epoch 1 the average is the model itself
            self._update_ema(model, copy_only=True)
        self._lpips = None

    def state_dict(self) -> dict:
        return {"ema": None if self._ema is None else self._ema.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._ema, self._ema_pending, self._lpips = None, False, None
        self._ema_state = state.get("ema")

    # ------------------------------------------------------------------ one step

    def _pgd_ce(self, model, x, y, *, eps, alpha, steps, noise) -> torch.Tensor:
        with torch.enable_grad(), eval_mode(model):
            init = (2 * torch.rand_like(x) - 1) * noise
            return maximize(lambda z: F.cross_entropy(model(z), y, reduction="none"), x, eps=eps, alpha=alpha,
                            steps=steps, norm="linf", init=init)

    def _oracle_invariant(self, model, x, y, ph: OAATPhase) -> torch.Tensor:
        lam, lp = ph.lpips_weight, self._lpips
        with torch.enable_grad(), eval_mode(model):
            if lp is None or lam == 0:
                def loss_fn(z):
                    return F.cross_entropy(model(z), y, reduction="none")
            else:
                with torch.no_grad():
                    fx = [f.detach() for f in lp.features(x)]

                def loss_fn(z):
                    d = lp.distance(fx, z)
                    self._last_lpips = d.detach().mean()
                    return F.cross_entropy(model(z), y, reduction="none") - lam * d
            return maximize(loss_fn, x, eps=ph.eps, alpha=ph.step_size, steps=ph.steps, norm="linf", init="random")

    def _natural(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.label_smoothing == 0:
            return F.cross_entropy(logits, y)
        # LabelSmoothingLoss (train_OAAT.py lines 286-299): 1 - s on the label, s / (K - 1) on every other class
        s, k = self.label_smoothing, logits.shape[1]
        target = torch.full_like(logits, s / (k - 1), dtype=torch.float32).scatter_(1, y.view(-1, 1), 1.0 - s)
        return -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()

    def _perturb_weights(self, model, x, x_awp, y, ctx, beta: float) -> None:
        if not self._awp.active(ctx):
            return
        self._trades.beta = beta
        v = self._awp.weight_perturbation(model, x, x_awp, y, ctx)
        with torch.no_grad():
            self._saved = [(p, p.detach().clone()) for p, _ in v]
            for p, d in v:
                p.add_(d)

    def after_backward(self, model, ctx):
        """Put the unperturbed weights back, bit-exactly (idempotent), before the optimizer step."""
        if self._saved is not None:
            with torch.no_grad():
                for p, w in self._saved:
                    p.copy_(w)
            self._saved = None

    def __call__(self, model, x, y, ctx: EpochContext):
        if ctx.eps_fraction != 1.0:
            raise ValueError("oaat: the objective ramps its own eps (eps_start for the first quarter of training, then "
                             f"linearly to eps); remove eps_schedule from the training config (got an eps ramp factor "
                             f"{ctx.eps_fraction})")
        self._flush_ema(model)  # the previous step's optimizer update, now that it has happened
        self.after_backward(model, ctx)  # never stack weight perturbations
        ph = self._phase
        if ph is None or ph.epoch != ctx.epoch:
            self.on_epoch_start(model, ctx)
            ph = self._phase
        sensitive = ph.alternate and ctx.batch % 2 == 0
        if not ph.alternate:
            x_adv = self._pgd_ce(model, x, y, eps=ph.eps, alpha=ph.step_size, steps=ph.steps,
                                 noise=min(self.init_noise, ph.eps))
            x_awp = (x + self.awp_delta_scale * (x_adv - x)).clamp(0.0, 1.0)
        elif sensitive:
            x_adv = self._pgd_ce(model, x, y, eps=self.oracle_eps, alpha=self.oracle_eps / 4, steps=self.oracle_steps,
                                 noise=self.init_noise)
            x_awp = x_adv
        else:
            x_adv = self._oracle_invariant(model, x, y, ph)
            x_awp = x_adv
        model.train()
        self._perturb_weights(model, x, x_awp, y, ctx, ph.beta)
        logits = model(x)
        if sensitive:
            x_tilde = torch.minimum(torch.maximum(x_adv, x - ph.eps), x + ph.eps)
            p_clean = F.softmax(logits.float(), dim=1)
            target = ph.alpha * p_clean + (1.0 - ph.alpha) * F.softmax(model(x_adv).float(), dim=1)
            kl = _kl_batchmean(model(x_tilde), target)
        else:
            kl = _kl_batchmean(model(x_adv), F.softmax(logits.float(), dim=1))
        loss = self._natural(logits, y) + ph.beta * kl
        self._ema_pending = ctx.epoch >= 1  # averaged from (1-based) epoch 2 on; epoch 1 ends with a copy
        ctx.log("eps", ph.eps)
        ctx.log("alternate", float(ph.alternate))
        ctx.log("oracle_sensitive", float(sensitive))
        ctx.log("alpha", ph.alpha)
        ctx.log("lpips_weight", ph.lpips_weight)
        ctx.log("beta", ph.beta)
        ctx.log("kl", kl)
        if ph.alternate and not sensitive and self._last_lpips is not None:
            ctx.log("lpips", self._last_lpips)
            self._last_lpips = None
        return loss, logits

    def __repr__(self) -> str:  # the constructor's parameter names (eps is stored as eps_max: .eps is this epoch's)
        params = ", ".join(f"{'eps' if k == 'eps_max' else k}={v!r}" for k, v in vars(self).items()
                           if not k.startswith("_"))
        return f"OAAT({params})"


__all__ = ["ATES", "FAT", "OAAT", "OAATPhase", "early_stopped_pgd"]
