"""Table 4 of the sonet slides: which time points an adaptive solver accepts, over many test images.

The slides print one list per (tolerance, PGD iterations), e.g. ``[0.0, 0.262, 1.0]`` (L288).  We record the
accepted grid of one ODE block for every test image separately (an adaptive step is chosen for the whole batch, so a
per-image grid needs a batch of one) and summarise the lists:

* ``modal_length``: the most frequent number of time points, and ``modal_length_frequency`` (fraction of images);
* ``median``: the per-position median over the images whose grid has the modal length -- these are the cells of the
  paper's columns "adaptive step k" (position k of the list);
* ``mode``: the most frequent grid after rounding to the paper's printed precision (3 decimals), and its frequency.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def grid_statistics(grids: Sequence[Sequence[float]], decimals: int = 3) -> dict:
    """Summary of per-image accepted grids (see the module docstring).  Ties in either mode go to the shorter /
    lexicographically smaller grid, so the result does not depend on the order of the images."""
    grids = [tuple(float(t) for t in g) for g in grids]
    if not grids:
        raise ValueError("no grids to summarise")
    if any(len(g) < 2 for g in grids):
        raise ValueError("every grid has at least its two endpoints")
    n = len(grids)
    lengths = Counter(len(g) for g in grids)
    modal_length = min(lengths, key=lambda k: (-lengths[k], k))
    same = np.array([g for g in grids if len(g) == modal_length])
    rounded = Counter(tuple(round(t, decimals) for t in g) for g in grids)
    mode = min(rounded, key=lambda g: (-rounded[g], len(g), g))
    return {"n": n, "modal_length": modal_length, "modal_length_frequency": lengths[modal_length] / n,
            "median": [float(v) for v in np.median(same, axis=0)], "mode": list(mode),
            "mode_frequency": rounded[mode] / n}
