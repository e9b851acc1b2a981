"""Benchmark: lipreg Table 4's exact search (faiss + exact re-check) vs a torch.cdist peer, same data, same run.

CIFAR-10 itself is not reachable on the development machines, so the default workload has CIFAR-10's size and
dimension (50,000 training images of 32x32x3, 10 classes) built from real images: Fashion-MNIST padded to 32x32 and
replicated to three channels (`--mirror` folder holding Debian's or torchvision's Fashion-MNIST files).  Without a
mirror it falls back to scikit-learn's digits, resized and repeated with small noise to the same size.

    python benchmarks/lipreg_table4.py [--mirror /usr/share/datasets] [--n 50000] [--threads 2]

Prints both times and the ratio faiss/torch (< 1: faiss path faster), and checks both found the same distance.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _workloads import mnist_sized


def cifar_sized(n: int, mirror: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """CIFAR-10's size and dimension: Fashion-MNIST padded to 32x32 and replicated to 3 channels (or digits32)."""
    x, y, what = mnist_sized(n, mirror, standin="digits32")
    if x.shape[-1] == 1:
        x = np.pad(x[..., 0], ((0, 0), (2, 2), (2, 2)))[..., None].repeat(3, axis=-1)
        what += " padded to 32x32x3"
    return np.ascontiguousarray(x), y, what


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mirror", default="/usr/share/datasets")
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import faiss
    import torch

    from advrep.lipreg.dataset_lipschitz import min_cross_class_distance, min_cross_class_distance_torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    x, y, what = cifar_sized(args.n, args.mirror)
    print(f"workload: {what}: {x.shape[0]} images of {x.shape[1:]} ({x[0].size}-d), {len(np.unique(y))} classes, "
          f"{args.threads} threads")
    t = time.perf_counter()
    ours = min_cross_class_distance(x, y)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    peer = min_cross_class_distance_torch(x, y)
    t_peer = time.perf_counter() - t
    print(f"faiss + exact re-check : {t_ours:8.1f} s  distance {ours.distance:.9f} "
          f"({ours.n_candidates} candidates re-checked)")
    print(f"torch.cdist (float32)  : {t_peer:8.1f} s  distance {peer:.9f}")
    print(f"ratio faiss/torch      : {t_ours / t_peer:8.2f}")
    assert abs(ours.distance - peer) < 1e-4 * max(1.0, ours.distance), "the two searches disagree"


if __name__ == "__main__":
    main()
