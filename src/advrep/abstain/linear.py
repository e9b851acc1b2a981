"""The linear protocol (paper Table 1, "Linear Protocol"; L111-113) under the same random-subspace adversary.

A linear classifier ``f(e) = argmax_c (W e + b)_c`` never abstains.  The adversary wins on ``(x, y, S)`` iff some
``e = x + B t`` is labelled ``c != y``, ties in the argmax broken against the defender.  That holds iff there are
``t`` and ``c != y`` with ``s_c(t) >= s_y(t)``:  if the argmax at ``t`` is some ``c' != y`` take ``c = c'``; if it is
``y`` then ``s_c = s_y`` is a tie, broken against the defender.  ``s_c(t) - s_y(t) = alpha_c + beta_c . t`` with
``alpha_c = (w_c - w_y).x + b_c - b_y`` and ``beta_c = B^T (w_c - w_y)``, so

    adversary wins  <=>  exists c != y :  beta_c != 0  or  alpha_c >= 0.                           (closed form)

For ``n3 = 1`` this is the statement about the two ends of the line: as ``t -> +inf`` (``-inf``) the winning class
is the argmax (argmin) of ``W b``, which can be ``y`` at both ends only if ``(W b)_c = (W b)_y`` for every ``c``.
So for generic subspaces the linear protocol's robust error is 100% (L113: "sufficiently large perturbations will
ensure the adversary can always succeed").  ``beta_c`` is treated as zero when ``|beta_c| <= tol * |w_c - w_y|``
(a crossing at distance ``|alpha|/|beta| > 1/tol`` times the weight scale is a rounding artefact).
:func:`linear_adversary_wins_lp` decides the same question with one feasibility LP per wrong class
(``exists t: s_c(t) >= s_k(t) for all k``) and is the test reference.
"""

from __future__ import annotations

import numpy as np


def fit_linear(train_feats, labels, *, n_classes: int | None = None, l2: float = 1e-4, max_iter: int = 500,
               tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on frozen features (the "linear protocol" of contrastive learning):
    mean cross-entropy + ``l2 * ||W||^2`` on standardised features, full-batch L-BFGS (scipy), float64,
    deterministic.  Returns ``(W (C, d), b (C,))`` acting on the raw features; classes are ``0..C-1``."""
    from scipy.optimize import minimize
    from scipy.special import log_softmax

    x = np.asarray(train_feats, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    C = int(n_classes if n_classes is not None else y.max() + 1)
    n, d = x.shape
    mu = x.mean(0)
    sd = np.maximum(x.std(0), 1e-12)
    xs = (x - mu) / sd
    onehot = np.zeros((n, C))
    onehot[np.arange(n), y] = 1.0

    def fg(theta):
        W = theta[:C * d].reshape(C, d)
        b = theta[C * d:]
        logp = log_softmax(xs @ W.T + b, axis=1)
        loss = -(logp * onehot).sum() / n + l2 * (W * W).sum()
        r = (np.exp(logp) - onehot) / n
        gW = r.T @ xs + 2.0 * l2 * W
        return loss, np.concatenate([gW.ravel(), r.sum(0)])

    res = minimize(fg, np.zeros(C * d + C), jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-15})
    W = res.x[:C * d].reshape(C, d) / sd  # W ((x - mu) / sd) + b = (W / sd) x + (b - (W / sd) mu)
    b = res.x[C * d:] - W @ mu
    return W, b


def linear_predict(W, b, feats) -> np.ndarray:
    """``argmax_c (W x + b)_c`` (smallest index among ties)."""
    return np.argmax(np.asarray(feats, dtype=np.float64) @ np.asarray(W).T + np.asarray(b), axis=1)


def _as_arrays(W, b, test_feats, test_labels, subspaces):
    """float64 W, b, features; int64 labels; subspace bases as (M, d, n3) (a (M, d) array of lines is n3 = 1)."""
    Bs = np.asarray(subspaces, dtype=np.float64)
    if Bs.ndim == 2:
        Bs = Bs[:, :, None]
    return (np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64),
            np.asarray(test_feats, dtype=np.float64), np.asarray(test_labels).astype(np.int64), Bs)


def linear_adversary_wins(W, b, test_feats, test_labels, subspaces, *, tol: float = 1e-12) -> np.ndarray:
    """Exact adversary against the linear classifier, closed form (module docstring); bool per test point."""
    W, b, x, y, Bs = _as_arrays(W, b, test_feats, test_labels, subspaces)
    dW = W[None, :, :] - W[y][:, None, :]  # (M, C, d): w_c - w_y
    alpha = np.einsum("mcd,md->mc", dW, x) + b[None, :] - b[y][:, None]
    beta = np.einsum("mcd,mdk->mck", dW, Bs)
    moves = np.linalg.norm(beta, axis=2) > tol * np.linalg.norm(dW, axis=2)
    other = np.ones_like(alpha, dtype=bool)
    other[np.arange(len(y)), y] = False
    return ((moves | (alpha >= 0)) & other).any(1)


def line_end_classes(W, b, subspaces) -> tuple[np.ndarray, np.ndarray]:
    """For ``n3 = 1``: the linear classifier's label at ``t -> +inf`` and ``t -> -inf`` along ``x + t b_dir``
    (argmax / argmin of ``W b_dir``; intercepts only matter on exact ties, ignored here)."""
    Bs = np.asarray(subspaces, dtype=np.float64)
    Wb = np.einsum("cd,md->mc", np.asarray(W, dtype=np.float64), Bs.reshape(len(Bs), -1))
    return Wb.argmax(1), Wb.argmin(1)


def linear_adversary_wins_lp(W, b, test_feats, test_labels, subspaces) -> np.ndarray:
    """Reference: for each wrong class ``c`` an LP ``exists t in R^n3: s_c(t) >= s_k(t) for all k`` (HiGHS)."""
    from scipy.optimize import linprog

    W, b, x, y, Bs = _as_arrays(W, b, test_feats, test_labels, subspaces)
    out = np.zeros(len(x), dtype=bool)
    for m in range(len(x)):
        WB = W @ Bs[m]  # (C, n3)
        s0 = W @ x[m] + b
        for c in range(len(W)):
            if c == y[m]:
                continue
            # s_k(t) - s_c(t) <= 0  <=>  (WB_k - WB_c) t <= s0_c - s0_k
            A = WB - WB[c]
            rhs = s0[c] - s0
            res = linprog(np.zeros(WB.shape[1]), A_ub=A, b_ub=rhs, bounds=[(None, None)] * WB.shape[1],
                          method="highs")
            if res.status == 0:
                out[m] = True
                break
    return out
