"""Exponential moving average of the weights (used for evaluation when enabled)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``shadow <- decay * shadow + (1 - decay) * param`` after every optimizer step; buffers (BatchNorm running
    statistics, counters) are copied from the model.  ``module`` is the averaged model, in eval mode, without grads.

    Built with the decay alone (``EMA(0.999)``); :meth:`attach` makes the shadow copy when training starts.
    """

    def __init__(self, decay: float = 0.999):
        decay = float(decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module: nn.Module | None = None
        self.updates = 0

    def attach(self, model: nn.Module) -> "EMA":
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        return self

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if self.module is None:
            raise RuntimeError("EMA.update before attach(model)")
        for s, p in zip(self.module.parameters(), model.parameters()):
            s.lerp_(p.detach(), 1.0 - self.decay)
        for s, b in zip(self.module.buffers(), model.buffers()):
            s.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["module"])

    def __repr__(self):
        return f"EMA(decay={self.decay})"


def make_ema(cfg) -> EMA | None:
    """``None``, a decay (``0.999``), ``{"decay": 0.999}`` or an :class:`EMA`."""
    from ..config import parse_number as _number

    if cfg is None or cfg is False or isinstance(cfg, EMA):
        return cfg or None
    if isinstance(cfg, dict):
        unknown = set(cfg) - {"decay"}
        if unknown:
            raise ValueError(f"ema: unknown key(s) {sorted(unknown)}")
        return EMA(_number(cfg.get("decay", 0.999), "ema.decay"))
    return EMA(_number(cfg, "ema"))
