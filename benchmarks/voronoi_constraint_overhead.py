"""Benchmark: what the Voronoi constraints add to an adversarial-training step (issue target: at most +10 %).

Same model, same batches, same number of inner steps, measured in one run, interleaved batch by batch: a PGD-AT step
(``pgd_at``, L-inf) against Voronoi-AT steps (``voronoi_at``, m = 10 nearest samples of each other class) whose
neighbours are looked up in the table computed once per training set (the batch carries its training-set indices,
``ctx.index``), with L2 and with L-inf cells; for reference, the per-batch exact search that augmented batches
need, and the same Voronoi-AT step with an empty constraint set (the attack loop's own cost, so that "Voronoi-AT /
unconstrained" is what the constraints themselves add).  The one-off precompute (neighbour table, and the distances
to the neighbours for each norm) is timed separately (or read from ``--cache-dir``).  Workload: MNIST-sized
training set (60,000 images of 28x28x1; real Fashion-MNIST from a mirror when present, else scikit-learn digits
resized and repeated with noise), Madry's MNIST CNN at tiny width, batch 128, 40 inner steps.  A step is the
objective's forward (inner attack included) and backward.

    python benchmarks/voronoi_constraint_overhead.py [--mirror /usr/share/datasets] [--steps 40] [--repeats 7]
        [--threads N] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _workloads import mnist_sized
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mirror", default="/usr/share/datasets")
    ap.add_argument("--n", type=int, default=60000, help="training-set size")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=7, help="batches timed per objective (median reported)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch and faiss threads (default: torch's)")
    ap.add_argument("--cache-dir", default=None, help="neighbour-table cache (default: none, always computed)")
    args = ap.parse_args()

    import faiss

    from advrep.models import create_model
    from advrep.train.context import EpochContext
    from advrep.train.objectives import PGDAT
    import torch.nn.functional as F

    from advrep.voronoi.constraints import NeighbourCells, NeighbourIndex, voronoi_attack
    from advrep.voronoi.training import VoronoiAT

    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    x, y, what = mnist_sized(args.n, args.mirror)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    yt = torch.from_numpy(y).long()
    model = create_model("madry_mnist_cnn", in_shape=(1, 28, 28), num_classes=10, width="tiny", seed=0)
    t = time.perf_counter()
    index = NeighbourIndex(xt.numpy(), y)
    t_index = time.perf_counter() - t
    common = dict(m=10, steps=args.steps, alpha=0.01, step_norm="linf", box=(0.0, 1.0), cache_dir=args.cache_dir)
    objectives = {
        "pgd": PGDAT(eps=0.3, alpha=0.01, steps=args.steps, norm="linf"),
        "vor_l2": VoronoiAT(index, p=2.0, **common),
        "vor_linf": VoronoiAT(index, p=float("inf"), **common),
        "vor_l2_query": VoronoiAT(index, p=2.0, **common),
    }

    def unconstrained(model, xb, yb, ctx):  # Voronoi-AT with no constraining samples (K = 0)
        none = torch.empty((len(xb), 0), dtype=torch.long)
        cells = NeighbourCells(index.points, none, xb, 2.0, distances=torch.empty((len(xb), 0)))
        x_adv = voronoi_attack(model, xb, yb, cells, steps=args.steps, alpha=0.01, step_norm="linf", box=(0.0, 1.0))
        model.train()
        logits = model(x_adv)
        return F.cross_entropy(logits, yb), logits

    objectives["unconstrained"] = unconstrained
    cached = args.cache_dir is not None and index.cache_file(args.cache_dir, "neighbours-m10").exists()
    t = time.perf_counter()
    index.all_neighbours(10, args.cache_dir)
    t_table = time.perf_counter() - t
    t_dist = {}
    for p in (2.0, float("inf")):
        t = time.perf_counter()
        index.neighbour_distances(10, p, args.cache_dir)
        t_dist[p] = time.perf_counter() - t

    rng = np.random.default_rng(0)

    def step(name, objective, rows) -> float:
        ctx = EpochContext()
        ctx.index = None if name in ("pgd", "vor_l2_query", "unconstrained") else rows
        model.zero_grad()
        t0 = time.perf_counter()
        loss, _ = objective(model, xt[rows], yt[rows], ctx)
        loss.backward()
        return time.perf_counter() - t0

    warm = torch.from_numpy(rng.choice(len(xt), size=args.batch, replace=False))
    for name, obj in objectives.items():
        step(name, obj, warm)
    times = {name: [] for name in objectives}
    for r in range(args.repeats):
        rows = torch.from_numpy(rng.choice(len(xt), size=args.batch, replace=False))
        names = list(objectives) if r % 2 == 0 else list(objectives)[::-1]  # interleaved, alternating order
        for name in names:
            times[name].append(step(name, objectives[name], rows))
    med = {k: float(np.median(v)) for k, v in times.items()}
    ratio = {k: float(np.median(np.array(times[k]) / np.array(times["pgd"]))) for k in times}
    own = {k: float(np.median(np.array(times[k]) / np.array(times["unconstrained"]))) for k in times}

    print(f"workload: {what}, {len(xt)} training images, batch {args.batch}, {args.steps} inner steps, "
          f"{torch.get_num_threads()} torch threads, {args.repeats} batches per objective (median)")
    print(f"one-off: faiss index {t_index:.2f} s; neighbour table (m = 10, exact) {t_table:.1f} s; distances to the "
          f"neighbours: L2 {t_dist[2.0]:.1f} s, L-inf {t_dist[float('inf')]:.1f} s"
          + (f" (read from the cache in {args.cache_dir})" if cached else ""))
    print(f"{'step':44s} {'median':>10s}   {'/ PGD-AT':>8s}   {'/ unconstrained':>15s}")
    for name, label in [("pgd", "PGD-AT"), ("unconstrained", "Voronoi-AT loop, no constraints"),
                        ("vor_l2", "Voronoi-AT, L2 cells, cached neighbours"),
                        ("vor_linf", "Voronoi-AT, L-inf cells, cached neighbours"),
                        ("vor_l2_query", "Voronoi-AT, L2 cells, per-batch search")]:
        print(f"{label:44s} {med[name] * 1000:7.1f} ms   {ratio[name]:8.2f}   {own[name]:15.2f}")
    print("ratios: median over batches of (step / peer step on the same batch); issue target: / PGD-AT <= 1.10")


if __name__ == "__main__":
    main()
