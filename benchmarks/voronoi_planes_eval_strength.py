"""Benchmark (issue 15, part 1): is the voronoi Figure 3 (PLANES) evaluation strong enough?

Trains both methods (Voronoi-constrained and Madry L2 adversarial training) on both codimensions at today's
``voronoi.figure3`` settings (read from ``config/config.yaml`` through :mod:`advrep.config`, so it follows the config),
with :func:`advrep.voronoi.planes.train_one`, and evaluates every model twice on the same test points and eps grid:

* today: :func:`advrep.voronoi.planes.evaluate_one` (FGM + PGD at the config's steps and step sizes, per sample);
* strong: per sample worst case over today's attacks and
    - L2 PGD (:func:`advrep.attacks.worst_case` over ``run_attack("pgd", ...)``), ``--pgd-steps`` (1,000) steps,
      ``--restarts`` (10) random restarts, at each step size of ``--step-sizes`` (fractions of eps); CE loss, which
      for two classes has the same normalised L2 gradient as the CW margin loss.  Run on an exactly equivalent model
      over the row space of the MLP's first layer (:class:`RowSpaceModel`: the network sees ``W1 x`` only, so the
      component of a perturbation orthogonal to the rows of ``W1`` changes nothing and only spends budget); every
      adversarial point is mapped back and re-checked on the original model, inside the eps-ball, before it counts;
    - a decision-based, gradient-free check: an exact line search (:func:`line_search_distance`) along the
      directions that matter on PLANES (straight across to the other plane, and towards the ``--k-nearest`` nearest
      training points of the other class), every point of a grid of step ``eps_max / --line-points`` checked with
      a forward pass;
    - foolbox's Boundary attack (``run_attack("boundary", ...)`` through ``worst_case``, decision-based,
      ``--boundary-steps`` steps), at every eps, on the row-space model and re-checked like PGD's points;
  and a sample broken at some eps is broken at every larger one (its adversarial point lies in the larger ball).

Prints, per (method, codim): NAUC today, NAUC strong, the drop, and whether drop <= 0.01 (mean over retrainings),
plus the NAUC of each strong component alone; writes one CSV row per model (``--out``/eval_strength.csv).

    .venv/bin/python benchmarks/voronoi_planes_eval_strength.py [--retrainings 1] [--out /tmp/voronoi_eval_strength]
        [--pgd-steps 1000] [--restarts 10] [--step-sizes 0.01 0.05 0.25] [--boundary-steps 1000] [--codims 10 500]
"""

from __future__ import annotations

import argparse
import csv
import math
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def figure3_settings(config_path=ROOT / "config" / "config.yaml", scale: str | None = None) -> dict:
    """``voronoi.figure3`` of the config at ``scale`` (default: the config's), by_scale overlays applied."""
    import yaml

    from advrep.config import resolve

    with open(config_path) as f:
        cfg = yaml.safe_load(f)
    return dict(resolve(cfg, scale)["voronoi"]["figure3"])


# ------------------------------------------------------------------------------------------- equivalent model
class RowSpaceModel(nn.Module):
    """A :func:`advrep.voronoi.planes.make_model` MLP seen through the row space of its first layer: with ``Q``
    (D, r) an orthonormal basis of the rows of ``fc1.weight``, ``c = 0.5`` in R^D and ``c_r = 0.5`` in R^r,
    ``h(w) = model(c + Q (w - c_r))``, computed with ``fc1`` folded into an (r -> hidden) layer.  For an input ``u``,
    ``w = c_r + Q^T (u - c)`` (:meth:`project`) gives ``h(w) = model(u)`` (``fc1`` only sees the row-space
    component, Unembed being isotropic), and a step ``dw`` of ``w`` is the step ``Q dw`` of ``u`` with the same L2
    norm (:meth:`lift`): attacking ``h`` is attacking ``model`` in the only directions that can change its output,
    at r/D of the cost (r <= 100 hidden units; codim 500: D = 502)."""

    def __init__(self, model: nn.Module, tol: float = 1e-6):
        super().__init__()
        from advrep.voronoi import planes

        if not (isinstance(model, nn.Sequential) and len(model) == 2 and isinstance(model[0], planes.Unembed)
                and isinstance(getattr(model[1], "normalize", None), nn.Identity)
                and hasattr(getattr(model[1], "core", None), "fc1")):
            raise ValueError("RowSpaceModel expects planes.make_model(...): Unembed, then an unnormalised MLP")
        net = model[1]
        fc1, self.fc2 = net.core.fc1, net.core.fc2
        w1, b1 = fc1.weight.detach().double(), fc1.bias.detach().double()
        _, sv, vt = torch.linalg.svd(w1, full_matrices=False)
        r = int((sv > tol * sv.max()).sum())
        q = vt[:r].T.contiguous()  # (D, r)
        wq = planes.SPAN * (w1 @ q)  # (hidden, r)
        bias = b1 + (planes.LO + 0.5 * planes.SPAN) * w1.sum(1) - 0.5 * wq.sum(1)
        self.fc1 = nn.Linear(r, w1.shape[0])
        with torch.no_grad():
            self.fc1.weight.copy_(wq.float())
            self.fc1.bias.copy_(bias.float())
        self.register_buffer("q", q)
        self.dim, self.rank = w1.shape[1], r
        self.requires_grad_(False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(w)))

    def project(self, u: torch.Tensor) -> torch.Tensor:
        return (0.5 + (u.double() - 0.5) @ self.q).to(u.dtype)

    def lift(self, u: torch.Tensor, w: torch.Tensor, w_adv: torch.Tensor) -> torch.Tensor:
        """``u + Q (w_adv - w)``: the input-space point of the row-space point ``w_adv`` found from ``w``."""
        return (u.double() + (w_adv.double() - w.double()) @ self.q.T).to(u.dtype)


# ------------------------------------------------------------------------------------------ strong components
def today_per_sample(model, x_test, y_test, s) -> np.ndarray:
    """planes.evaluate_one's per-sample verdicts (K eps, N) bool (robust), captured from its own call."""
    from advrep.voronoi import planes

    seen, lines = [], []
    real, real_line = planes.robust_accuracy_at, planes.line_search_broken

    def spy(*a, **k):
        ok = real(*a, **k)
        seen.append(ok)
        return ok

    def spy_line(*a, **k):
        broken = real_line(*a, **k)
        lines.append(broken)
        return broken

    with mock.patch.object(planes, "robust_accuracy_at", spy), mock.patch.object(planes, "line_search_broken",
                                                                                 spy_line):
        acc = planes.evaluate_one(model, x_test, y_test, s)
    broken = ~seen[0] if len(seen) == 1 else None
    for b in lines:
        broken = broken | b
    ok = None if broken is None else ~np.maximum.accumulate(broken, axis=0)
    if ok is None or not np.array_equal(ok.mean(1), acc):
        raise RuntimeError("evaluate_one is no longer robust_accuracy_at (+ line_search_broken), closed over eps: "
                           "update today_per_sample")
    return ok


def rowspace_broken(model, u, y, eps_list, attacks, *, span: float) -> np.ndarray:
    """(K, N) bool: broken at eps (PLANES units, ``eps_list`` increasing) by the per-sample worst case over
    ``attacks(e)`` (a list of ``(name, params)`` for :func:`advrep.attacks.worst_case` at embedded radius ``e``),
    run on :class:`RowSpaceModel`; every adversarial point is lifted back, put inside the eps-ball (float rounding)
    and re-checked on ``model`` before it counts.  A sample broken at one eps is not attacked at larger ones (it is
    broken there too: its point lies in the larger ball)."""
    from advrep.attacks import worst_case

    rs = RowSpaceModel(model)
    w = rs.project(u)
    with torch.no_grad():
        correct = model(u).argmax(1) == y
    broken = np.zeros((len(eps_list), len(y)), dtype=bool)
    done = ~correct.numpy()
    for k, eps in enumerate(eps_list):
        rows = torch.from_numpy(~done).nonzero().squeeze(1)
        if eps > 0 and rows.numel():
            e = eps / span
            res = worst_case(rs, w[rows], y[rows], attacks(e), eps=e, norm="l2", clean_correct=correct[rows])
            x_adv = rs.lift(u[rows], w[rows], res.x_adv)
            delta = x_adv - u[rows]
            x_adv = u[rows] + delta * torch.clamp(e / delta.norm(dim=1, keepdim=True).clamp_min(1e-30), max=1.0)
            with torch.no_grad():
                wrong = model(x_adv).argmax(1) != y[rows]
            done[rows.numpy()[(res.success & wrong).numpy()]] = True
        broken[k] = done
    return broken


def pgd_attacks(steps: int, restarts: int, step_sizes):
    """L2 PGD from random starts, ``restarts`` restarts, one run per step size (fractions of eps)."""
    return lambda e: [("pgd", {"steps": steps, "alpha": f * e, "random_start": True, "restarts": restarts})
                      for f in step_sizes]


def directions(x_test, y_test, x_train, y_train, k: int) -> np.ndarray:
    """(N, k + 1, D) unit directions per test point: towards its nearest other-class test point (on PLANES: straight
    across to the other plane, along x_d) and towards its ``k`` nearest other-class training points."""
    xt, xr = np.asarray(x_test, np.float64), np.asarray(x_train, np.float64)
    out = []
    for i in range(len(xt)):
        others = [xt[y_test != y_test[i]], xr[y_train != y_test[i]]]
        dirs = []
        for pts, n in zip(others, (1, k)):
            d2 = ((pts - xt[i]) ** 2).sum(1)
            for j in np.argsort(d2, kind="stable")[:n]:
                dirs.append(pts[j] - xt[i])
        dirs = np.stack(dirs)
        out.append(dirs / np.linalg.norm(dirs, axis=1, keepdims=True))
    return np.stack(out)


def line_search_distance(model, x: torch.Tensor, y: torch.Tensor, dirs: torch.Tensor, t_grid,
                         batch: int = 500_000) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force search along rays: per sample, the smallest ``t`` of ``t_grid`` (positive, increasing) at which
    ``model(x + t * dirs[i, j])`` is misclassified for some direction ``j`` of ``dirs`` (N, M, D), and that ``j``;
    ``(0, -1)`` for samples misclassified at x, ``(inf, -1)`` where no grid point of any ray is.  Every grid point
    is one forward pass: no gradient involved."""
    t = torch.as_tensor(np.asarray(t_grid, np.float64))
    if t.ndim != 1 or (t <= 0).any() or (torch.diff(t) <= 0).any():
        raise ValueError("t_grid must be positive and increasing")
    n, m, _ = dirs.shape
    with torch.no_grad():
        wrong0 = (model(x).argmax(1) != y).numpy()
    dist, which = np.full(n, np.inf), np.full(n, -1)
    dist[wrong0] = 0.0
    per = max(1, batch // (m * len(t)))
    tt = t.to(x.dtype)
    for s in range(0, n, per):
        sl = slice(s, min(n, s + per))
        pts = x[sl, None, None, :] + tt[None, None, :, None] * dirs[sl, :, None, :]  # (b, M, T, D)
        with torch.no_grad():
            pred = model(pts.reshape(-1, x.shape[1])).argmax(1).reshape(pts.shape[:3])
        wrong = (pred != y[sl, None, None]).numpy()  # (b, M, T)
        hit = wrong.any(2)
        first = np.where(hit, np.argmax(wrong, axis=2), len(t))  # (b, M): first broken grid index per ray
        j = np.argmin(first, axis=1)
        i_first = first[np.arange(len(j)), j]
        found = (i_first < len(t)) & ~wrong0[sl]
        dist[sl] = np.where(found, t.numpy()[np.minimum(i_first, len(t) - 1)], dist[sl])
        which[sl] = np.where(found, j, -1)
    return dist, which


def from_distance(dist, eps_list) -> np.ndarray:
    """(K, N) broken: a sample whose adversarial distance is <= eps (1e-9 slack for the grid's floats)."""
    return np.asarray(dist)[None, :] <= np.asarray(eps_list)[:, None] + 1e-9


def closure(broken: np.ndarray) -> np.ndarray:
    """Broken at eps => broken at every larger eps (rows: increasing eps)."""
    return np.maximum.accumulate(np.asarray(broken, bool), axis=0)


def line_broken(model, x_test, y_test, x_train, y_train, eps_list, *, eps_max: float, points: int, k: int,
                span: float) -> tuple[np.ndarray, int]:
    """(K, N) broken by :func:`line_search_distance` along :func:`directions` (grid step eps_max / points, PLANES
    units), searched on :class:`RowSpaceModel` (rays ``w + t Q^T d / span``: the same model outputs as
    ``u + t d / span``) and every hit re-checked on ``model`` at ``u + t d / span``; also the number of hits that
    check refused (float rounding at the boundary; they do not count)."""
    from advrep.voronoi import planes

    rs = RowSpaceModel(model)
    u, y = planes.embed(x_test), torch.from_numpy(y_test)
    dirs = torch.from_numpy(directions(x_test, y_test, x_train, y_train, k) / span)  # float64, embedded units
    grid = eps_max * np.arange(1, points + 1) / points
    dist, which = line_search_distance(rs, rs.project(u), y, (dirs @ rs.q).float(), grid)
    hit = np.isfinite(dist) & (which >= 0)
    refused = 0
    if hit.any():
        i = np.nonzero(hit)[0]
        pts = (u[i].double() + torch.from_numpy(dist[i])[:, None] * dirs[i, which[i]]).float()
        with torch.no_grad():
            ok = (model(pts).argmax(1) != y[i]).numpy()
        dist[i[~ok]] = np.inf
        refused = int((~ok).sum())
    return from_distance(dist, eps_list), refused


def strong_eval(model, x_test, y_test, x_train, y_train, s, args) -> tuple[dict, dict]:
    """Per-sample broken (K, N) of every component, today's, and the worst case over all of them ('strong');
    and the seconds each took."""
    from advrep.voronoi import planes

    eps = list(s.eval_eps)
    u, y = planes.embed(x_test), torch.from_numpy(y_test)
    out, secs = {}, {}
    t = time.perf_counter()
    out["today"] = ~today_per_sample(model, x_test, y_test, s)
    secs["today"] = time.perf_counter() - t
    t = time.perf_counter()
    out["pgd"] = rowspace_broken(model, u, y, eps, pgd_attacks(args.pgd_steps, args.restarts, args.step_sizes),
                                 span=planes.SPAN)
    secs["pgd"] = time.perf_counter() - t
    t = time.perf_counter()
    out["line"], secs["line_refused"] = line_broken(model, x_test, y_test, x_train, y_train, eps,
                                                    eps_max=s.eval_eps_max, points=args.line_points,
                                                    k=args.k_nearest, span=planes.SPAN)
    secs["line"] = time.perf_counter() - t
    if args.boundary_steps > 0:
        t = time.perf_counter()
        out["boundary"] = rowspace_broken(model, u, y, eps, lambda e: [("boundary", {"steps": args.boundary_steps})],
                                          span=planes.SPAN)
        secs["boundary"] = time.perf_counter() - t
    out["strong"] = closure(np.logical_or.reduce([out[k] for k in list(out)]))
    return out, secs


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    ap.add_argument("--scale", default=None, help="config scale (default: the config's)")
    ap.add_argument("--retrainings", type=int, default=1, help="models per (method, codim); 1: ~16 min, 1 busy core")
    ap.add_argument("--codims", type=int, nargs="+", default=None, help="default: the config's")
    ap.add_argument("--seed", type=int, default=0, help="retraining r uses seed * 10000 + r")
    ap.add_argument("--pgd-steps", type=int, default=1000)
    ap.add_argument("--restarts", type=int, default=10)
    ap.add_argument("--step-sizes", type=float, nargs="+", default=[0.01, 0.05, 0.25], help="fractions of eps")
    ap.add_argument("--line-points", type=int, default=1000, help="grid points per ray in (0, eps_max]")
    ap.add_argument("--k-nearest", type=int, default=4, help="rays towards the k nearest other-class train points")
    ap.add_argument("--boundary-steps", type=int, default=1000, help="0: no Boundary attack")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/voronoi_eval_strength", help="folder for eval_strength.csv")
    args = ap.parse_args(argv)

    import faiss

    from advrep.data.synthetic import make_planes
    from advrep.evaluate import nauc
    from advrep.io import atomic_path
    from advrep.voronoi import planes

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    settings = figure3_settings(args.config, args.scale)
    s = planes._settings(settings)
    codims = args.codims or list(s.codims)
    rows = []
    t0 = time.perf_counter()
    for codim in codims:
        x_tr, y_tr, x_te, y_te = make_planes(codim)
        y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
        for method in planes.METHODS:
            for r in range(args.retrainings):
                seed = args.seed * 10000 + r
                t = time.perf_counter()
                with tempfile.TemporaryDirectory() as ck:
                    model = planes.train_one(method, x_tr, y_tr, s, seed, ck)
                t_train = time.perf_counter() - t
                broken, secs = strong_eval(model, x_te, y_te, x_tr, y_tr, s, args)
                acc = {k: 1.0 - b.mean(1) for k, b in broken.items()}
                row = dict(method=method, codim=codim, retraining=r, seed=seed,
                           nauc_today=nauc(s.eval_eps, acc["today"]), nauc_strong=nauc(s.eval_eps, acc["strong"]))
                row["drop"] = row["nauc_today"] - row["nauc_strong"]
                for k in broken:
                    if k not in ("today", "strong"):
                        row[f"nauc_{k}_alone"] = nauc(s.eval_eps, acc[k])
                for e, a_t, a_s in zip(s.eval_eps, acc["today"], acc["strong"]):
                    row[f"acc_today@{e:g}"], row[f"acc_strong@{e:g}"] = float(a_t), float(a_s)
                row["train_s"] = t_train
                row.update({f"{k}_s": v for k, v in secs.items()})
                rows.append(row)
                print(f"  {method:7s} codim {codim:3d} r{r}: today {row['nauc_today']:.4f} strong "
                      f"{row['nauc_strong']:.4f} ({', '.join(f'{k} {v:.0f}' for k, v in secs.items())}; "
                      f"total {time.perf_counter() - t0:.0f}s)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(out / "eval_strength.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    print(f"\nfigure3 settings: {settings}")
    print(f"strong: PGD {args.pgd_steps} steps x {args.restarts} restarts x step sizes {args.step_sizes} (x eps), "
          f"line search ({args.k_nearest + 1} rays, {args.line_points} points), boundary {args.boundary_steps} "
          f"steps; {args.retrainings} retraining(s)\n")
    print(f"{'method':8s} {'codim':>5s} {'NAUC today':>10s} {'NAUC strong':>11s} {'drop':>7s} {'<=0.01':>6s}   "
          "alone: pgd / line / boundary")
    for codim in codims:
        for method in planes.METHODS:
            sel = [r for r in rows if r["method"] == method and r["codim"] == codim]
            m = {k: float(np.mean([r[k] for r in sel])) for k in sel[0] if k.startswith("nauc") or k == "drop"}
            alone = " / ".join(f"{m.get(f'nauc_{k}_alone', math.nan):.4f}" for k in ("pgd", "line", "boundary"))
            print(f"{method:8s} {codim:5d} {m['nauc_today']:10.4f} {m['nauc_strong']:11.4f} {m['drop']:7.4f} "
                  f"{str(m['drop'] <= 0.01):>6s}   {alone}")
    ceiling = nauc(s.eval_eps, [1.0] * (len(s.eval_eps) - 1) + [0.5])
    print(f"\nhighest NAUC any model can reach on this eps grid ({len(s.eval_eps)} points; at eps_max = 1 the "
          f"midpoint between a test point and its twin on the other plane breaks one of the two): {ceiling:.4f}")
    print(f"\nCSV: {out / 'eval_strength.csv'}  ({time.perf_counter() - t0:.0f} s)")
    return rows


if __name__ == "__main__":
    main()
