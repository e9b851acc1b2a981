"""Benchmark workloads built from data reachable here: real Fashion-MNIST from a mirror when present, else
scikit-learn's digits repeated with small noise up to the requested size."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def mnist_sized(n: int, mirror: str | None, standin: str = "digits28") -> tuple[np.ndarray, np.ndarray, str]:
    """(uint8 images NHWC, labels, description): the first ``n`` Fashion-MNIST training images, or ``standin``
    (``digits28`` / ``digits32``) repeated with +-8 grey-level noise to ``n`` images."""
    from advrep import data

    with tempfile.TemporaryDirectory() as tmp:
        if mirror and data.availability("fashion_mnist", root=tmp, mirror=mirror)[0]:
            data.prepare("fashion_mnist", Path(tmp) / "f.npz", root=tmp, mirror=mirror)
            p = data.load(Path(tmp) / "f.npz")
            return p.x_train[:n], p.y_train[:n], "Fashion-MNIST"
        data.prepare(standin, Path(tmp) / "d.npz", root=tmp)
        p = data.load(Path(tmp) / "d.npz")
    reps = -(-n // len(p.x_train))
    rng = np.random.default_rng(0)
    x = np.concatenate([p.x_train] * reps)[:n].astype(np.int16)
    x = np.clip(x + rng.integers(-8, 9, size=x.shape), 0, 255).astype(np.uint8)
    return x, np.concatenate([p.y_train] * reps)[:n], f"{standin} repeated with noise"
