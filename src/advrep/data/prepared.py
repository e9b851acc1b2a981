"""The prepared-dataset file: one ``.npz`` per dataset (and parameter set), written atomically.

Keys: ``x_train``, ``y_train``, ``x_test``, ``y_test`` and ``meta`` (a JSON string stored as a 0-d array, so the file
loads with ``allow_pickle=False``).  Images are ``uint8`` NHWC (``C == 1`` for grey); PLANES points are ``float32``
``(N, D)``; labels are ``int64``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from advrep.io import atomic_path

from .errors import DatasetCorrupt

ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
REQUIRED_META = ("name", "source", "origin", "verified_by", "content_sha256", "n_train", "n_test", "shape",
                 "n_classes", "standin_for", "params")


def arrays_sha256(*arrays: np.ndarray) -> str:
    """sha256 over arrays in the order given: for each, its little-endian dtype string, its shape, then its bytes.

    Independent of memory layout (arrays are made C-contiguous) and of the machine's byte order.
    """
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        h.update(f"{a.dtype.str}{list(a.shape)}\n".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def content_sha256(x_train, y_train, x_test, y_test) -> str:
    """sha256 of a whole prepared dataset: :func:`arrays_sha256` over ``x_train, y_train, x_test, y_test``."""
    return arrays_sha256(x_train, y_train, x_test, y_test)


@dataclass
class Prepared:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    meta: dict = field(default_factory=dict)


def _jsonable(meta: dict) -> dict:
    """The meta dict as it will read back from the file (tuples become lists, keys sorted)."""
    return json.loads(json.dumps(meta, sort_keys=True))


def write_prepared(out_path: str | os.PathLike, x_train, y_train, x_test, y_test, meta: dict) -> dict:
    """Write the ``.npz`` atomically (nothing appears at ``out_path`` unless the whole file was written).

    Fills ``content_sha256``, ``n_train`` and ``n_test`` in ``meta`` and returns the meta dict as stored.
    """
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    meta = dict(meta)
    meta["content_sha256"] = content_sha256(x_train, y_train, x_test, y_test)
    meta["n_train"] = int(len(x_train))
    meta["n_test"] = int(len(x_test))
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"meta lacks {missing}")
    meta = _jsonable(meta)
    with atomic_path(out_path) as tmp:
        # Write through a file object: np.savez would append ".npz" to a path that lacks it.
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays, meta=np.array(json.dumps(meta, sort_keys=True)))
            fh.flush()
            os.fsync(fh.fileno())
    return meta


def load(path: str | os.PathLike, *, verify: bool = True) -> Prepared:
    """Read a prepared ``.npz``.  With ``verify`` (default) the arrays are re-hashed and compared to
    ``meta['content_sha256']``; a mismatch raises :class:`DatasetCorrupt`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in (*ARRAY_KEYS, "meta") if k not in f.files]
            if missing:
                raise DatasetCorrupt(f"{path}: not a prepared dataset file (missing keys {missing}); "
                                     f"delete it and re-run the data preparation step.")
            arrays = {k: f[k] for k in ARRAY_KEYS}
            meta = json.loads(str(f["meta"][()]))
    except (ValueError, OSError, EOFError) as e:  # zip/npy damage
        raise DatasetCorrupt(f"{path}: cannot be read as a prepared dataset ({type(e).__name__}: {e}); "
                             f"delete it and re-run the data preparation step.") from e
    if verify:
        got = content_sha256(*(arrays[k] for k in ARRAY_KEYS))
        if got != meta.get("content_sha256"):
            raise DatasetCorrupt(f"{path}: arrays hash to {got} but the file's meta records "
                                 f"{meta.get('content_sha256')}; delete it and re-run the data preparation step.")
    return Prepared(**arrays, meta=meta)
