"""Benchmark: the exact random-subspace adversary against Algorithm 1 at CIFAR-10 size (n3 = 1, or any n3).

Workload: 50,000 training and 10,000 test points, 512-d random features in 10 classes (default ``--kind mixture``:
class centres ~ N(0, 0.12^2 I), points = centre + N(0, 0.08^2 I) -- nearest-neighbour distances ~2.3, the scale of
the paper's tau = 2, 3; ``--kind lowrank``: each class a 16-dimensional Gaussian (std 0.6) plus N(0, 0.03^2 I) noise).
Real contrastive features are not available on the development machines.

    python benchmarks/abstain_adversary.py [--n 50000] [--m 10000] [--threads 2] [--naive 3] [--cvxpy 3] [--table1]

Times :func:`advrep.abstain.adversary.tau_star` on every test point (memory is bounded by ``--chunk`` x N doubles
per array), then the naive baseline -- one program per wrong-class candidate with every training point as a Voronoi
constraint (closed-form interval, vectorised over constraints; :func:`tau_star_naive`) -- on the first ``--naive``
test points, checks both give the same tau*, and reports the per-test-point ratio.  ``--cvxpy`` times that many
single candidate programs in cvxpy/CLARABEL (N constraints each) and extrapolates to one test point.

    python benchmarks/abstain_adversary.py --n3 2 [--m 10000] [--peer 3]

``--n3 >= 2`` times the default solver (``solver="cutting_plane"``: bound-ordered candidates, constraint generation)
on the first ``--m`` test points, then the previous exact solver (``solver="active_set"``: the h-ordered level-set
scan, one projection per visited candidate) on the first ``--peer`` of them with the same features and subspaces,
checks both give the same tau* and prints the per-point ratio, the projection to 10,000 test points and the peak
RSS.  A run on a subset (``--m`` < 10,000) says so.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def features(kind: str, n: int, m: int, d: int = 512, classes: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * 0.12
    basis = rng.normal(size=(classes, 16, d)) / np.sqrt(d) * 0.6  # ~orthogonal rows of norm 0.6

    def draw(k):
        y = rng.integers(0, classes, k)
        if kind == "mixture":
            return centres[y] + 0.08 * rng.normal(size=(k, d)), y
        x = centres[y] + 0.03 * rng.normal(size=(k, d))
        for c in range(classes):
            sel = np.flatnonzero(y == c)
            x[sel] += rng.normal(size=(len(sel), 16)) @ basis[c]
        return x, y

    X, y = draw(n)
    T, ty = draw(m)
    return X, y, T, ty


def print_outcome(res) -> None:
    """The adversary's outcome on the benchmark's points: d_nn, tau* quantiles, and the rates at the paper's taus."""
    fin = np.isfinite(res.tau_star)
    if fin.any():
        print(f"  d_nn median {np.median(res.d_nn):.3f}; tau* quantiles (10/50/90%) "
              f"{np.quantile(res.tau_star[fin], [0.1, 0.5, 0.9]).round(3)}; adversary never wins on {(~fin).sum()}")
    for tau in (2.0, 3.0):
        r = res.rates(tau)
        print(f"  tau={tau}: E_nat {100 * r['E_nat']:.1f}%  E_adv {100 * r['E_adv']:.1f}%  "
              f"D_nat {100 * r['D_nat']:.1f}%")


def subspace_benchmark(args, X, y, T, ty) -> None:
    """n3 >= 2: the cutting-plane solver on ``--m`` points against the previous exact solver on ``--peer`` points."""
    from advrep.abstain.adversary import tau_star
    from advrep.abstain.subspace import random_subspaces

    n3, full = args.n3, 10_000
    B = random_subspaces(len(T), T.shape[1], n3, args.seed + 1)
    print(f"workload: {args.kind} features, {len(X)} train x {len(T)} test x {X.shape[1]}-d, 10 classes, n3={n3}, "
          f"{args.threads} threads", flush=True)
    t = time.perf_counter()
    res = tau_star(X, y, T, ty, n3=n3, subspaces=B, chunk=args.chunk, threads=args.threads,
                   progress=len(T) >= 1000)
    t_fast = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    st = res.stats
    per = t_fast / len(T)
    scope = f"all {len(T)}" if len(T) >= full else f"SUBSET of {len(T)}"
    print(f"exact tau*, cutting plane ({scope} test points): {t_fast:8.1f} s  ({1e3 * per:.1f} ms / point; "
          f"{st['visited'] / len(T):.1f} candidates and {st['qp_solves'] / len(T):.1f} small projections per point); "
          f"projected {per * full / 60:.1f} min for {full} test points; peak RSS {rss:.0f} MiB")
    print_outcome(res)
    if args.peer:
        k = min(args.peer, len(T))
        t = time.perf_counter()
        old = tau_star(X, y, T[:k], ty[:k], n3=n3, subspaces=B[:k], solver="active_set", threads=args.threads)
        t_old = (time.perf_counter() - t) / k
        agree = np.allclose(old.tau_star, res.tau_star[:k], rtol=1e-9, atol=0)
        print(f"previous exact solver (active_set level-set scan) on {k} points: {t_old:8.2f} s / point -> "
              f"{t_old * full / 3600:.1f} h for {full}; ratio previous/cutting-plane per point {t_old / per:.0f}x; "
              f"same tau*: {agree}")
        assert agree, (old.tau_star, res.tau_star[:k])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--m", type=int, default=10000)
    ap.add_argument("--kind", choices=("mixture", "lowrank"), default="mixture")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--k0", type=int, default=128)
    ap.add_argument("--naive", type=int, default=3, help="test points for the naive baseline")
    ap.add_argument("--cvxpy", type=int, default=3, help="single cvxpy candidate programs to time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n3", type=int, default=1, help="adversary's subspace dimension")
    ap.add_argument("--peer", type=int, default=3, help="n3 >= 2: test points for the previous exact solver")
    ap.add_argument("--table1", action="store_true",
                    help="also time one whole Table 1 feature block (linear fit, preprocessing, 5 sigma passes)")
    args = ap.parse_args()

    import torch

    from advrep.abstain.adversary import tau_star, tau_star_naive
    from advrep.abstain.qp import candidate_value_cvxpy
    from advrep.abstain.subspace import random_subspaces

    torch.set_num_threads(args.threads)
    X, y, T, ty = features(args.kind, args.n, args.m, seed=args.seed)
    if args.n3 > 1:
        return subspace_benchmark(args, X, y, T, ty)
    B = random_subspaces(len(T), T.shape[1], 1, args.seed + 1)
    print(f"workload: {args.kind} features, {len(X)} train x {len(T)} test x {X.shape[1]}-d, 10 classes, n3=1, "
          f"{args.threads} threads", flush=True)

    t = time.perf_counter()
    res = tau_star(X, y, T, ty, subspaces=B, k0=args.k0, chunk=args.chunk)
    t_fast = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    st = res.stats
    print(f"exact tau* (all {len(T)} test points): {t_fast:8.1f} s  ({1e3 * t_fast / len(T):.2f} ms / point; "
          f"level-1 certified {st['certified_level1']}, lifted-hull rows {st['hull_rows']}); peak RSS {rss:.0f} MiB")
    print_outcome(res)

    if args.naive:
        k = args.naive
        t = time.perf_counter()
        naive = tau_star_naive(X, y, T[:k], ty[:k], subspaces=B[:k])
        t_naive = (time.perf_counter() - t) / k
        agree = np.allclose(naive, res.tau_star[:k], rtol=1e-12)
        per_fast = t_fast / len(T)
        print(f"naive one-program-per-candidate (closed form, {len(X)} constraints each): {t_naive:8.2f} s / point "
              f"on {k} points -> {t_naive * len(T) / 3600:.1f} h for all {len(T)}; ratio naive/exact per point "
              f"{t_naive / per_fast:.0f}x; same tau*: {agree}")
        assert agree, (naive, res.tau_star[:k])
    if args.cvxpy:
        Xc = X - X.mean(0)
        x = T[0] - X.mean(0)
        wrong = np.flatnonzero(y != ty[0])
        t = time.perf_counter()
        for i in wrong[:args.cvxpy]:
            candidate_value_cvxpy(x, B[0], Xc[i], np.delete(Xc, i, axis=0))
        per = (time.perf_counter() - t) / args.cvxpy
        print(f"cvxpy/CLARABEL, one candidate program with {len(X) - 1} constraints: {per:.2f} s -> "
              f"{per * len(wrong) / 3600:.1f} h per test point ({len(wrong)} candidates)")


    if args.table1:
        from advrep.abstain.table1 import evaluate_features, table1_rows

        t = time.perf_counter()
        block = evaluate_features(X, y, T, ty, seed=args.seed + 1, k0=args.k0)
        t_block = time.perf_counter() - t
        print(f"Table 1 block (linear fit + faiss preprocessing + exact passes at sigma in "
              f"{sorted(block['attacks'])}): {t_block:.1f} s; kept {block['kept']}")
        for row in table1_rows({"Self-supervised": block}):
            print(f"  {row['row']:<48} {row['column']:<6} {row['value']:6.1f}")


if __name__ == "__main__":
    main()
