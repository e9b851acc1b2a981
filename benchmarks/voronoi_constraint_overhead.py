"""Benchmark: what the Voronoi constraints add to an adversarial-training step (issue target: at most +10 %).

Same model, same batch, same number of inner steps, measured in one run: a PGD-AT step (``pgd_at``, L-inf) against a
Voronoi-AT step (``voronoi_at``: per-batch exact search for the m = 10 nearest samples of each other class among the
training set, then constrained steps with a cell check before each step).  Workload: MNIST-sized training set
(60,000 images of 28x28x1; real Fashion-MNIST from a mirror when present, else scikit-learn digits resized and
repeated with noise), Madry's MNIST CNN at tiny width, batch 128, 40 inner steps.

    python benchmarks/voronoi_constraint_overhead.py [--mirror /usr/share/datasets] [--steps 40] [--repeats 5]
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
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()

    from advrep.models import create_model
    from advrep.train.context import EpochContext  # noqa: F401  (objectives take a context)
    from advrep.train.objectives import PGDAT
    from advrep.voronoi.constraints import NeighbourIndex
    from advrep.voronoi.training import VoronoiAT

    x, y, what = mnist_sized(60000, args.mirror)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    yt = torch.from_numpy(y).long()
    model = create_model("madry_mnist_cnn", in_shape=(1, 28, 28), num_classes=10, width="tiny", seed=0)
    t = time.perf_counter()
    index = NeighbourIndex(xt.numpy(), y)
    t_index = time.perf_counter() - t
    eps = 0.3
    pgd = PGDAT(eps=eps, alpha=0.01, steps=args.steps, norm="linf")
    vor2 = VoronoiAT(index, m=10, steps=args.steps, alpha=0.01, step_norm="linf", p=2.0, box=(0.0, 1.0))
    vorinf = VoronoiAT(index, m=10, steps=args.steps, alpha=0.01, step_norm="linf", p=float("inf"), box=(0.0, 1.0))
    rng = np.random.default_rng(0)

    def time_step(objective) -> float:
        times = []
        for r in range(args.repeats):
            idx = torch.from_numpy(rng.choice(len(xt), size=args.batch, replace=False))
            xb, yb = xt[idx], yt[idx]
            model.zero_grad()
            t0 = time.perf_counter()
            loss, _ = objective(model, xb, yb, None)
            loss.backward()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    time_step(pgd)  # warm-up
    t_pgd, t_vor, t_vorinf = time_step(pgd), time_step(vor2), time_step(vorinf)
    print(f"workload: {what}, {len(xt)} training images, batch {args.batch}, {args.steps} inner steps, "
          f"{torch.get_num_threads()} threads; neighbour index built once in {t_index:.2f} s")
    print(f"PGD-AT step     : {t_pgd * 1000:8.1f} ms")
    print(f"Voronoi-AT step, L2 cells   : {t_vor * 1000:8.1f} ms   ratio {t_vor / t_pgd:5.2f}  (target <= 1.10)")
    print(f"Voronoi-AT step, L-inf cells: {t_vorinf * 1000:8.1f} ms   ratio {t_vorinf / t_pgd:5.2f}")


if __name__ == "__main__":
    main()
