"""Datasets that need no download: scikit-learn's bundled digits (as small stand-ins) and the synthetic PLANES data.

digits28 / digits32
    scikit-learn's ``load_digits``: 1797 real 8x8 grey images with values 0..16 (bundled with scikit-learn, file
    ``sklearn/datasets/data/digits.csv.gz``).  Scaled to uint8 0..255 (``round(v * 255 / 16)``), then resized with
    bilinear interpolation (``torch.nn.functional.interpolate``, ``align_corners=False``, ``antialias=False``, rounded
    and clipped back to uint8) to 28x28x1 (``digits28``: stand-in for MNIST-like data) or 32x32 with the grey channel
    replicated to 3 channels (``digits32``: stand-in for CIFAR-like data).  Split: ``train_test_split(test_size=0.25,
    random_state=0, stratify=y)`` -> 1347 train / 450 test.  They are stand-ins for smoke runs only: results on them are
    not comparable with the papers' numbers (``meta['standin_for']`` says so).

planes
    The PLANES data of Khoury and Hadfield-Menell (2018) as described by the voronoi paper
    (``/work/shared/papers/003_ecf3e37839b8b53b.txt``, line 82, "Datasets." paragraph; line 99 and 101/105 use
    codimension 10 and 500).  Facts used, all from line 82:

    * "two 2-dimensional planes, the first in the x_d = 0 and the second in x_d = 2" -> class 0 lies on x_d = 0,
      class 1 on x_d = 2 (x_d is the last coordinate).
    * "The first two axis of both planes are bounded as -10 <= x1, x2 <= 10, while x3 = ... = x_{d-1} = 0".
    * "The training set is sampled at the vertices of a regular grid with side length sqrt(2), and the test set at the
      centers of the grid cubes" (the cells of the 2-D grid are squares; their centres are at distance exactly 1 from
      the nearest vertices, which is why "the L2-balls of radius 1 cover the 2-dimensional planes").
    * "The spacing along the axis x_d is chosen so the maximum perturbation size is 1" (gap 2 between the planes).
    * "The codimension of this dataset is d - 2" -> ambient dimension ``D = codim + 2``.

    Our choice where the text is silent: the grid is anchored at the corner (-10, -10) and holds every vertex
    ``-10 + k*sqrt(2) <= 10``, i.e. k = 0..14 (15 values per axis, last at 9.799); cell centres are
    ``-10 + (k + 1/2)*sqrt(2)`` for k = 0..13 (14 values per axis).  So per plane 15*15 = 225 training points and
    14*14 = 196 test points; in total 450 train and 392 test, half per class.  Points are ordered class 0 first, then
    row-major over (x1, x2).  ``x`` is float32 ``(N, D)``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import math

import numpy as np

DIGITS_DEFAULTS = {"test_size": 0.25, "seed": 0}
PLANES_DEFAULTS = {"extent": 10.0, "side": math.sqrt(2.0), "gap": 2.0}


def _digits_file():
    return importlib.resources.files("sklearn.datasets.data") / "digits.csv.gz"


def make_digits(size: int, channels: int, *, test_size: float = 0.25, seed: int = 0):
    """Return ``(x_train, y_train, x_test, y_test, info)`` for the resized digits."""
    import sklearn
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.asarray(d.images, dtype=np.float64)  # (1797, 8, 8), 0..16
    y = np.asarray(d.target, dtype=np.int64)
    if images.min() < 0 or images.max() > 16:
        raise RuntimeError(f"scikit-learn digits out of the documented range 0..16: {images.min()}..{images.max()}")
    x8 = np.rint(images * (255.0 / 16.0)).astype(np.uint8)
    t = torch.from_numpy(x8.astype(np.float32))[:, None]  # (N, 1, 8, 8)
    r = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    x = np.clip(np.rint(r.numpy()), 0, 255).astype(np.uint8)[:, 0, :, :, None]  # (N, H, W, 1)
    if channels == 3:
        x = np.repeat(x, 3, axis=3)
    idx = np.arange(len(y))
    i_train, i_test = train_test_split(idx, test_size=test_size, random_state=seed, stratify=y)
    raw = _digits_file()
    info = {
        "origin": str(raw),
        "files": [{"path": str(raw), "md5": hashlib.md5(raw.read_bytes()).hexdigest()}],
        "sklearn_version": sklearn.__version__,
        "train_indices_sha256": hashlib.sha256(np.asarray(i_train, np.int64).tobytes()).hexdigest(),
    }
    return (np.ascontiguousarray(x[i_train]), y[i_train], np.ascontiguousarray(x[i_test]), y[i_test], info)


def planes_axes(extent: float, side: float):
    """Grid coordinates along x1 (and x2): ``(vertices, centres)`` in float64."""
    k = int(math.floor(2 * extent / side + 1e-9))
    vertices = -extent + side * np.arange(k + 1)
    centres = -extent + side * (np.arange(k) + 0.5)
    return vertices, centres


def make_planes(codim: int, *, extent: float = 10.0, side: float = math.sqrt(2.0), gap: float = 2.0):
    """Return ``(x_train, y_train, x_test, y_test)``; see the module docstring for the definition."""
    if isinstance(codim, bool) or not isinstance(codim, (int, np.integer)) or codim < 1:
        raise ValueError(f"planes: codim must be an integer >= 1, got {codim!r}")
    if not (extent > 0 and side > 0 and gap > 0):
        raise ValueError(f"planes: extent, side and gap must be positive, got {extent}, {side}, {gap}")
    dim = int(codim) + 2
    vertices, centres = planes_axes(extent, side)

    def sample(axis):
        g1, g2 = np.meshgrid(axis, axis, indexing="ij")
        pts = np.stack([g1.ravel(), g2.ravel()], axis=1)
        xs, ys = [], []
        for label, height in ((0, 0.0), (1, gap)):
            x = np.zeros((len(pts), dim), dtype=np.float64)
            x[:, 0:2] = pts
            x[:, dim - 1] = height
            xs.append(x)
            ys.append(np.full(len(pts), label, dtype=np.int64))
        return np.concatenate(xs).astype(np.float32), np.concatenate(ys)

    x_train, y_train = sample(vertices)
    x_test, y_test = sample(centres)
    return x_train, y_train, x_test, y_test
