"""From plain settings (what a YAML config gives: names and numbers) to training objects: :func:`build_training`.

Example (every key optional except ``epochs`` and ``objective``)::

    epochs: 200
    seed: 0
    batch_size: 128
    optimizer: {name: sgd, lr: 0.1, momentum: 0.9, nesterov: false, weight_decay: 5.0e-4}
    schedule: {name: multistep, milestones: [100, 150], gamma: 0.1, per: epoch}   # or cosine + warmup_epochs
    objective: {name: trades, eps: 8/255, alpha: 2/255, steps: 10, norm: linf, beta: 6.0}
    # objective: {name: awp, gamma: 5.0e-3, warmup: 9, base: {name: trades, eps: 8/255, ...}}
    # objective: {name: grad_norm, eps_tv: 0.01, lam_lip: 0.1, method: finite_difference, h: 1.0e-3}
    augment: [crop_flip, {name: cutout, size: 16}]     # or none / autoaugment / {name: crop_flip, padding: 4}
    ema: 0.999                                         # or {decay: 0.999} or null
    eps_schedule: {ramp_epochs: 5}                     # linear ramp of the objective's eps from 0
    amp: auto
    device: auto

Numbers may be strings such as ``"8/255"`` or ``"5e-3"`` (PyYAML reads ``5e-3`` without a dot as a string).
Unknown keys are errors naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import DataLoader

from .augment import Augment, make_augment
from .ema import make_ema
from .loop import TrainResult, fit
from ..config import parse_number as _number
from .objectives import Objective, make_objective
from .schedules import EpsSchedule, OptimizerSpec, ScheduleSpec, make_eps_schedule, schedule_spec

KEYS = {"epochs", "seed", "batch_size", "optimizer", "schedule", "objective", "augment", "ema", "eps_schedule",
        "amp", "device", "clip_grad_norm", "log_every", "progress"}
OPTIMIZER_KEYS = {"name", "lr", "momentum", "nesterov", "weight_decay", "betas", "eps"}


def optimizer_spec(cfg) -> OptimizerSpec:
    """``"sgd"`` or ``{"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4}``."""
    if isinstance(cfg, OptimizerSpec):
        return cfg
    if isinstance(cfg, str):
        cfg = {"name": cfg}
    cfg = dict(cfg)
    unknown = set(cfg) - OPTIMIZER_KEYS
    if unknown:
        raise ValueError(f"optimizer: unknown key(s) {sorted(unknown)}; allowed: {sorted(OPTIMIZER_KEYS)}")
    name = str(cfg.pop("name", "sgd")).lower()
    kwargs = {k: (v if k in ("nesterov", "betas") else _number(v, f"optimizer.{k}")) for k, v in cfg.items()}
    if name not in ("sgd", "adam", "adamw"):
        raise ValueError(f"optimizer: unknown name {name!r}; one of sgd, adam, adamw")
    return OptimizerSpec(name, kwargs)


@dataclass
class Training:
    """Everything :func:`fit` needs apart from the model, the data and the checkpoint folder."""

    epochs: int
    objective: Objective
    optimizer: OptimizerSpec
    schedule: ScheduleSpec | None
    seed: int = 0
    batch_size: int | None = None
    augment: Augment | None = None
    ema: float | None = None
    eps_schedule: EpsSchedule | None = None
    amp: str = "auto"
    device: str = "auto"
    clip_grad_norm: float | None = None
    log_every: int = 50
    progress: bool = True
    config: dict = field(default_factory=dict)  # the settings it was built from

    def loader(self, dataset, *, shuffle: bool = True, num_workers: int = 0, drop_last: bool = False,
               batch_size: int | None = None, **kwargs) -> DataLoader:
        """A DataLoader with this config's batch size (``fit`` seeds its sampler per epoch)."""
        bs = batch_size or self.batch_size
        if not bs:
            raise ValueError("no batch_size in the training config and none given")
        return DataLoader(dataset, batch_size=bs, shuffle=shuffle, num_workers=num_workers, drop_last=drop_last,
                          **kwargs)

    def fit(self, model, train_loader, checkpoint_dir: str | Path, **overrides) -> TrainResult:
        kwargs = dict(objective=self.objective, epochs=self.epochs, optimizer=self.optimizer,
                      schedule=self.schedule, seed=self.seed, device=self.device, ema=self.ema,
                      eps_schedule=self.eps_schedule, amp=self.amp, augment=self.augment,
                      clip_grad_norm=self.clip_grad_norm, log_every=self.log_every, progress=self.progress)
        kwargs.update(overrides)
        return fit(model, train_loader, checkpoint_dir=checkpoint_dir, **kwargs)


def build_training(cfg: dict) -> Training:
    """Map a plain training config (see the module docstring) to a :class:`Training`."""
    if not isinstance(cfg, dict):
        raise TypeError(f"training config must be a dict, got {type(cfg).__name__}")
    unknown = set(cfg) - KEYS
    if unknown:
        raise ValueError(f"training config: unknown key(s) {sorted(unknown)}; allowed: {sorted(KEYS)}")
    for required in ("epochs", "objective"):
        if required not in cfg:
            raise ValueError(f"training config: {required!r} is required")
    epochs = int(_number(cfg["epochs"], "epochs"))
    ema = make_ema(cfg.get("ema"))
    clip = cfg.get("clip_grad_norm")
    return Training(
        epochs=epochs,
        objective=make_objective(cfg["objective"]),
        optimizer=optimizer_spec(cfg.get("optimizer", "sgd")),
        schedule=schedule_spec(cfg.get("schedule")),
        seed=int(_number(cfg.get("seed", 0), "seed")),
        batch_size=None if cfg.get("batch_size") is None else int(_number(cfg["batch_size"], "batch_size")),
        augment=make_augment(cfg.get("augment")),
        ema=None if ema is None else ema.decay,
        eps_schedule=make_eps_schedule(cfg.get("eps_schedule")),
        amp=cfg.get("amp", "auto"),
        device=cfg.get("device", "auto"),
        clip_grad_norm=None if clip is None else float(_number(clip, "clip_grad_norm")),
        log_every=int(cfg.get("log_every", 50)),
        progress=bool(cfg.get("progress", True)),
        config=dict(cfg),
    )
