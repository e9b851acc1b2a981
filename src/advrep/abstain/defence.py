"""Algorithm 1, ROBUSTCLASSIFIER(tau, sigma) (paper L53-62), and the natural-data metrics (L85, L109).

* Preprocessing (line 2): delete training point ``i`` if its nearest differently-labelled training point is closer
  than ``sigma`` (strict ``<``).  All distances are measured in the ORIGINAL training set (one pass, as line 2 reads
  and as the official ``filter_outliers.py`` L46/L63-70 does with precomputed ``nearests``); consequently no two
  surviving points of different labels are closer than ``sigma``.
* Classification (lines 4-6): the label of the nearest (kept) training point if that distance is ``< tau``, otherwise
  "don't know" (returned as ``-1``).
* ``E_nat = mean 1{f(F(x)) != y and f does not abstain}`` and ``D_nat = mean 1{f abstains}`` over ALL test points
  (L109, L85; the official ``dontknow.py`` L45-49 uses the same denominators).

Exact nearest-neighbour search.  faiss ``IndexFlatL2`` works in float32; its squared distances are within ``delta``
(:func:`float32_sq_dist_error`) of the true ones.  We ask faiss for the ``k`` smallest, recompute those in float64
from coordinate differences, and whenever faiss' ``k``-th distance is within ``2 delta`` of its first (so the true
nearest could lie beyond the ``k`` returned) we fall back to a float64 scan of that query against every point.  The
true nearest point always lies among the points whose float32 distance is within ``2 delta`` of the float32 minimum,
so the result is the exact float64 nearest distance, not a float32 approximation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNIT_ROUNDOFF_F32 = 2.0 ** -24
ABSTAIN = -1


def float32_sq_dist_error(dim: int, max_sq_norm: float) -> float:
    """Bound on ``|fl32(||a||^2 + ||b||^2 - 2 a.b) - ||a - b||^2|`` when ``||a||^2, ||b||^2 <= max_sq_norm``.

    Higham, *Accuracy and Stability of Numerical Algorithms*, eq. (3.5): each length-``dim`` float32 sum carries a
    relative error ``<= gamma_{dim+2}`` of its absolute sum, and ``|a.b| <= max_sq_norm``.
    """
    n = dim + 2
    gamma = n * UNIT_ROUNDOFF_F32 / (1.0 - n * UNIT_ROUNDOFF_F32)
    return gamma * 4.0 * max_sq_norm


@dataclass(frozen=True)
class Neighbours:
    distance: np.ndarray  # (M,) exact (float64) distance to the nearest base point
    index: np.ndarray  # (M,) index of that point in the base array (smallest index among exact ties)
    n_fallback: int  # queries that needed the full float64 scan


def _as_f64(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float64))


def exact_nearest(queries, base, *, k: int = 16, threads: int | None = None) -> Neighbours:
    """Exact nearest neighbour of every query among ``base`` (Euclidean), faiss shortlist + float64 re-check."""
    import faiss

    q = _as_f64(queries)
    b = _as_f64(base)
    if len(b) == 0:
        return Neighbours(np.full(len(q), np.inf), np.full(len(q), -1, dtype=np.int64), 0)
    if threads:
        faiss.omp_set_num_threads(threads)
    centre = b.mean(0)  # translation invariance: centring shrinks norms and hence the float32 error bound
    qc, bc = q - centre, b - centre
    max_sq = float(max((bc * bc).sum(1).max(), (qc * qc).sum(1).max() if len(qc) else 0.0))
    delta = float32_sq_dist_error(b.shape[1], max_sq)
    k = min(k, len(b))
    index = faiss.IndexFlatL2(b.shape[1])
    index.add(np.ascontiguousarray(bc, dtype=np.float32))
    out_d = np.empty(len(q))
    out_i = np.empty(len(q), dtype=np.int64)
    n_fallback = 0
    step = 4096
    for s in range(0, len(q), step):
        d2, ind = index.search(np.ascontiguousarray(qc[s:s + step], dtype=np.float32), k)
        d2 = d2.astype(np.float64)
        for r in range(len(d2)):
            row = s + r
            complete = k == len(b) or d2[r, -1] > d2[r, 0] + 2.0 * delta
            cand = ind[r] if complete else None
            if cand is None or (cand < 0).any():
                cand = np.arange(len(b))
                n_fallback += 1
            diff = bc[cand] - qc[row]
            e2 = np.einsum("ij,ij->i", diff, diff)
            m = e2.min()
            j = cand[e2 == m].min()
            out_d[row] = np.sqrt(m)
            out_i[row] = j
    return Neighbours(out_d, out_i, n_fallback)


def nearest_other_label_distance(train_feats, labels, *, k: int = 16) -> np.ndarray:
    """For every training point, the exact distance to its nearest differently-labelled training point (inf if none).

    One faiss index per class ``c`` holding the points NOT of class ``c``, queried by the points of class ``c``.
    """
    x = _as_f64(train_feats)
    y = np.asarray(labels)
    out = np.full(len(x), np.inf)
    for c in np.unique(y):
        own, other = np.flatnonzero(y == c), np.flatnonzero(y != c)
        if len(other) == 0:
            continue
        nb = exact_nearest(x[own], x[other], k=k)
        out[own] = nb.distance
    return out


def preprocess(train_feats, labels, sigma: float, *, nearest_other: np.ndarray | None = None) -> np.ndarray:
    """Algorithm 1 line 2: boolean mask of the training points KEPT (nearest other-label distance ``>= sigma``).

    ``nearest_other`` (from :func:`nearest_other_label_distance`) may be passed to share one search across sigmas.
    ``sigma = 0`` keeps everything.
    """
    if nearest_other is None:
        if sigma <= 0:
            return np.ones(len(train_feats), dtype=bool)
        nearest_other = nearest_other_label_distance(train_feats, labels)
    return ~(np.asarray(nearest_other) < sigma)


def classify(test_feats, train_feats, labels, tau: float) -> np.ndarray:
    """Algorithm 1 lines 4-6: nearest training point's label if its distance is ``< tau``, else ``-1`` (abstain)."""
    nb = exact_nearest(test_feats, train_feats)
    y = np.asarray(labels)
    pred = y[np.maximum(nb.index, 0)].astype(np.int64)
    pred[~(nb.distance < tau)] = ABSTAIN
    return pred


def natural_rates(d_nn: np.ndarray, nn_label: np.ndarray, test_labels, tau: float) -> dict[str, float]:
    """``E_nat`` and ``D_nat`` (fractions) of Algorithm 1 at threshold ``tau`` from nearest distances and labels.

    ``E_nat = mean 1{d_nn < tau and nn_label != y}`` (L109), ``D_nat = mean 1{d_nn >= tau}`` (L85).
    """
    d_nn = np.asarray(d_nn)
    answered = d_nn < tau
    wrong = np.asarray(nn_label) != np.asarray(test_labels)
    return {"E_nat": float(np.mean(answered & wrong)), "D_nat": float(np.mean(~answered))}
