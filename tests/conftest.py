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
