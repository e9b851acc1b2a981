"""voronoi Figures 1 and 2: the 2-D illustrations.

Figure 1: the Voronoi diagram of a dense two-class sample in the plane, the faces shared by samples of different
classes highlighted (those are the only faces the Voronoi constraints use, Section 3).
Figure 2: the constrained-step procedure: gradient steps from x, each checked against the Voronoi constraints, the
last valid iterate kept (:func:`advrep.voronoi.constraints.voronoi_attack`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import provenance
from ..io import atomic_path
from .constraints import other_class_neighbours, voronoi_attack


def two_class_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n points uniform in [-1, 1]^2, labelled by a sine-shaped boundary."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 2))
    y = (x[:, 1] > 0.4 * np.sin(3 * x[:, 0])).astype(np.int64)
    return x, y


def cross_class_faces(x: np.ndarray, y: np.ndarray):
    """The scipy Voronoi diagram and a boolean per ridge: do its two samples have different labels?"""
    from scipy.spatial import Voronoi

    vor = Voronoi(x)
    cross = y[vor.ridge_points[:, 0]] != y[vor.ridge_points[:, 1]]
    return vor, cross


def _plot_ridges(ax, vor, cross):
    finite = [i for i, r in enumerate(vor.ridge_vertices) if -1 not in r]
    for i in finite:
        seg = vor.vertices[vor.ridge_vertices[i]]
        ax.plot(seg[:, 0], seg[:, 1], color="crimson" if cross[i] else "0.75", lw=2.0 if cross[i] else 0.6,
                zorder=1 if not cross[i] else 2)


def figure1(out_csv, out_png, *, n: int, seed: int, scale: str) -> list[dict]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = two_class_sample(n, seed)
    vor, cross = cross_class_faces(x, y)
    fig, ax = plt.subplots(figsize=(6, 6))
    _plot_ridges(ax, vor, cross)
    ax.scatter(x[:, 0], x[:, 1], c=np.where(y == 1, "tab:red", "tab:blue"), s=10, zorder=3)
    ax.set(xlim=(-1, 1), ylim=(-1, 1), aspect="equal",
           title=f"Voronoi diagram, {n} samples: {int(cross.sum())} of {len(cross)} faces separate classes (red)")
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    rows = [dict(row="Voronoi diagram", column="samples", value=n, unit="count"),
            dict(row="Voronoi diagram", column="faces", value=len(cross), unit="count"),
            dict(row="Voronoi diagram", column="cross-class faces", value=int(cross.sum()), unit="count"),
            dict(row="Voronoi diagram", column="fraction of faces that are cross-class", value=float(cross.mean()),
                 unit="fraction")]
    rows = [{**r, "status": "ok", "comparable": True, "reason": ""} for r in rows]
    prov = provenance.record(paper="voronoi", target="figure1", scale=scale, settings={"n": n}, seed=seed,
                             datasets=[{"name": "two-class 2-D sample (advrep.voronoi.illustrations)",
                                        "source": "generated"}])
    provenance.write_result(rows, out_csv, prov)
    return rows


def figure2(out_csv, out_png, *, n: int, m: int, steps: int, alpha: float, seed: int, scale: str) -> list[dict]:
    """Train a small classifier on the 2-D sample, attack one sample near the class boundary with constrained
    steps, and draw the iterates, the (cross-class) cell and the stopping point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = two_class_sample(n, seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    z = torch.tensor(x[other_class_neighbours(x, y, x, y, m)], dtype=torch.float32)
    # the sample whose cell is largest among those near the boundary makes the clearest picture
    near = np.argsort(np.abs(x[:, 1] - 0.4 * np.sin(3 * x[:, 0])))[: max(5, n // 20)]
    xa, path = voronoi_attack(model, xt[near], yt[near], z[near], steps=steps, alpha=alpha, box=None,
                              return_path=True)
    moved = (xa - xt[near]).norm(dim=1).numpy()
    k = int(np.argmax(moved))
    i = int(near[k])
    iterates = np.stack([p[k].numpy() for p in path])
    iterates = iterates[np.r_[True, np.any(np.diff(iterates, axis=0) != 0, axis=1)]]  # drop repeats after stop

    vor, cross = cross_class_faces(x, y)
    fig, ax = plt.subplots(figsize=(6, 6))
    _plot_ridges(ax, vor, cross)
    ax.scatter(x[:, 0], x[:, 1], c=np.where(y == 1, "tab:red", "tab:blue"), s=10, zorder=3)
    zi = z[near[k]].numpy()
    ax.scatter(zi[:, 0], zi[:, 1], s=40, facecolors="none", edgecolors="k", zorder=4, label="constraining samples")
    ax.plot(iterates[:, 0], iterates[:, 1], "-o", color="tab:green", ms=3, zorder=5, label="gradient steps")
    ax.scatter(*iterates[-1], marker="*", s=200, color="gold", edgecolors="k", zorder=6, label="adversarial example")
    ax.scatter(*x[i], marker="s", s=60, color="k", zorder=6, label="x")
    lo, hi = np.minimum(iterates.min(0), x[i]) - 0.3, np.maximum(iterates.max(0), x[i]) + 0.3
    ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), aspect="equal",
           title="Constrained steps stop at the last iterate inside the Voronoi cell")
    ax.legend(loc="lower right", fontsize=8)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    rows = [dict(row="attacked sample", column="steps taken", value=len(iterates) - 1, unit="count"),
            dict(row="attacked sample", column="distance moved", value=float(moved[k]), unit="distance"),
            dict(row="near-boundary samples", column="mean distance moved", value=float(moved.mean()),
                 unit="distance")]
    rows = [{**r, "status": "ok", "comparable": True, "reason": ""} for r in rows]
    prov = provenance.record(paper="voronoi", target="figure2", scale=scale,
                             settings={"n": n, "m": m, "steps": steps, "alpha": alpha}, seed=seed,
                             datasets=[{"name": "two-class 2-D sample (advrep.voronoi.illustrations)",
                                        "source": "generated"}],
                             extra={"iterates": iterates.tolist(), "sample": x[i].tolist()})
    provenance.write_result(rows, out_csv, prov)
    return rows
