"""The prepared-dataset file: one ``.npz`` per dataset (and parameter set), written atomically.

Keys: ``x_train``, ``y_train``, ``x_test``, ``y_test`` and ``meta`` (a JSON string stored as a 0-d array, so the file
loads with ``allow_pickle=False``).  Images are ``uint8`` NHWC (``C == 1`` for grey); PLANES points are ``float32``
``(N, D)``; labels are ``int64``.

A damaged file is never used: :func:`load` re-hashes the arrays and, when the file cannot be read or its arrays do
not match its meta, moves it aside to ``<name>.npz.damaged`` and raises :class:`DatasetCorrupt` (one line: the
file, what is wrong, what to do), so the next run rebuilds it.  :func:`set_aside_damaged` does the cheap part of that
check (the zip directory, not the arrays) on every prepared file of a folder; the workflow calls it before it builds
the DAG, so a truncated prepared file is rebuilt in the same run.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from advrep.io import atomic_path

from .errors import DatasetCorrupt

ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
DAMAGED_SUFFIX = ".damaged"
#: The workflow rule that (re)builds a prepared file (rules/data.smk), named in the messages.
RULE = "prepare_dataset"
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


def damage(path: str | os.PathLike) -> str:
    """What is wrong with the *structure* of a prepared file ("" when nothing seen): its zip directory is unreadable
    (a truncated or overwritten file), an array is missing, or a member runs past the end of the file.

    Reads the zip directory only (milliseconds for any size); the arrays' bytes and hash are checked by :func:`load`.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, EOFError) as e:
        return f"not a whole zip archive, truncated or overwritten ({_why(e)})"
    except OSError:  # unreadable here (permissions, a vanished file) is not damage: load() reports it in the job
        return ""
    names = {i.filename for i in infos}
    missing = [k for k in (*ARRAY_KEYS, "meta") if f"{k}.npy" not in names]
    if missing:
        return f"not a prepared dataset file (missing arrays {missing})"
    for i in infos:
        if i.header_offset + i.compress_size > size:
            return f"truncated (array {i.filename} runs past the end of the file)"
    return ""


def set_aside(path: str | os.PathLike) -> Path:
    """Rename a damaged file to ``<name>.damaged`` (replacing an older one): out of the workflow's way, kept for a
    look."""
    path = Path(path)
    dst = path.with_name(path.name + DAMAGED_SUFFIX)
    os.replace(path, dst)
    return dst


def set_aside_damaged(directory: str | os.PathLike) -> list[str]:
    """Check the structure (:func:`damage`) of every prepared ``*.npz`` in ``directory`` and move the damaged ones
    aside (:func:`set_aside`), so that the workflow sees them missing and rebuilds them; returns one message per
    file moved.  Temporary files of writes in progress (``.<name>.tmp-*``) are not looked at."""
    messages = []
    d = Path(directory)
    for path in sorted(d.glob("*.npz")) if d.is_dir() else []:
        if path.name.startswith("."):
            continue
        what = damage(path)
        if what:
            dst = set_aside(path)
            messages.append(f"{path}: damaged prepared dataset: {what}; moved to {dst.name}, rule {RULE} "
                            f"rebuilds it in this run.")
    return messages


def _why(e: BaseException) -> str:
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "no message")
    return f"{type(e).__name__}: {first}"


def _damaged(path: Path, what: str, move: bool) -> DatasetCorrupt:
    if move and path.exists():
        dst = set_aside(path)
        todo = (f"moved it to {dst.name}; rerun the same command and rule {RULE} rebuilds it "
                f"(snakemake {path})")
    else:
        todo = f"delete it and rerun the same command: rule {RULE} rebuilds it (snakemake {path})"
    return DatasetCorrupt(f"{path}: damaged prepared dataset: {what}; {todo}.")


def load(path: str | os.PathLike, *, verify: bool = True, move_damaged: bool = True) -> Prepared:
    """Read a prepared ``.npz``.  With ``verify`` (default) the arrays are re-hashed and compared to
    ``meta['content_sha256']``.  A file that cannot be read, lacks an array or fails the hash raises
    :class:`DatasetCorrupt` (one line: the file, what is wrong, what to do); with ``move_damaged`` (default)
    the file is first moved to ``<name>.npz.damaged`` so that the next run rebuilds it instead of using it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no prepared dataset there; rule {RULE} makes it (snakemake {path})")
    arrays, meta, missing = {}, {}, []
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in (*ARRAY_KEYS, "meta") if k not in f.files]
            if not missing:
                arrays = {k: f[k] for k in ARRAY_KEYS}
                meta = json.loads(str(f["meta"][()]))
    except Exception as e:  # zip/npy damage: BadZipFile (truncated, bad CRC), EOFError, ValueError, OSError, ...
        raise _damaged(path, f"cannot be read, truncated or corrupt ({_why(e)})", move_damaged) from e
    if missing:
        raise _damaged(path, f"not a prepared dataset file (missing arrays {missing})", move_damaged)
    if verify:
        got = content_sha256(*(arrays[k] for k in ARRAY_KEYS))
        if got != meta.get("content_sha256"):
            raise _damaged(path, f"its arrays hash to {got[:12]}... but its meta records "
                                 f"{str(meta.get('content_sha256'))[:12]}... (modified or damaged)", move_damaged)
    return Prepared(**arrays, meta=meta)
