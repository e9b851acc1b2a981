"""PLANES (voronoi Figure 3): the [0,1] embedding is exact, training and evaluation work on a small budget."""

import numpy as np
import torch

from advrep.data.synthetic import make_planes
from advrep.evaluate import nauc
from advrep.voronoi import planes


def test_embedding_is_exact():
    x, *_ = make_planes(10)
    model = planes.make_model(x.shape[1], 100, seed=0)
    mlp = model[1]
    u = planes.embed(x)
    assert torch.allclose(model(u), mlp(torch.from_numpy(x.astype(np.float32))), atol=1e-4)
    # distances scale by 1/SPAN: an L2 radius of 1 in PLANES units is 1/SPAN in the embedding
    assert torch.allclose((u[0] - u[1]).norm() * planes.SPAN, torch.from_numpy(x[0] - x[1]).float().norm(), rtol=1e-5)
    assert u.min() > 0.3 and u.max() < 0.7  # far from the [0,1] box


def test_small_run_trains_robust_models(tmp_path):
    x_tr, y_tr, x_te, y_te = make_planes(10)
    s = planes.PlanesSettings(epochs=15, batch_size=50, lr=0.1, hidden=100, madry_eps=1.0, attack_steps=10,
                              attack_alpha=0.25, m=10, eval_eps_max=1.0, eval_eps_points=6, eval_steps=20,
                              eval_step_sizes=(0.1, 0.25), retrainings=1)
    c = planes.curves(x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64), s, 0, tmp_path)
    for method, acc in c.items():
        assert acc.shape == (1, 6)
        assert acc[0, 0] > 0.95, method  # clean accuracy on the planes
        assert (np.diff(acc[0]) <= 1e-9).all()  # worst case over attacks: never increases with eps
        assert 0.5 < nauc(s.eval_eps, acc[0]) <= 1.0
    assert (tmp_path / "Voronoi" / "0" / "last.pt").exists()  # trained through the engine, checkpointed
    assert planes.not_paper_settings(s) == ["retrainings=1 (paper: 20)"]
