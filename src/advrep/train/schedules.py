"""Optimizers, learning-rate schedules and epsilon schedules.

Learning-rate schedules are pure functions of the position in training, ``t`` in epochs:

* ``per="iteration"`` (default): ``t = step / steps_per_epoch`` with ``step`` the 0-based global optimizer step,
  i.e. the position at the *start* of the step; the lr changes every step.
* ``per="epoch"``: ``t = epoch`` (0-based), constant within an epoch (torch ``lr_scheduler`` stepped per epoch).

The factor multiplying each parameter group's base lr:

* ``constant``: 1;
* ``step``: ``gamma ** floor(t / step_size)``;
* ``multistep``: ``gamma ** #{m in milestones : m <= t}`` (milestones in epochs, absolute);
* ``cosine``: ``min_factor + (1 - min_factor) * (1 + cos(pi * (t - w) / (epochs - w))) / 2`` for ``t >= w``
  (annealed over the epochs after the warm-up ``w``);
* linear warm-up (any schedule, ``warmup_epochs = w > 0``): for ``t < w`` the factor is
  ``warmup_start + (1 - warmup_start) * t / w``, reaching the schedule's value at ``t = w``.

Epsilon schedule (:class:`EpsSchedule`): ``fraction(t) = start + (1 - start) * min(1, t / ramp_epochs)`` with the
same ``t`` convention (default per epoch: epoch 0 trains at ``start * eps``, epoch ``ramp_epochs`` and later at
``eps``); the loop passes it to objectives as ``epoch_ctx.eps_fraction``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..config import parse_number as _number

SCHEDULES = ("constant", "step", "multistep", "cosine")
OPTIMIZERS = ("sgd", "adam", "adamw")
PER = ("iteration", "epoch")


def make_optimizer(params, name: str = "sgd", lr: float = 0.1, momentum: float = 0.0, nesterov: bool = False,
                   weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov, weight decay), Adam (L2 weight decay) or AdamW (decoupled weight decay)."""
    name = str(name).lower()
    lr, momentum, weight_decay, eps = (float(_number(v)) for v in (lr, momentum, weight_decay, eps))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=bool(nesterov), weight_decay=weight_decay)
    if momentum or nesterov:
        raise ValueError(f"optimizer {name!r} takes no momentum/nesterov (use betas)")
    betas = tuple(float(_number(b)) for b in betas)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; one of {OPTIMIZERS}")


@dataclass
class OptimizerSpec:
    """An optimizer to build once the model exists (``fit`` accepts it in place of an optimizer)."""

    name: str = "sgd"
    kwargs: dict = field(default_factory=dict)

    def build(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(model.parameters(), self.name, **self.kwargs)


def lr_factor(t: float, *, name: str = "constant", epochs: float = 1, warmup_epochs: float = 0,
              warmup_start: float = 0.1, step_size: float | None = None, milestones=(), gamma: float = 0.1,
              min_factor: float = 0.0) -> float:
    """The learning-rate factor at position ``t`` (epochs); see the module docstring."""
    w = float(warmup_epochs)
    if w > 0 and t < w:
        return warmup_start + (1.0 - warmup_start) * t / w
    if name == "constant":
        return 1.0
    if name == "step":
        return gamma ** math.floor(t / step_size)
    if name == "multistep":
        return gamma ** sum(1 for m in milestones if m <= t)
    if name == "cosine":
        span = max(float(epochs) - w, 1e-12)
        progress = min(max((t - w) / span, 0.0), 1.0)
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {name!r}; one of {SCHEDULES}")


class LRSchedule:
    """Sets each parameter group's lr to ``base_lr * lr_factor(t)`` before every optimizer step (``set(step)``).

    Stateless apart from the base learning rates (captured from the optimizer when built) and the last step, both in
    ``state_dict`` so a resumed run continues the same curve.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, name: str = "constant", epochs: int,
                 steps_per_epoch: int, per: str = "iteration", warmup_epochs: float = 0, warmup_start: float = 0.1,
                 step_size: float | None = None, milestones=(), gamma: float = 0.1, min_lr: float = 0.0):
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; one of {SCHEDULES}")
        if per not in PER:
            raise ValueError(f"schedule 'per' must be one of {PER}, got {per!r}")
        if name == "step" and not step_size:
            raise ValueError("schedule 'step' needs step_size (epochs)")
        if name == "multistep" and not milestones:
            raise ValueError("schedule 'multistep' needs milestones (epochs)")
        if steps_per_epoch < 1:
            raise ValueError("steps_per_epoch must be >= 1 (empty training loader?)")
        self.optimizer = optimizer
        self.name = name
        self.per = per
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.min_lr = float(min_lr)
        self.params = dict(warmup_epochs=float(warmup_epochs), warmup_start=float(warmup_start),
                           step_size=None if step_size is None else float(step_size),
                           milestones=tuple(float(m) for m in milestones), gamma=float(gamma))
        self.last_step = -1

    def position(self, step: int) -> float:
        return step / self.steps_per_epoch if self.per == "iteration" else float(step // self.steps_per_epoch)

    def lrs_at(self, step: int) -> list[float]:
        t = self.position(step)
        out = []
        for base in self.base_lrs:
            min_factor = self.min_lr / base if base > 0 else 0.0
            out.append(base * lr_factor(t, name=self.name, epochs=self.epochs, min_factor=min_factor, **self.params))
        return out

    def lr_at(self, step: int) -> float:
        return self.lrs_at(step)[0]

    def set(self, step: int) -> None:
        for g, lr in zip(self.optimizer.param_groups, self.lrs_at(step)):
            g["lr"] = lr
        self.last_step = step

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"base_lrs": list(self.base_lrs), "last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        self.last_step = int(state["last_step"])


@dataclass
class ScheduleSpec:
    """A schedule to build once the optimizer and the loader length exist (``fit`` accepts it)."""

    name: str = "constant"
    kwargs: dict = field(default_factory=dict)

    def build(self, optimizer, epochs: int, steps_per_epoch: int) -> LRSchedule:
        return LRSchedule(optimizer, name=self.name, epochs=epochs, steps_per_epoch=steps_per_epoch, **self.kwargs)


def schedule_spec(cfg) -> ScheduleSpec:
    """``"cosine"`` or ``{"name": "cosine", "warmup_epochs": 5, "per": "iteration", "min_lr": 0}`` etc."""
    if cfg is None:
        return ScheduleSpec()
    if isinstance(cfg, str):
        return ScheduleSpec(cfg)
    cfg = dict(cfg)
    name = cfg.pop("name", "constant")
    allowed = {"per", "warmup_epochs", "warmup_start", "step_size", "milestones", "gamma", "min_lr"}
    unknown = set(cfg) - allowed
    if unknown:
        raise ValueError(f"schedule: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if "milestones" in cfg:
        cfg["milestones"] = [float(_number(m)) for m in cfg["milestones"]]
    for k in ("warmup_epochs", "warmup_start", "step_size", "gamma", "min_lr"):
        if k in cfg and cfg[k] is not None:
            cfg[k] = float(_number(cfg[k], k))
    return ScheduleSpec(name, cfg)


class EpsSchedule:
    """Linear epsilon ramp: ``fraction = start + (1 - start) * min(1, t / ramp_epochs)`` (``t`` as for lr
    schedules: the epoch, or step / steps_per_epoch with ``per="iteration"``); ``ramp_epochs = 0`` is no ramp."""

    def __init__(self, ramp_epochs: float, start: float = 0.0, per: str = "epoch"):
        if per not in PER:
            raise ValueError(f"eps schedule 'per' must be one of {PER}, got {per!r}")
        self.ramp_epochs = float(_number(ramp_epochs))
        self.start = float(_number(start))
        self.per = per
        if self.ramp_epochs < 0 or not 0.0 <= self.start <= 1.0:
            raise ValueError("eps schedule: ramp_epochs must be >= 0 and start in [0, 1]")

    def fraction(self, step: int, steps_per_epoch: int) -> float:
        if self.ramp_epochs == 0:
            return 1.0
        t = step / steps_per_epoch if self.per == "iteration" else float(step // steps_per_epoch)
        return self.start + (1.0 - self.start) * min(1.0, t / self.ramp_epochs)

    def __repr__(self):
        return f"EpsSchedule(ramp_epochs={self.ramp_epochs}, start={self.start}, per={self.per!r})"


def make_eps_schedule(cfg) -> EpsSchedule | None:
    """``None``, a number of ramp epochs, or ``{"ramp_epochs": k, "start": 0, "per": "epoch"}``."""
    if cfg is None or isinstance(cfg, EpsSchedule):
        return cfg
    if isinstance(cfg, dict):
        unknown = set(cfg) - {"ramp_epochs", "start", "per"}
        if unknown:
            raise ValueError(f"eps_schedule: unknown key(s) {sorted(unknown)}")
        return EpsSchedule(**cfg)
    return EpsSchedule(cfg)
