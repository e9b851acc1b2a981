"""What the training loop tells an objective about where it is (``epoch_ctx``), and seed derivation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

# Independent random streams derived from (seed, epoch, ...): each gets its own tag so they never coincide.
STREAM_DATA = 1  # sampler order
STREAM_WORKERS = 2  # DataLoader worker base seed
STREAM_EPOCH = 3  # global torch / numpy / python RNGs at the start of an epoch (random starts, dropout)
STREAM_AUGMENT = 4  # per-batch (in-loop) or per-sample (dataset wrapper) augmentation


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from non-negative integers (numpy SeedSequence): ``(seed, epoch)`` and ``(seed + 1,
    epoch - 1)`` give unrelated streams, unlike ``seed + epoch``."""
    ints = [int(p) for p in parts]
    if any(p < 0 for p in ints):
        raise ValueError(f"seeds must be non-negative integers, got {parts}")
    return int(np.random.SeedSequence(ints).generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


@dataclass
class EpochContext:
    """Mutable per-step state handed to objectives as ``epoch_ctx``.

    ``epoch`` and ``batch`` are 0-based; ``step`` is the global optimizer step (0-based, counted over all epochs);
    ``eps_fraction`` is the epsilon-ramp factor in [0, 1] (1 without an epsilon schedule): adversarial objectives
    train at ``eps * eps_fraction`` with step size ``alpha * eps_fraction``.  ``index``: the (B,) positions in the
    training set of the current batch's samples when the loader yields them (batches with an ``index`` field, e.g.
    from :class:`advrep.train.loop.IndexedDataset`), else None; on the CPU, as the loader gave it.
    """

    epoch: int = 0
    epochs: int = 1
    batch: int = 0
    steps_per_epoch: int = 1
    step: int = 0
    lr: float = 0.0
    eps_fraction: float = 1.0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None
    metrics: dict = field(default_factory=dict)  # name -> [sum, count], averaged per epoch into the history
    index: torch.Tensor | None = None

    def log(self, name: str, value) -> None:
        """Record a scalar (tensor or number) to be averaged over the epoch and stored in the history."""
        v = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
        s = self.metrics.setdefault(name, [0.0, 0])
        s[0] = s[0] + v
        s[1] += 1

    def pop_metrics(self) -> dict:
        out = {k: float(s / n) for k, (s, n) in self.metrics.items() if n}
        self.metrics = {}
        return out
