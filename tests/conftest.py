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
