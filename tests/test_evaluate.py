"""Robust-accuracy curves and NAUC."""

import numpy as np
import pytest
import torch
from torch import nn

from advrep.evaluate import nauc, robust_accuracy_at


def test_nauc_is_the_normalised_area():
    assert nauc([0, 1], [1, 1]) == 1.0
    assert nauc([0, 0.5, 1.0], [1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert nauc([0, 2], [1, 0]) == pytest.approx(0.5)  # normalised by eps_max
    e = np.linspace(0, 0.4, 41)
    assert nauc(e, np.exp(-e)) == pytest.approx((1 - np.exp(-0.4)) / 0.4, rel=1e-3)
    with pytest.raises(ValueError):
        nauc([0.1, 1], [1, 1])


def test_curve_on_a_linear_model_matches_the_exact_margin():
    """For a linear 2-class model the minimal L2 perturbation is |w.x + b| / ||w||: PGD must break a sample exactly
    when eps exceeds it (up to the step resolution)."""
    torch.manual_seed(0)
    lin = nn.Linear(5, 1)
    model = nn.Sequential(lin, nn.Flatten(), _TwoLogits())
    x = torch.rand(64, 5)
    with torch.no_grad():
        y = model(x).argmax(1)
        dist = (lin(x).squeeze(1).abs() / lin.weight.norm()).numpy()
    eps = [0.0, 0.05, 0.1, 0.2, 0.4]
    ok = robust_accuracy_at(model, x, y, eps, [("pgd", {"steps": 20, "random_start": False})], norm="l2")
    for i, e in enumerate(eps):
        clear = np.abs(dist - e) > 0.02
        assert (ok[i][clear] == (dist[clear] > e)).all()
    assert ok[0].all()
    assert (np.diff(ok.mean(1)) <= 0).all()


class _TwoLogits(nn.Module):
    def forward(self, s):
        return torch.cat([-s, s], dim=1)
