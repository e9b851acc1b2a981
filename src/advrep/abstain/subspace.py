"""Haar-random adversarial subspaces (the random feature-subspace threat model, paper Section 2, L43).

For every test point the adversary receives an ``n3``-dimensional linear subspace ``S`` drawn from the uniform
(Haar) distribution on the Grassmannian; it may then move ``F(x)`` to any point of ``F(x) + S``.  A Haar-distributed
orthonormal basis is the ``Q`` factor of the QR decomposition of a standard Gaussian ``d x n3`` matrix once the signs
of ``Q``'s columns are fixed so that ``diag(R) > 0`` (Mezzadri 2007, "How to generate random matrices from the
classical compact groups", Section 5); for ``n3 = 1`` this is ``g / ||g||``.
"""

from __future__ import annotations

import numpy as np


def random_subspaces(m: int, d: int, n3: int, seed: int) -> np.ndarray:
    """Orthonormal bases ``B`` of shape ``(m, d, n3)``, one Haar-random ``n3``-subspace of ``R^d`` per test point.

    Drawn from ``numpy.random.default_rng(seed)`` in test-point order: the first ``k`` bases are the same for every
    ``m >= k``, so a subset of the test set sees the same subspaces as the full run.
    """
    if not 1 <= n3 <= d:
        raise ValueError(f"need 1 <= n3 <= d, got n3={n3}, d={d}")
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((m, d, n3))
    q, r = np.linalg.qr(g)
    s = np.sign(np.diagonal(r, axis1=1, axis2=2)).copy()
    s[s == 0] = 1.0
    return np.ascontiguousarray(q * s[:, None, :])
