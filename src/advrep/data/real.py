"""Real datasets (MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100): find, verify, decode.

Where files are looked for, in this order
-----------------------------------------
1. the cache ``root`` (where ``data.download`` puts torchvision's downloads; ``source='cache'``),
2. the mirror folder ``data.mirror`` if set (``source='mirror'``),
3. a download with torchvision's own downloader (``torchvision.datasets.<Class>(root, download=True)``, which checks
   the archive md5s) if ``data.download`` is on (``source='download'``).  It downloads into a hidden staging folder
   inside ``root`` and moves the files into ``root`` only when torchvision reports success, so an interrupted download
   leaves nothing that looks like a cache.

Mirror (and cache) layouts accepted
-----------------------------------
For a folder ``M`` (the mirror or the root) these folders are searched, first complete one wins:

* ``M/<sub>/raw`` and ``M/<sub>`` for every subfolder ``<sub>`` of ``M`` whose name, lower-cased with ``-``, ``_``
  and ``.`` removed, equals the dataset name or torchvision's class name so reduced: ``mnist`` -> ``MNIST``, ``mnist``;
  ``fashion_mnist`` -> ``FashionMNIST``, ``fashion-mnist``, ``fashion_mnist``, ``fashionmnist``; ``cifar10`` ->
  ``CIFAR10``, ``cifar10``, ``cifar-10``; ``cifar100`` -> ``CIFAR100``, ``cifar100``, ``cifar-100`` (any case).
  This covers torchvision's own layout ``M/MNIST/raw``, ``M/FashionMNIST/raw`` and Debian's
  ``/usr/share/datasets/fashion-mnist``'s parent.
* ``M/raw`` and ``M`` itself (files directly in the folder) -- for (Fashion-)MNIST only when ``M`` is itself named
  after the dataset as above (e.g. ``/usr/share/datasets/fashion-mnist``), because the two share file names.

In a folder, the files needed are:

* (Fashion-)MNIST: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each either gzipped (``<name>.gz``, preferred when both exist) or uncompressed.  MNIST and
  Fashion-MNIST use the same file names: keep them in separate subfolders (``mnist/``, ``fashion-mnist/``); if a file
  of the other dataset is picked up, verification fails (naming the other dataset when
  its bytes match torchvision's md5 for it).
* CIFAR-10: the extracted folder ``cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``, ``test_batch``, and
  optionally ``batches.meta``), or those batch files directly in the folder, or the archive
  ``cifar-10-python.tar.gz`` -- in that order of preference.
* CIFAR-100: ``cifar-100-python/`` (``train``, ``test``, optionally ``meta``), those files directly, or
  ``cifar-100-python.tar.gz``.

Verification
------------
Expected md5s are torchvision's class attributes (``MNIST.resources``, ``FashionMNIST.resources``,
``CIFAR10.tgz_md5``/``train_list``/``test_list``, ...), never retyped. A file whose bytes match is accepted
(``verified_by='archive md5 (torchvision)'``). Otherwise it is decoded and accepted only if the decoded split (images
and labels) hashes to a content sha256 pinned in :mod:`advrep.data.checksums` (``'content sha256 (pinned)'``), so a
faithful re-compressed copy (e.g. Debian's ``dataset-fashion-mnist``, or a mirror that stores uncompressed idx files)
is accepted. Only Fashion-MNIST has pinned content hashes; for MNIST and CIFAR the bytes must match torchvision's md5
(uncompressed idx files of MNIST therefore cannot be verified: provide the ``.gz`` files). CIFAR pickles are unpickled
only after their md5 matched (no content hash is pinned for CIFAR), and always with an unpickler that refuses any
global other than numpy's array reconstruction. Then the structure is checked: sizes (60000/10000 x 28x28 for the
MNIST-likes, 50000/10000 x 32x32x3 for CIFAR), labels in range, label counts (Fashion-MNIST and CIFAR exactly
balanced; MNIST every class at least half its share).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import checksums
from .errors import DatasetCorrupt, DatasetUnavailable
from .prepared import arrays_sha256

MD5_VERIFIED = "archive md5 (torchvision)"
CONTENT_VERIFIED = "content sha256 (pinned)"


@dataclass(frozen=True)
class RealSpec:
    name: str
    tv_class: str          # torchvision.datasets class name
    kind: str              # 'idx' | 'cifar'
    n_train: int
    n_test: int
    shape: tuple
    n_classes: int
    balanced: bool         # exactly equal class counts in each split
    label_key: str = "labels"  # CIFAR pickles


REAL = {
    "mnist": RealSpec("mnist", "MNIST", "idx", 60000, 10000, (28, 28, 1), 10, balanced=False),
    "fashion_mnist": RealSpec("fashion_mnist", "FashionMNIST", "idx", 60000, 10000, (28, 28, 1), 10, balanced=True),
    "cifar10": RealSpec("cifar10", "CIFAR10", "cifar", 50000, 10000, (32, 32, 3), 10, balanced=True),
    "cifar100": RealSpec("cifar100", "CIFAR100", "cifar", 50000, 10000, (32, 32, 3), 100, balanced=True,
                         label_key="fine_labels"),
}


def tv_class(spec: RealSpec):
    import torchvision.datasets

    return getattr(torchvision.datasets, spec.tv_class)


def _norm(s: str) -> str:
    return s.lower().replace("-", "").replace("_", "").replace(".", "")


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# --------------------------------------------------------------------------------------------------------------------
# Expected files (from torchvision's class attributes)

@dataclass(frozen=True)
class Needed:
    """A file a split needs: base name, role, and torchvision's md5 for the name torchvision downloads."""
    split: str             # 'train' | 'test'
    role: str              # 'images' | 'labels' | batch name
    base: str              # e.g. 'train-images-idx3-ubyte' or 'data_batch_1'
    md5_name: str          # the name torchvision's md5 refers to ('train-images-idx3-ubyte.gz', 'data_batch_1')
    md5: str


def needed_files(spec: RealSpec) -> list[Needed]:
    cls = tv_class(spec)
    out = []
    if spec.kind == "idx":
        for filename, md5 in cls.resources:
            base = filename[:-3] if filename.endswith(".gz") else filename
            split = "train" if base.startswith("train-") else "test"
            role = "images" if "-images-" in base else "labels"
            out.append(Needed(split, role, base, filename, md5))
        order = {("train", "images"): 0, ("train", "labels"): 1, ("test", "images"): 2, ("test", "labels"): 3}
        out.sort(key=lambda n: order[(n.split, n.role)])
        if len(out) != 4:
            raise RuntimeError(f"unexpected torchvision.datasets.{spec.tv_class}.resources: {cls.resources}")
    else:
        for split, lst in (("train", cls.train_list), ("test", cls.test_list)):
            for fname, md5 in lst:
                out.append(Needed(split, fname, fname, fname, md5))
    return out


def _all_known_md5() -> dict[str, str]:
    """md5 -> 'dataset file' over all real datasets, to say which dataset a misplaced file belongs to."""
    known = {}
    for spec in REAL.values():
        for n in needed_files(spec):
            known[n.md5] = f"{spec.name} {n.md5_name}"
        if spec.kind == "cifar":
            cls = tv_class(spec)
            known[cls.tgz_md5] = f"{spec.name} {cls.filename}"
    return known


# --------------------------------------------------------------------------------------------------------------------
# Locating files

@dataclass
class Found:
    folder: Path                  # where the files were found
    mode: str                     # 'files' (idx files or extracted CIFAR batches) | 'archive' (CIFAR .tar.gz)
    paths: dict = field(default_factory=dict)  # base name -> path (mode 'files'); {'archive': path} (mode 'archive')
    meta_path: Path | None = None  # CIFAR batches.meta / meta, if present


def _candidate_dirs(folder: Path, spec: RealSpec) -> list[Path]:
    wanted = {_norm(spec.name), _norm(spec.tv_class)}
    dirs: list[Path] = []
    try:
        subs = sorted(p for p in folder.iterdir() if p.is_dir() and _norm(p.name) in wanted)
    except OSError:
        subs = []
    for s in subs:
        dirs += [s / "raw", s]
    # MNIST and Fashion-MNIST share file names: idx files directly in a folder count only when the folder (or, for
    # torchvision's ``raw``, its parent) is named after the dataset, so /usr/share/datasets/fashion-mnist as a
    # mirror never passes for MNIST.  CIFAR's file names are unique, so any folder will do.
    named = _norm(folder.name) in wanted or (folder.name == "raw" and _norm(folder.parent.name) in wanted)
    if spec.kind != "idx" or named:
        dirs += [folder / "raw", folder]
    seen, out = set(), []
    for d in dirs:
        if d not in seen and d.is_dir():
            seen.add(d)
            out.append(d)
    return out


def _files_in(d: Path, spec: RealSpec) -> tuple[dict, list]:
    """(found base -> path, missing base names) for the files a split needs, directly in ``d``."""
    found, missing = {}, []
    for n in needed_files(spec):
        cands = [d / (n.base + ".gz"), d / n.base] if spec.kind == "idx" else [d / n.base]
        hit = next((c for c in cands if c.is_file()), None)
        if hit is None:
            missing.append(n.base)
        else:
            found[n.base] = hit
    return found, missing


def locate(folder, spec: RealSpec) -> tuple[Found | None, str]:
    """Find a complete copy in ``folder`` (file-existence checks only).  Returns ``(found, '')`` or
    ``(None, what was looked for)``."""
    folder = Path(folder)
    if not folder.is_dir():
        return None, f"{folder} does not exist"
    best_missing = None
    for d in _candidate_dirs(folder, spec):
        if spec.kind == "cifar":
            cls = tv_class(spec)
            for sub in (d / cls.base_folder, d):
                if sub.is_dir():
                    found, missing = _files_in(sub, spec)
                    if not missing:
                        meta = sub / cls.meta["filename"]
                        return Found(sub, "files", found, meta if meta.is_file() else None), ""
                    if found and (best_missing is None or len(missing) < len(best_missing[1])):
                        best_missing = (sub, missing)
            if (d / cls.filename).is_file():
                return Found(d, "archive", {"archive": d / cls.filename}), ""
        else:
            found, missing = _files_in(d, spec)
            if not missing:
                return Found(d, "files", found), ""
            if found and (best_missing is None or len(missing) < len(best_missing[1])):
                best_missing = (d, missing)
    msg = f"no complete copy under {folder}"
    if best_missing is not None:
        msg += f" ({best_missing[0]} lacks {', '.join(best_missing[1])})"
    return None, msg


def file_list(spec: RealSpec) -> str:
    """Human description of the files a mirror must hold."""
    if spec.kind == "idx":
        names = ", ".join(n.md5_name for n in needed_files(spec))
        if checksums.CONTENT_SHA256.get(spec.name):
            return names + " (as torchvision downloads them, or a faithful re-compressed or uncompressed copy)"
        return names + " (byte-identical to torchvision's downloads)"
    cls = tv_class(spec)
    names = [n.base for n in needed_files(spec)]
    return f"{cls.filename}, or the extracted folder {cls.base_folder}/ with {', '.join(names)}"


def subfolder_names(spec: RealSpec) -> str:
    if spec.kind == "idx":
        subs = [f"{spec.tv_class}/raw", spec.name.replace("_", "-"), spec.name]
    else:
        subs = [spec.name, spec.name.replace("cifar", "cifar-")]
    return ", ".join(f"`{s}/`" for s in dict.fromkeys(subs))


def unavailable_message(spec: RealSpec, root, mirror, download: bool, extra: str = "") -> str:
    _, why_root = locate(root, spec) if root is not None else (None, "no data.root given")
    if mirror is None:
        why_mirror = "`data.mirror` is not set"
    else:
        _, why_mirror = locate(mirror, spec)
        why_mirror = f"mirror: {why_mirror}"
    parts = [f"dataset {spec.name!r} is not available: cache: {why_root}; {why_mirror}; "
             + ("`data.download` is on but the download failed." if download else "`data.download` is off.")]
    if extra:
        parts.append(extra)
    alt = ("or let `data.download` succeed: it needs internet access from this machine" if download else
           "or set `data.download: true` (needs internet; torchvision downloads into `data.root`)")
    parts.append(f"To provide it: set `data.mirror` to a folder holding {file_list(spec)}, directly or in a "
                 f"subfolder such as {subfolder_names(spec)}; {alt}.")
    return " ".join(parts)


def availability(spec: RealSpec, *, root, mirror=None, download=False) -> tuple[bool, str]:
    if root is not None:
        found, _ = locate(root, spec)
        if found is not None:
            return True, f"cached copy in {found.folder}"
    if mirror is not None:
        found, _ = locate(mirror, spec)
        if found is not None:
            return True, f"mirror copy in {found.folder}"
    if download:
        return True, f"will download with torchvision.datasets.{spec.tv_class} (needs internet)"
    return False, unavailable_message(spec, root, mirror, download)


# --------------------------------------------------------------------------------------------------------------------
# Decoding

def _todo(source: str, path) -> str:
    if source == "mirror":
        return (f"fix the mirror: replace {path} with the file torchvision downloads "
                f"(or remove it and enable `data.download`)")
    return f"delete {path} and run again with `data.download: true` to fetch a fresh copy"


def decode_idx(raw: bytes, path, ndim: int) -> np.ndarray:
    """Decode an idx file of unsigned bytes (gzipped or not).  Raises DatasetCorrupt naming the failed check."""
    data = raw
    if raw[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DatasetCorrupt(f"{path}: gzip decoding failed ({type(e).__name__}: {e}); the file is truncated "
                                 f"or damaged") from e
    elif str(path).endswith(".gz"):
        raise DatasetCorrupt(f"{path}: named .gz but is not gzip data (first bytes {raw[:4].hex()})")
    want_magic = 0x0800 | ndim
    if len(data) < 4 or struct.unpack(">I", data[:4])[0] != want_magic:
        got = data[:4].hex() if len(data) >= 4 else f"only {len(data)} bytes"
        raise DatasetCorrupt(f"{path}: wrong idx magic number ({got}), expected 0x{want_magic:08x} "
                             f"(unsigned bytes, {ndim} dimensions)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetCorrupt(f"{path}: idx header truncated ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise DatasetCorrupt(f"{path}: idx data has {len(data)} bytes but its header {list(dims)} implies "
                             f"{expected} ({'truncated' if len(data) < expected else 'trailing bytes'})")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays and plain Python objects (what CIFAR's pickles hold)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy") and "multiarray" in module:
            import numpy._core.multiarray as ma  # avoid numpy.core's deprecation shim
            return getattr(ma, name)
        return super().find_class(module, name)


def decode_cifar_batch(raw: bytes, path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one CIFAR python batch into (N,32,32,3) uint8 images and int64 labels."""
    try:
        entry = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 -- any unpickling failure means a damaged file
        raise DatasetCorrupt(f"{path}: cannot be unpickled as a CIFAR batch ({type(e).__name__}: {e})") from e
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise DatasetCorrupt(f"{path}: not a CIFAR batch (expected keys 'data' and {label_key!r}, found {keys})")
    data = np.asarray(entry["data"])
    labels = np.asarray(entry[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise DatasetCorrupt(f"{path}: CIFAR batch has data {data.dtype}{list(data.shape)} and labels "
                             f"{list(labels.shape)}; expected uint8 (N, 3072) and (N,)")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), labels.astype(np.int64)


def check_structure(spec: RealSpec, split: str, x: np.ndarray, y: np.ndarray, where: str) -> None:
    n = spec.n_train if split == "train" else spec.n_test
    if x.shape != (n, *spec.shape) or x.dtype != np.uint8:
        raise DatasetCorrupt(f"{where}: {split} images are {x.dtype}{list(x.shape)}, expected uint8{[n, *spec.shape]}")
    if y.shape != (n,):
        raise DatasetCorrupt(f"{where}: {split} labels have shape {list(y.shape)}, expected [{n}]")
    if y.min() < 0 or y.max() >= spec.n_classes:
        raise DatasetCorrupt(f"{where}: {split} labels range {y.min()}..{y.max()}, expected 0..{spec.n_classes - 1}")
    counts = np.bincount(y, minlength=spec.n_classes)
    if spec.balanced and not np.all(counts == n // spec.n_classes):
        raise DatasetCorrupt(f"{where}: {split} label counts {counts.tolist()} are not the exact balance "
                             f"{n // spec.n_classes} per class of {spec.name}")
    if not spec.balanced and counts.min() < n / (2 * spec.n_classes):
        raise DatasetCorrupt(f"{where}: {split} label counts {counts.tolist()} are implausible for {spec.name}")


# --------------------------------------------------------------------------------------------------------------------
# Reading a located copy

def _md5_failure(spec: RealSpec, bad: list[dict], source: str, extra: str = "") -> DatasetCorrupt:
    known = _all_known_md5()
    lines = []
    for r in bad:
        line = f"{r['path']}: md5 {r['md5']} differs from torchvision's {r['expected_md5']} for {r['md5_name']}"
        other = known.get(r["md5"])
        if other and not other.startswith(f"{spec.name} "):
            line += f" (these bytes are {other} -- a file of another dataset)"
        if r.get("diagnosis"):
            line += f"; {r['diagnosis']}"
        lines.append(line)
    return DatasetCorrupt(
        f"{spec.name}: " + "; ".join(lines) + f". The bytes differ from torchvision's and no content hash is pinned "
        f"for {spec.name} in advrep/data/checksums.py, so only byte-identical copies of torchvision's files can be "
        f"verified{extra}. What to do: " + _todo(source, bad[0]["path"]) + ".")


def _record(n: Needed, path: Path, raw: bytes) -> dict:
    md5 = _md5(raw)
    return {"split": n.split, "role": n.role, "path": str(path), "bytes": len(raw), "md5": md5,
            "md5_name": n.md5_name, "expected_md5": n.md5, "md5_ok": md5 == n.md5}


def _verify_split(spec, split, x, y, recs, source) -> str:
    """Content-hash check for a split whose files did not all match md5; returns its verified_by."""
    if all(r["md5_ok"] for r in recs):
        return MD5_VERIFIED
    pinned = checksums.CONTENT_SHA256.get(spec.name, {}).get(split)
    if pinned is None:  # callers check this before decoding; kept as a guard
        raise _md5_failure(spec, [r for r in recs if not r["md5_ok"]], source)
    got = arrays_sha256(x, y)
    if got != pinned:
        bad = [r for r in recs if not r["md5_ok"]]
        names = ", ".join(r["path"] for r in bad)
        raise DatasetCorrupt(
            f"{spec.name}: {names}: bytes differ from torchvision's md5 and the decoded {split} split "
            f"(images+labels) has content sha256 {got}, not the pinned {pinned} (advrep/data/checksums.py): the "
            f"copy is not faithful. What to do: " + _todo(source, bad[0]["path"]) + ".")
    return CONTENT_VERIFIED


@contextlib.contextmanager
def _advise(source: str, path):
    """Append what to do to a DatasetCorrupt raised inside, if it does not say so already."""
    try:
        yield
    except DatasetCorrupt as e:
        if "What to do" in str(e):
            raise
        raise DatasetCorrupt(f"{e}. What to do: {_todo(source, path)}.") from e


def read_idx(spec: RealSpec, found: Found, source: str):
    needed = needed_files(spec)
    arrays, records, split_verified = {}, [], {}
    for split in ("train", "test"):
        ns = [n for n in needed if n.split == split]
        raws = {n.role: found.paths[n.base].read_bytes() for n in ns}
        recs = [_record(n, found.paths[n.base], raws[n.role]) for n in ns]
        pinned = checksums.CONTENT_SHA256.get(spec.name, {}).get(split)
        if pinned is None and not all(r["md5_ok"] for r in recs):
            bad = [r for r in recs if not r["md5_ok"]]
            for r in bad:  # cheap, safe diagnosis: does it at least decode?
                try:
                    a = decode_idx(raws[r["role"]], r["path"], 3 if r["role"] == "images" else 1)
                    r["diagnosis"] = f"it decodes to {list(a.shape)} but cannot be verified"
                except DatasetCorrupt as e:
                    r["diagnosis"] = f"it does not decode either: {e}"
            raise _md5_failure(spec, bad, source)
        with _advise(source, found.paths[ns[0].base]):
            x = decode_idx(raws["images"], found.paths[ns[0].base], 3)[..., None]
        with _advise(source, found.paths[ns[1].base]):
            y = decode_idx(raws["labels"], found.paths[ns[1].base], 1).astype(np.int64)
        split_verified[split] = _verify_split(spec, split, x, y, recs, source)
        with _advise(source, found.folder):
            check_structure(spec, split, x, y, str(found.folder))
        arrays[split] = (x, y)
        records += recs
    return arrays, records, split_verified, None


def _cifar_raws(spec: RealSpec, found: Found, source: str):
    """Yield (Needed, path-for-messages, raw bytes) for all batches; for an archive, verify its md5 first."""
    cls = tv_class(spec)
    needed = needed_files(spec)
    archive_rec = None
    if found.mode == "files":
        raws = [(n, found.paths[n.base], found.paths[n.base].read_bytes()) for n in needed]
        meta_raw = found.meta_path.read_bytes() if found.meta_path is not None else None
        return raws, meta_raw, archive_rec
    path = found.paths["archive"]
    blob = path.read_bytes()
    md5 = _md5(blob)
    archive_rec = {"split": "all", "role": "archive", "path": str(path), "bytes": len(blob), "md5": md5,
                   "md5_name": cls.filename, "expected_md5": cls.tgz_md5, "md5_ok": md5 == cls.tgz_md5}
    if not archive_rec["md5_ok"] and not checksums.CONTENT_SHA256.get(spec.name):
        raise _md5_failure(spec, [archive_rec], source)
    raws = []
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            for n in needed:
                m = members.get(f"{cls.base_folder}/{n.base}")
                if m is None:
                    raise DatasetCorrupt(f"{path}: archive lacks {cls.base_folder}/{n.base}; "
                                     f"What to do: {_todo(source, path)}")
                raws.append((n, f"{path}!{m.name}", tar.extractfile(m).read()))
            m = members.get(f"{cls.base_folder}/{cls.meta['filename']}")
            meta_raw = tar.extractfile(m).read() if m is not None else None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetCorrupt(f"{path}: cannot be read as a .tar.gz archive ({type(e).__name__}: {e}); "
                             f"What to do: {_todo(source, path)}") from e
    return raws, meta_raw, archive_rec


def read_cifar(spec: RealSpec, found: Found, source: str):
    cls = tv_class(spec)
    raws, meta_raw, archive_rec = _cifar_raws(spec, found, source)
    arrays, records, split_verified = {}, [], {}
    for split in ("train", "test"):
        items = [(n, p, raw) for n, p, raw in raws if n.split == split]
        recs = [_record(n, p, raw) for n, p, raw in items]
        if archive_rec is not None and archive_rec["md5_ok"]:
            for r in recs:  # the archive's md5 covers its members; a mismatch here would be a torchvision bug
                if not r["md5_ok"]:
                    raise DatasetCorrupt(f"{r['path']}: md5 {r['md5']} differs from torchvision's "
                                         f"{r['expected_md5']} although the archive's md5 matched")
        pinned = checksums.CONTENT_SHA256.get(spec.name, {}).get(split)
        if pinned is None and not all(r["md5_ok"] for r in recs):
            raise _md5_failure(spec, [r for r in recs if not r["md5_ok"]], source)
        xs, ys = [], []
        for _, p, raw in items:
            with _advise(source, p):
                xb, yb = decode_cifar_batch(raw, p, spec.label_key)
            xs.append(xb)
            ys.append(yb)
        x, y = np.concatenate(xs), np.concatenate(ys)
        split_verified[split] = _verify_split(spec, split, x, y, recs, source)
        with _advise(source, found.folder):
            check_structure(spec, split, x, y, str(found.folder))
        arrays[split] = (x, y)
        records += recs
    classes = None
    if meta_raw is not None and _md5(meta_raw) == cls.meta["md5"]:
        try:
            m = _NumpyOnlyUnpickler(io.BytesIO(meta_raw), encoding="latin1").load()
            classes = [str(c) for c in m[cls.meta["key"]]]
        except Exception:  # noqa: BLE001 -- class names are optional extras
            classes = None
    if archive_rec is not None:
        records.insert(0, archive_rec)
    return arrays, records, split_verified, classes


def read(spec: RealSpec, found: Found, source: str):
    if spec.kind == "idx":
        arrays, records, split_verified, classes = read_idx(spec, found, source)
        classes = list(tv_class(spec).classes)
    else:
        arrays, records, split_verified, classes = read_cifar(spec, found, source)
    return arrays, records, split_verified, classes


# --------------------------------------------------------------------------------------------------------------------
# Download

def download_urls(spec: RealSpec) -> list[str]:
    cls = tv_class(spec)
    if spec.kind == "idx":
        return [f"{m}{fn}" for fn, _ in cls.resources for m in cls.mirrors]
    return [cls.url]


def download(spec: RealSpec, root, mirror=None) -> None:
    """Download with torchvision into a staging folder inside ``root``; move the files into ``root`` on success."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".download-{spec.name}-", dir=root))
    try:
        try:
            tv_class(spec)(root=str(staging), train=False, download=True)
        except Exception as e:  # noqa: BLE001 -- network errors come in many types
            raise DatasetUnavailable(unavailable_message(
                spec, root, mirror, True,
                extra=f"Download with torchvision.datasets.{spec.tv_class} failed: {type(e).__name__}: "
                      f"{str(e).strip()[:500]}.")) from e
        for dirpath, _, filenames in os.walk(staging):
            for fn in filenames:
                src = Path(dirpath) / fn
                dst = root / src.relative_to(staging)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
