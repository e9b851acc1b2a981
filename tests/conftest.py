"""Shared test helpers."""

import functools

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models are dominated by per-op overhead: one thread is fastest and least disturbed by other jobs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@functools.cache
def digits01() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits as (N, 1, 8, 8) tensors in [0, 1] and their labels (real data, no download)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0, torch.tensor(d.target)


def tamper_npz(src, key: str, dst=None) -> None:
    """Rewrite ``src`` (an .npz) to ``dst`` (default: in place) with one element of array ``key`` changed by +1:
    what a damaged or hand-edited results file looks like to a hash check."""
    import numpy as np

    with np.load(src) as f:
        arrays = {k: f[k] for k in f.files}
    arrays[key] = arrays[key].copy()
    arrays[key].flat[0] += 1
    with open(dst or src, "wb") as fh:
        np.savez(fh, **arrays)


def small_cnn(seed: int = 0, channels: int = 8) -> torch.nn.Module:
    """conv3x3(channels)-BN-ReLU-linear on 1x8x8 inputs (the digits above), seeded: the training tests' model."""
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(), nn.Flatten(),
                         nn.Linear(channels * 64, 10))


def tensor_loader(x, y, batch_size: int = 64, shuffle: bool = True):
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


class Killed(Exception):
    """What a killed training run looks like to the tests: an exception out of the middle of ``fit``."""


def killed_at(spec, epoch: int, batch: int):
    """The training objective ``spec`` (a config dict), except that it raises :class:`Killed` at ``(epoch, batch)``
    before computing anything: a run interrupted mid-epoch, after its last checkpoint."""
    from advrep.train import Hook, make_objective

    base = make_objective(spec)

    def objective(model, xb, yb, c):
        if c.epoch == epoch and c.batch == batch:
            raise Killed
        return base(model, xb, yb, c)

    return Hook(objective)


def ce_input_grad(model, x, y, how: str):
    """The input gradient of the summed per-sample cross-entropy at ``x``: ``"fp32"`` without autocast, ``"fp16"``
    plainly under fp16 autocast on ``x``'s device, ``"rescued"`` under it through the attack loop's underflow
    rescue (``advrep.attacks.core._input_grad``)."""
    import torch.nn.functional as F

    from advrep.attacks import core

    z = x.clone().requires_grad_(True)
    with torch.autocast(x.device.type, dtype=torch.float16, enabled=how != "fp32"):
        loss = F.cross_entropy(model(z), y, reduction="none")
        if how == "rescued":
            return core._input_grad(loss, z)
        return torch.autograd.grad(loss.sum(), z)[0]
