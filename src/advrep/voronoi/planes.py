"""voronoi Figure 3: PLANES in codimension 10 and 500, Voronoi-constrained vs Madry adversarial training.

The paper's settings (003, Section 5): one-hidden-layer ReLU MLP with 100 units, Adam with learning rate 0.1,
results averaged over 20 retrainings; Madry's adversarial training with L2 eps = 1 (Section 5.1, "training eps = 1";
the L2-balls of radius 1 cover the planes); Voronoi constraints with m = 10.  Not stated in the paper, so settings
of ours (config ``voronoi.figure3``): epochs, batch size, the inner attack's steps and step size, and the evaluation
eps grid; eps_max = 1 because "the spacing along the axis x_d is chosen so the maximum perturbation size is 1" (the
two planes are 2 apart, so no classifier is robust beyond 1).  Evaluation: L2 PGD with several step sizes, and FGM
(the L2 fast gradient method), per sample: broken at eps if any of them breaks it.

Inputs.  The package's attacks and objectives take inputs in [0, 1]; PLANES coordinates are in [-10, 10] x {0, 2}.
We map them isotropically, u = (x - LO) / SPAN with LO = -30, SPAN = 60, and the model's first layer maps back, so the
network computes exactly the function of the original coordinates, every distance (eps, step size, Voronoi cell) is
the original one divided by SPAN, and the [0, 1] box lies 20 units beyond the data: no attack within the radii used
here can touch it.  Every number reported is in the paper's units.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..evaluate import nauc, robust_accuracy_at
from ..models import create_model
from ..train import IndexedDataset, fit
from ..train.objectives import PGDAT
from .constraints import NeighbourIndex
from .training import VoronoiAT

LO, SPAN = -30.0, 60.0
METHODS = ("Voronoi", "Madry")
# Retraining r of the run with seed s starts from seed s * RETRAINING_STRIDE + r: the runs of different seeds
# (config ``seeds``) share no retraining; seed 0 gives seeds 0 ... retrainings - 1.
RETRAINING_STRIDE = 10_000


def embed(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(((np.asarray(x, dtype=np.float64) - LO) / SPAN).astype(np.float32))


class Unembed(nn.Module):
    """First layer: back to PLANES coordinates (x = LO + SPAN * u)."""

    def forward(self, u):
        return LO + SPAN * u


@dataclass(frozen=True)
class PlanesSettings:
    epochs: int
    batch_size: int
    lr: float  # Adam (paper: 0.1)
    hidden: int  # paper: 100
    madry_eps: float  # paper: 1 (L2)
    attack_steps: int  # inner maximisation steps (both methods)
    attack_alpha: float  # inner step size, PLANES units
    m: int  # paper: 10
    eval_eps_max: float  # PLANES units (1: see the module docstring)
    eval_eps_points: int  # evaluation grid 0 ... eval_eps_max
    eval_steps: int
    eval_step_sizes: tuple  # PGD step sizes as fractions of eps
    retrainings: int  # paper: 20
    codims: tuple = (10, 500)
    eval_line_points: int = 0  # gradient-free probes straight across (line_search_broken); 0 = none

    @property
    def eval_eps(self) -> tuple:
        return tuple(float(e) for e in np.linspace(0.0, self.eval_eps_max, self.eval_eps_points))


def make_model(dim: int, hidden: int, seed: int) -> nn.Module:
    return nn.Sequential(Unembed(), create_model("mlp", in_shape=(dim,), num_classes=2, hidden=hidden,
                                                 normalization="none", seed=seed))


def train_one(method: str, x_train: np.ndarray, y_train: np.ndarray, s: PlanesSettings, seed: int,
              checkpoint_dir) -> nn.Module:
    u, y = embed(x_train), torch.from_numpy(y_train)
    model = make_model(x_train.shape[1], s.hidden, seed)
    if method == "Madry":
        objective = PGDAT(eps=s.madry_eps / SPAN, alpha=s.attack_alpha / SPAN, steps=s.attack_steps, norm="l2")
    elif method == "Voronoi":
        objective = VoronoiAT(NeighbourIndex(u.numpy(), y_train), m=s.m, steps=s.attack_steps,
                              alpha=s.attack_alpha / SPAN, step_norm="l2", p=2.0, box=(0.0, 1.0))
    else:
        raise ValueError(f"method must be one of {METHODS}")
    dataset = TensorDataset(u, y)
    if method == "Voronoi":  # indices in the batches: neighbours searched once per training set, not per batch
        dataset = IndexedDataset(dataset)
    loader = DataLoader(dataset, batch_size=s.batch_size, shuffle=True)
    fit(model, loader, objective=objective, epochs=s.epochs, optimizer={"name": "adam", "lr": s.lr},
        checkpoint_dir=checkpoint_dir, seed=seed, device="cpu", progress=False)
    return model.eval()


def evaluate_one(model: nn.Module, x_test: np.ndarray, y_test: np.ndarray, s: PlanesSettings) -> np.ndarray:
    """Robust accuracy at each eval eps: per sample, broken if FGM, PGD with any of the step sizes, or (with
    ``eval_line_points``) the gradient-free :func:`line_search_broken` breaks it; a sample broken at eps is broken at
    every larger eps (its adversarial point lies in the larger ball too)."""
    attacks = [("fgsm", {})] + [("pgd", {"steps": s.eval_steps, "alpha_per_eps": f, "random_start": False})
                                for f in s.eval_step_sizes]
    broken = ~robust_accuracy_at(model, embed(x_test), torch.from_numpy(y_test), [e / SPAN for e in s.eval_eps],
                                 attacks, norm="l2")
    if s.eval_line_points:
        broken |= line_search_broken(model, x_test, y_test, s.eval_eps, s.eval_line_points)
    return (~np.maximum.accumulate(broken, axis=0)).mean(1)


def across(x_test: np.ndarray, y_test: np.ndarray) -> np.ndarray:
    """(N, D) unit directions (PLANES units): from each test point towards its nearest test point of the other
    class (on PLANES straight across to the other plane, along x_d)."""
    x = np.asarray(x_test, np.float64)
    d2 = (x ** 2).sum(1)[:, None] + (x ** 2).sum(1)[None, :] - 2 * x @ x.T
    d2[np.asarray(y_test)[:, None] == np.asarray(y_test)[None, :]] = np.inf
    d = x[np.argmin(d2, axis=1)] - x
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def line_search_broken(model: nn.Module, x_test: np.ndarray, y_test: np.ndarray, eps_list, points: int,
                       chunk: int = 50_000) -> np.ndarray:
    """(len(eps_list), N) broken by a search without gradients: per test point, ``points`` probes at distances
    t = k * max(eps) / points (k = 1 ... points) along :func:`across`; broken at eps when a probe at t <= eps is
    misclassified (or the point itself is).  Every probe is one forward pass at a real point of the eps-ball, so
    zero or misleading gradients cannot hide a break: on PLANES, FGM and PGD miss points whose hidden units are all
    off (input gradient exactly 0), and a trained model's acc(eps = 1) must be <= 1/2 (the midpoint between a test
    point and its twin across is 1 from both and gets one class), which gradient attacks alone did not show
    (benchmarks/voronoi_planes_eval_strength.py)."""
    eps = np.asarray(eps_list, np.float64)
    t = eps.max() * np.arange(1, points + 1) / points  # PLANES units
    u, y = embed(x_test), torch.from_numpy(np.asarray(y_test))
    step = torch.from_numpy(across(x_test, y_test) / SPAN).float()  # embedded units per PLANES unit
    tt = torch.from_numpy(t).float()
    first = np.full(len(y), np.inf)
    with torch.no_grad():
        first[(model(u).argmax(1) != y).numpy()] = 0.0
        per = max(1, chunk // points)
        for s in range(0, len(y), per):
            sl = slice(s, s + per)
            probes = u[sl, None, :] + tt[None, :, None] * step[sl, None, :]  # (b, points, D)
            wrong = (model(probes.reshape(-1, u.shape[1])).argmax(1).view(probes.shape[:2]) != y[sl, None]).numpy()
            hit = np.where(wrong.any(1), t[np.argmax(wrong, axis=1)], np.inf)
            first[sl] = np.minimum(first[sl], hit)
    return first[None, :] <= eps[:, None] + 1e-9


def curves(x_train, y_train, x_test, y_test, s: PlanesSettings, seed: int, workdir) -> dict[str, np.ndarray]:
    """method -> (retrainings, len(eval_eps)) robust accuracies (retraining r seeded with
    ``seed * RETRAINING_STRIDE + r``)."""
    if s.retrainings > RETRAINING_STRIDE:
        raise ValueError(f"retrainings must be <= {RETRAINING_STRIDE}, got {s.retrainings}")
    out = {}
    for method in METHODS:
        rows = []
        for r in range(s.retrainings):
            model = train_one(method, x_train, y_train, s, seed * RETRAINING_STRIDE + r, f"{workdir}/{method}/{r}")
            rows.append(evaluate_one(model, x_test, y_test, s))
        out[method] = np.stack(rows)
    return out


# The paper's own PLANES settings (003 Section 5 "Models", 5.1); anything else is not comparable.
PAPER = {"hidden": 100, "lr": 0.1, "madry_eps": 1.0, "m": 10, "retrainings": 20}


def not_paper_settings(s: PlanesSettings) -> list[str]:
    return [f"{k}={getattr(s, k)} (paper: {v})" for k, v in PAPER.items() if getattr(s, k) != v]


def _settings(settings: dict) -> PlanesSettings:
    return PlanesSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})


def run_codim(data_file, out_npz, *, settings: dict, seed: int, workdir) -> dict:
    """Train and evaluate every retraining of both methods on one codimension; save the accuracy curves
    (method -> (retrainings, eps points)) and the dataset's metadata to ``out_npz`` (atomically)."""
    import json

    import faiss

    from .. import data as advdata
    from ..io import atomic_path

    # A 100-unit MLP on batches of 50 runs fastest on one thread; with more, torch's and faiss's OpenMP pools
    # spin against each other (measured: 60 s instead of 2 s for one Voronoi training on 2 busy cores).
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    s = _settings(settings)
    p = advdata.load(data_file)
    t0 = time.perf_counter()
    c = curves(p.x_train, p.y_train, p.x_test, p.y_test, s, seed, workdir)
    with atomic_path(out_npz) as tmp:
        np.savez(tmp, **c, meta=np.array(json.dumps(p.meta)), seconds=np.array(time.perf_counter() - t0))
    return c


def run(out_csv, out_png, *, curve_files: dict, settings: dict, scale: str, seed: int) -> list[dict]:
    """Figure 3 from the per-codimension curves (``curve_files``: codimension -> :func:`run_codim` output): the
    long-format CSV (NAUC per method and codimension, mean and std of the accuracy at every eps), its provenance and
    the figure.  Cells are comparable when the paper's stated settings are used (:data:`PAPER`).  The NAUC and
    accuracy cells summarise the retrainings the way :mod:`advrep.seeds` summarises seeds: mean, std (ddof 1), n
    and the 95% interval (columns ``std``, ``n``, ``ci_low``, ``ci_high``), which the audit uses."""
    import json

    from .. import provenance
    from ..seeds import summarise

    s = _settings(settings)
    deviations = not_paper_settings(s)
    reason = "; ".join(deviations)
    rows, curves_by_codim, metas = [], {}, []
    for codim, path in sorted(curve_files.items()):
        z = np.load(path)
        meta = json.loads(str(z["meta"]))
        metas.append(meta)
        c = {m: z[m] for m in METHODS}
        curves_by_codim[codim] = c
        tag = provenance.dataset_tag(meta)
        for method, acc in c.items():
            cell = dict(row=f"{method} (codim {codim})", status="ok", comparable=not deviations, reason=reason,
                        dataset=tag)
            over = summarise([nauc(s.eval_eps, a) for a in acc])
            rows.append(dict(column="NAUC", unit="fraction", **cell, **over))
            rows.append(dict(column="NAUC std over retrainings", value=_std(over), unit="fraction", **cell))
            for e, at_eps in zip(s.eval_eps, acc.T):
                over = summarise(at_eps)
                rows.append(dict(column=f"accuracy at eps={e:g}", unit="fraction", **cell, **over))
                rows.append(dict(column=f"accuracy std at eps={e:g}", value=_std(over), unit="fraction", **cell))
        rows.append(dict(row=f"codim {codim}", column="seconds", value=float(z["seconds"]), unit="seconds",
                         status="ok", comparable=False, reason="timing, not a result", dataset=tag))
    plot(curves_by_codim, s, out_png)
    prov = provenance.record(paper="voronoi", target="figure3", scale=scale, settings=settings, seed=seed,
                             datasets=metas,
                             extra={"our_choices_not_in_paper": ["epochs", "batch_size", "attack_steps",
                                                                 "attack_alpha", "eval_eps_max", "eval_eps_points",
                                                                 "eval_steps", "eval_step_sizes",
                                                                 "eval_line_points"],
                                    "embedding": {"LO": LO, "SPAN": SPAN}})
    provenance.write_result(rows, out_csv, prov)
    return rows


def _std(summary: dict) -> float:
    """The std over retrainings (ddof 1); 0 for a single retraining, which has no spread to estimate."""
    return 0.0 if summary["n"] < 2 else summary["std"]


def plot(curves_by_codim: dict, s: PlanesSettings, out_png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    fig, axes = plt.subplots(1, len(curves_by_codim), figsize=(5.5 * len(curves_by_codim), 4), squeeze=False)
    for ax, (codim, c) in zip(axes[0], sorted(curves_by_codim.items())):
        for method, color in zip(METHODS, ("tab:green", "tab:blue")):
            acc = c[method]
            m, sd = acc.mean(0), (acc.std(0, ddof=1) if len(acc) > 1 else np.zeros(acc.shape[1]))
            ax.plot(s.eval_eps, m, color=color,
                    label=f"{method} (NAUC {np.mean([nauc(s.eval_eps, a) for a in acc]):.2f})")
            ax.fill_between(s.eval_eps, np.clip(m - sd, 0, 1), np.clip(m + sd, 0, 1), color=color, alpha=0.2)
        ax.set(title=f"PLANES, codimension {codim} ({len(c[METHODS[0]])} retrainings)", xlabel="eps (L2)",
               ylabel="robust accuracy", ylim=(0, 1.02))
        ax.legend(loc="lower left")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
