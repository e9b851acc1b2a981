"""lipreg Table 4: the Lipschitz constant of a training set.

Paper (001, Section 6 and Table 4): the Lipschitz constant of a dataset in the (2, inf) norm is the reciprocal of the
minimum 2-norm distance between two training images of different classes, pixels in [0, 1]; for CIFAR-100 duplicated
images are excluded.

Exact search.  faiss (``IndexFlatL2``, float32, one index per class, queried by every image of a later class so each
unordered pair of classes is searched once) gives each query's nearest other-class distance up to a rounding error
``delta`` that we bound rigorously (:func:`float32_error_bound`).  Every query whose approximate distance is within
``2 * delta`` of the approximate minimum is then recomputed exactly: images are uint8, so squared distances in integer
pixel units are integers below 2**53 and float64 arithmetic on them is exact.  The true minimum pair is always among
those candidates, so the result is exact, not approximate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

UNIT_ROUNDOFF_F32 = 2.0 ** -24


@dataclass(frozen=True)
class MinDistance:
    distance: float  # in [0,1]-pixel units
    pair: tuple[int, int]  # indices into the (deduplicated) training set, different classes
    n_candidates: int  # queries re-checked exactly
    delta: float  # bound on the float32 error of one squared distance ([0,1] units)
    seconds: float

    @property
    def lipschitz(self) -> float:
        return 1.0 / self.distance if self.distance > 0 else float("inf")


def unique_image_mask(x: np.ndarray) -> np.ndarray:
    """True for images whose bytes occur exactly once in ``x`` (every copy of a duplicated image is False)."""
    flat = np.ascontiguousarray(x.reshape(len(x), -1))
    rows = flat.view(np.dtype((np.void, flat.shape[1])))[:, 0]
    _, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
    return counts[inverse.ravel()] == 1


def float32_error_bound(dim: int, max_sq_norm: float) -> float:
    """Bound on |fl32(||a||^2 + ||b||^2 - 2 a.b) - ||a - b||^2| for ||a||^2, ||b||^2 <= max_sq_norm.

    Standard dot-product error analysis (Higham, Accuracy and Stability, eq. 3.5): each of the three length-``dim``
    sums has error <= gamma_{dim+2} times its absolute sum, and |a.b| <= max_sq_norm.
    """
    n = dim + 2
    gamma = n * UNIT_ROUNDOFF_F32 / (1.0 - n * UNIT_ROUNDOFF_F32)
    return gamma * 4.0 * max_sq_norm


def _exact_sq_dist_int(xi: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Exact squared distances (integer pixel units) from one uint8 query to many uint8 images, in float64."""
    a = xi.astype(np.float64)
    b = q.astype(np.float64)
    d = (a * a).sum(1) + (b * b).sum() - 2.0 * (a @ b)
    return d  # integers < 2**53: exact in float64


def min_cross_class_distance(x: np.ndarray, y: np.ndarray, *, threads: int | None = None) -> MinDistance:
    """Exact minimum L2 distance between two images of different classes (pixels scaled to [0, 1]).

    ``x``: uint8 images (N, ...); ``y``: integer labels (N,).
    """
    import faiss

    if x.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {x.dtype}")
    if threads:
        faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    n = len(x)
    xi = x.reshape(n, -1)
    dim = xi.shape[1]
    # Centre (distances are translation invariant) to shrink norms and hence the rounding error bound.
    xf = xi.astype(np.float32) / 255.0
    xf -= xf.mean(0, keepdims=True)
    xf = np.ascontiguousarray(xf)
    max_sq = float((xf.astype(np.float64) ** 2).sum(1).max())
    delta = float32_error_bound(dim, max_sq)
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError("need at least two classes")
    idx_by_class = {c: np.flatnonzero(y == c) for c in classes}
    approx, queries, targets_cls, nn = [], [], [], []
    for k, c in enumerate(classes[:-1]):
        base = idx_by_class[c]
        q_idx = np.flatnonzero(y > c)
        index = faiss.IndexFlatL2(dim)
        index.add(xf[base])
        dist, ind = index.search(xf[q_idx], 1)
        approx.append(dist[:, 0])
        queries.append(q_idx)
        targets_cls.append(np.full(len(q_idx), k))
        nn.append(base[ind[:, 0]])
    approx = np.concatenate(approx)
    queries = np.concatenate(queries)
    targets_cls = np.concatenate(targets_cls)
    threshold = float(approx.min()) + 2.0 * delta
    cand = np.flatnonzero(approx <= threshold)
    best = (math.inf, (-1, -1))
    for j in cand:
        q = queries[j]
        base = idx_by_class[classes[targets_cls[j]]]
        d = _exact_sq_dist_int(xi[base], xi[q])
        m = int(np.argmin(d))
        if d[m] < best[0]:
            best = (float(d[m]), (int(base[m]), int(q)))
    distance = math.sqrt(best[0]) / 255.0
    return MinDistance(distance, best[1], int(len(cand)), delta, time.perf_counter() - t0)


def min_cross_class_distance_bruteforce(x: np.ndarray, y: np.ndarray) -> float:
    """Reference: every pair, exact integer arithmetic in float64 (small inputs only)."""
    xi = x.reshape(len(x), -1).astype(np.float64)
    sq = (xi * xi).sum(1)
    d = sq[:, None] + sq[None, :] - 2.0 * xi @ xi.T
    d[y[:, None] == y[None, :]] = np.inf
    return math.sqrt(float(d.min())) / 255.0


def min_cross_class_distance_torch(x: np.ndarray, y: np.ndarray) -> float:
    """Peer for the benchmark: the same class-pair blocking with ``torch.cdist`` in float32 (not exact)."""
    import torch

    xf = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32) / 255.0)
    yt = torch.from_numpy(np.asarray(y))
    classes = torch.unique(yt)
    best = math.inf
    for c in classes[:-1]:
        base, q = xf[yt == c], xf[yt > c]
        for start in range(0, len(q), 4096):
            best = min(best, float(torch.cdist(q[start:start + 4096], base).min()))
    return best
