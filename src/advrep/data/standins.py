"""Smoke-scale stand-in datasets built from real Fashion-MNIST, and the one resolver of symbolic stand-in names.

fashion28 / fashion32
    A seeded class-balanced subset of Fashion-MNIST (obtained and verified exactly as the ``fashion_mnist`` dataset:
    cache, mirror or download, torchvision md5 or the pinned content sha256): ``n_train`` images of the training split
    and ``n_test`` of the test split, ``n // 10`` per class (the first ``n % 10`` classes one more), drawn without
    replacement by ``numpy.random.default_rng([seed, split])`` (split 0 = train, 1 = test) and kept in the original
    order.  ``fashion28`` keeps the 28x28x1 images (stand-in for MNIST-like inputs); ``fashion32`` pads them with 2
    pixels of zeros on every side to 32x32 and repeats the grey channel 3 times (stand-in for CIFAR-like inputs).
    Sizes and seed come from the config's ``data.standins`` block.  Results on them are not comparable with the papers'
    numbers (``meta['standin_for']`` says so, as for the digits).

Symbolic names
    A smoke overlay names ``standin28`` or ``standin32``; :func:`resolve_standins` turns every such name in the config
    into ``fashion28`` / ``fashion32`` where Fashion-MNIST can be obtained (the check is file existence only) and into
    the bundled ``digits28`` / ``digits32`` otherwise, once, before any rule reads a dataset name.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np

STANDIN_DEFAULTS = {"n_train": 2000, "n_test": 500, "seed": 0}

#: symbolic name -> (preferred stand-in built from real data, bundled fallback)
SYMBOLIC = {"standin28": ("fashion28", "digits28"), "standin32": ("fashion32", "digits32")}


def balanced_subset(y: np.ndarray, n: int, n_classes: int, *, seed: int, split: int) -> np.ndarray:
    """Sorted indices of a seeded class-balanced subset of size ``n`` of labels ``y``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < n_classes:
        raise ValueError(f"stand-in subset size must be an integer >= {n_classes} (one image per class), got {n!r}")
    rng = np.random.default_rng([int(seed), int(split)])
    per_class = [n // n_classes + (1 if c < n % n_classes else 0) for c in range(n_classes)]
    picked = []
    for c, k in enumerate(per_class):
        members = np.flatnonzero(y == c)
        if k > len(members):
            raise ValueError(f"stand-in subset of {n} needs {k} images of class {c}, the split has {len(members)}")
        picked.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def pad_repeat(x: np.ndarray, size: int = 32, channels: int = 3) -> np.ndarray:
    """(N, H, W, 1) uint8 -> (N, size, size, channels): zeros padded evenly around, grey channel repeated."""
    pad = size - x.shape[1]
    if pad < 0 or pad % 2 or x.shape[1] != x.shape[2] or x.shape[3] != 1:
        raise ValueError(f"cannot pad images of shape {x.shape[1:]} to {size}x{size}x{channels}")
    out = np.pad(x, ((0, 0), (pad // 2, pad // 2), (pad // 2, pad // 2), (0, 0)))
    return np.ascontiguousarray(np.repeat(out, channels, axis=3))


def make_standin(shape, x_tr, y_tr, x_te, y_te, n_classes: int, *, n_train: int, n_test: int, seed: int):
    """The stand-in arrays and the subset's record, from the verified base dataset's splits."""
    i_tr = balanced_subset(y_tr, n_train, n_classes, seed=seed, split=0)
    i_te = balanced_subset(y_te, n_test, n_classes, seed=seed, split=1)
    xs = [x_tr[i_tr], x_te[i_te]]
    if tuple(shape) != tuple(x_tr.shape[1:]):
        xs = [pad_repeat(x, shape[0], shape[2]) for x in xs]
    info = {f"{s}_indices_sha256": hashlib.sha256(i.tobytes()).hexdigest() for s, i in (("train", i_tr),
                                                                                       ("test", i_te))}
    return np.ascontiguousarray(xs[0]), y_tr[i_tr], np.ascontiguousarray(xs[1]), y_te[i_te], info


def resolve_standin(name, available: Callable[[str], bool]):
    """``standin28`` -> ``fashion28`` if ``available('fashion28')`` else ``digits28`` (likewise 32); any other value
    is returned unchanged."""
    if not isinstance(name, str) or name not in SYMBOLIC:
        return name
    preferred, fallback = SYMBOLIC[name]
    return preferred if available(preferred) else fallback


def resolve_standins(cfg, available: Callable[[str], bool]):
    """A copy of ``cfg`` (nested dicts and lists) with every symbolic stand-in name resolved; ``available`` is asked
    at most once per symbolic name."""
    cache: dict[str, str] = {}

    def one(v):
        if isinstance(v, dict):
            return {k: one(x) for k, x in v.items()}
        if isinstance(v, list):
            return [one(x) for x in v]
        if isinstance(v, str) and v in SYMBOLIC:
            if v not in cache:
                cache[v] = resolve_standin(v, available)
            return cache[v]
        return v

    return one(cfg)
