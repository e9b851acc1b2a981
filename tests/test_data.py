"""Tests of advrep.data: bundled/synthetic datasets, the real-data mirror path (with Debian's Fashion-MNIST copy),
verification failures and atomic output.

Real data: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (``apt-get install -y dataset-fashion-mnist``,
files in /usr/share/datasets/fashion-mnist, or ``ADVREP_FMNIST_MIRROR``).  Those tests are skipped when the files are
absent, unless ``ADVREP_REQUIRE_REAL_DATA`` is set (CI), in which case they fail.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from advrep.data import (DATASETS, DatasetCorrupt, DatasetUnavailable, availability, content_sha256, load,
                         prepare)
from advrep.data import checksums, real
from advrep.data.prepared import arrays_sha256
from conftest import tamper_npz

FMNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                "t10k-labels-idx1-ubyte.gz")


# ------------------------------------------------------------------------------------------------------- helpers

def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    return struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_fake_idx_mirror(folder: Path, n_train=20, n_test=10, gz=True, seed=0) -> Path:
    """Tiny but well-formed (Fashion-)MNIST-format files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        files = {f"{prefix}-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (n, 28, 28))),
                 f"{prefix}-labels-idx1-ubyte": idx_bytes(np.arange(n) % 10)}
        for name, data in files.items():
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


def dir_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------------------------------ registry

def test_registry_names():
    assert set(DATASETS) == {"mnist", "fashion_mnist", "cifar10", "cifar100", "digits28", "digits32", "fashion28",
                             "fashion32", "planes"}


def test_unknown_dataset_and_params(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        prepare("svhn", tmp_path / "x.npz", root=tmp_path)
    with pytest.raises(TypeError, match="needs parameter"):
        prepare("planes", tmp_path / "x.npz", root=tmp_path)
    with pytest.raises(TypeError, match="no parameter"):
        prepare("digits28", tmp_path / "x.npz", root=tmp_path, codim=3)
    assert not (tmp_path / "x.npz").exists()


def test_content_sha256_depends_on_dtype_shape_and_order():
    a = np.arange(12, dtype=np.uint8)
    b = np.arange(3, dtype=np.int64)
    base = content_sha256(a, b, a, b)
    assert base == content_sha256(a.copy(), b.copy(), a.copy(), b.copy())
    assert base != content_sha256(a.reshape(3, 4), b, a, b)           # same bytes, other shape
    assert base != content_sha256(a.view(np.int8), b, a, b)           # same bytes, other dtype
    assert base != content_sha256(a, b, a[::-1].copy(), b)            # other content
    assert base != content_sha256(a, b.astype(np.int32), a, b)
    # layout-independent
    m = np.arange(20, dtype=np.uint8).reshape(4, 5)
    assert arrays_sha256(m) == arrays_sha256(np.asfortranarray(m))


# -------------------------------------------------------------------------------------------------------- digits

@pytest.mark.parametrize("name,hw,c", [("digits28", 28, 1), ("digits32", 32, 3)])
def test_digits(tmp_path, name, hw, c):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    meta = prepare(name, tmp_path / "a.npz", root=tmp_path / "root")
    d = load(tmp_path / "a.npz")
    assert d.meta == meta
    assert d.x_train.shape == (1347, hw, hw, c) and d.x_test.shape == (450, hw, hw, c)
    assert d.x_train.dtype == np.uint8 and d.y_train.dtype == np.int64 and d.y_test.dtype == np.int64
    x_all = np.concatenate([d.x_train, d.x_test])
    assert x_all.min() == 0 and x_all.max() == 255
    assert meta["shape"] == [hw, hw, c] and meta["n_train"] == 1347 and meta["n_test"] == 450
    assert meta["source"] == "bundled" and meta["verified_by"] == "bundled (scikit-learn)"
    assert meta["standin_for"] == ("mnist-like 28x28x1" if c == 1 else "cifar-like 32x32x3")
    assert meta["n_classes"] == 10
    assert meta["content_sha256"] == content_sha256(d.x_train, d.y_train, d.x_test, d.y_test)
    assert not (tmp_path / "root").exists()  # bundled data writes nothing to the cache
    if c == 3:
        assert np.array_equal(d.x_train[..., 0], d.x_train[..., 1])
        assert np.array_equal(d.x_train[..., 0], d.x_train[..., 2])

    # determinism
    meta2 = prepare(name, tmp_path / "b.npz", root=tmp_path / "root")
    assert meta2["content_sha256"] == meta["content_sha256"]

    # labels belong to their images, and the scaling 0..16 -> 0..255 is as documented: with bilinear upsampling and
    # align_corners=False the corner pixels equal the source corner pixels.
    src = load_digits()
    i_train, i_test = train_test_split(np.arange(len(src.target)), test_size=0.25, random_state=0,
                                       stratify=src.target)
    assert np.array_equal(d.y_train, src.target[i_train]) and np.array_equal(d.y_test, src.target[i_test])
    for ix, xs in ((i_train, d.x_train), (i_test, d.x_test)):
        for (r, q), (rr, qq) in (((0, 0), (0, 0)), ((-1, -1), (7, 7)), ((0, -1), (0, 7))):
            want = np.rint(src.images[ix, rr, qq] * 255 / 16).astype(np.uint8)
            assert np.array_equal(xs[:, r, q, 0], want)

    # stratified: each class's test share is 25% of that class, up to rounding
    total = np.bincount(src.target, minlength=10)
    test_counts = np.bincount(d.y_test, minlength=10)
    assert np.all(np.abs(test_counts - 0.25 * total) <= 1.0)
    assert np.array_equal(test_counts + np.bincount(d.y_train, minlength=10), total)


# -------------------------------------------------------------------------------------------------------- planes

@pytest.mark.parametrize("codim", [10, 500])
def test_planes(tmp_path, codim):
    meta = prepare("planes", tmp_path / "p.npz", root=None, codim=codim)
    d = load(tmp_path / "p.npz")
    dim = codim + 2  # "The codimension of this dataset is d - 2"
    side = math.sqrt(2)
    assert meta["shape"] == [dim] and meta["source"] == "generated" and meta["verified_by"] == "generated"
    assert meta["params"]["codim"] == codim and meta["n_classes"] == 2 and meta["standin_for"] is None
    assert d.x_train.dtype == np.float32 and d.x_train.shape == (450, dim)   # 2 planes x 15 x 15 vertices
    assert d.x_test.shape == (392, dim)                                    # 2 planes x 14 x 14 cell centres
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        assert set(np.unique(y)) == {0, 1} and np.sum(y == 0) == np.sum(y == 1)
        assert np.all(x[y == 0, -1] == 0.0) and np.all(x[y == 1, -1] == 2.0)     # x_d = 0 vs x_d = 2
        assert np.all(x[:, 2:-1] == 0.0)                                         # x_3 = ... = x_{d-1} = 0
        assert np.all(np.abs(x[:, :2]) <= 10.0)                                  # -10 <= x1, x2 <= 10
    # train on the grid of side sqrt(2), every vertex once per class
    k_train = (d.x_train[:, :2].astype(np.float64) + 10) / side
    assert np.allclose(k_train, np.rint(k_train), atol=1e-5)
    for cls in (0, 1):
        ks = {tuple(v) for v in np.rint(k_train[d.y_train == cls]).astype(int)}
        assert ks == {(i, j) for i in range(15) for j in range(15)}
    # test at the cell centres
    k_test = (d.x_test[:, :2].astype(np.float64) + 10) / side - 0.5
    assert np.allclose(k_test, np.rint(k_test), atol=1e-5)
    for cls in (0, 1):
        ks = {tuple(v) for v in np.rint(k_test[d.y_test == cls]).astype(int)}
        assert ks == {(i, j) for i in range(14) for j in range(14)}
    # the paper's reason for the sampling: every test point is at distance 1 from its nearest same-class train point,
    # and at distance > 2 from the other class
    tr = d.x_train[:, :2].astype(np.float64)
    dists = np.sqrt(((d.x_test[:, None, :2] - tr[None]) ** 2).sum(-1)
                    + (d.x_test[:, None, -1] - d.x_train[None, :, -1]) ** 2)
    same = d.y_test[:, None] == d.y_train[None]
    assert np.allclose(np.where(same, dists, np.inf).min(1), 1.0, atol=1e-5)
    assert np.where(same, np.inf, dists).min() > 2.0
    # deterministic
    assert prepare("planes", tmp_path / "q.npz", root=None, codim=codim)["content_sha256"] == meta["content_sha256"]


def test_planes_rejects_bad_codim(tmp_path):
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="codim"):
            prepare("planes", tmp_path / "p.npz", root=None, codim=bad)
    assert dir_entries(tmp_path) == []


# ------------------------------------------------------------------------------------------------- prepared file

def test_load_detects_tampering(tmp_path):
    prepare("planes", tmp_path / "p.npz", root=None, codim=1)
    tamper_npz(tmp_path / "p.npz", "x_train")
    with pytest.raises(DatasetCorrupt, match=r"p\.npz: damaged prepared dataset: its arrays hash .* moved it to "
                                             r"p\.npz\.damaged; rerun .* rule prepare_dataset rebuilds it"):
        load(tmp_path / "p.npz")
    assert dir_entries(tmp_path) == ["p.npz.damaged"]  # never used again: the next run rebuilds p.npz
    assert load(tmp_path / "p.npz.damaged", verify=False).x_train.shape == (450, 3)
    # without moving it, the message says to delete it
    with pytest.raises(DatasetCorrupt, match=r"p\.npz\.damaged: .*delete it and rerun"):
        load(tmp_path / "p.npz.damaged", move_damaged=False)
    assert dir_entries(tmp_path) == ["p.npz.damaged"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import advrep.data.prepared as prepared_mod

    def exploding_savez(fh, **arrays):
        fh.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(prepared_mod.np, "savez", exploding_savez)
    out = tmp_path / "out" / "digits28.npz"
    with pytest.raises(OSError, match="disk full"):
        prepare("digits28", out, root=tmp_path)
    assert not out.exists()
    assert dir_entries(out.parent) == []  # no temporary file left beside it either


# --------------------------------------------------------------------------------------------------- unavailable

def test_missing_dataset_unavailable(tmp_path):
    out = tmp_path / "mnist.npz"
    ok, reason = availability("mnist", root=tmp_path / "root", mirror=None, download=False)
    assert ok is False
    for needle in ("data.mirror", "data.download", "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert needle in reason
    with pytest.raises(DatasetUnavailable) as ei:
        prepare("mnist", out, root=tmp_path / "root", mirror=tmp_path / "nowhere", download=False)
    msg = str(ei.value)
    assert "data.mirror" in msg and "data.download" in msg and "internet" in msg and "nowhere" in msg
    assert not out.exists()
    assert availability("mnist", root=tmp_path / "root", download=True)[0] is True
    for name in ("digits28", "digits32", "planes"):
        assert availability(name, root=tmp_path / "root")[0] is True


def test_incomplete_mirror_names_missing_file(tmp_path):
    m = write_fake_idx_mirror(tmp_path / "mirror" / "mnist")
    (m / "t10k-labels-idx1-ubyte.gz").unlink()
    ok, reason = availability("mnist", root=tmp_path / "root", mirror=tmp_path / "mirror")
    assert not ok and "lacks t10k-labels-idx1-ubyte" in reason


@pytest.mark.parametrize("name,attr", [("fashion_mnist", "mirrors"), ("cifar10", "url")])
def test_failed_download_is_unavailable_and_leaves_nothing(tmp_path, monkeypatch, name, attr):
    """Point torchvision's downloader at a closed local port: the download fails like it does offline."""
    cls = real.tv_class(real.REAL[name])
    monkeypatch.setattr(cls, attr, ["http://127.0.0.1:9/"] if attr == "mirrors" else "http://127.0.0.1:9/x.tar.gz")
    root = tmp_path / "root"
    with pytest.raises(DatasetUnavailable) as ei:
        prepare(name, tmp_path / "out.npz", root=root, download=True)
    msg = str(ei.value)
    assert "download" in msg.lower() and "data.mirror" in msg
    assert not (tmp_path / "out.npz").exists()
    assert dir_entries(root) == []  # the staging folder is gone, nothing looks like a cache


# --------------------------------------------------------------------------------------------- synthetic mirrors

@pytest.mark.parametrize("mirror_name, layout", [("mirror", "MNIST/raw"), ("mirror", "mnist"), ("mnist", ""),
                                                  ("MNIST", "raw")])
def test_fake_mnist_mirror_md5_mismatch(tmp_path, mirror_name, layout):
    mirror = tmp_path / mirror_name
    write_fake_idx_mirror(mirror / layout if layout else mirror)
    ok, reason = availability("mnist", root=tmp_path / "root", mirror=mirror)
    assert ok, reason
    out = tmp_path / "out" / "mnist.npz"
    with pytest.raises(DatasetCorrupt) as ei:
        prepare("mnist", out, root=tmp_path / "root", mirror=mirror)
    msg = str(ei.value)
    assert "md5" in msg and "no content hash is pinned" in msg and "train-images-idx3-ubyte.gz" in msg
    assert "fix the mirror" in msg and "decodes to [20, 28, 28]" in msg
    assert not out.exists() and dir_entries(out.parent) == []


@pytest.mark.parametrize("layout", ["", "raw"])
def test_idx_files_in_an_unnamed_folder_are_not_taken_for_either_dataset(tmp_path, layout):
    """MNIST and Fashion-MNIST share file names: a flat folder must be named after its dataset."""
    mirror = tmp_path / "mirror"
    write_fake_idx_mirror(mirror / layout if layout else mirror)
    for name in ("mnist", "fashion_mnist"):
        ok, reason = availability(name, root=tmp_path / "root", mirror=mirror)
        assert not ok and "data.mirror" in reason


def test_fashion_mnist_folder_is_not_mnist(tmp_path):
    write_fake_idx_mirror(tmp_path / "fashion-mnist")
    assert not availability("mnist", root=tmp_path / "root", mirror=tmp_path / "fashion-mnist")[0]
    assert availability("fashion_mnist", root=tmp_path / "root", mirror=tmp_path / "fashion-mnist")[0]
    assert availability("fashion_mnist", root=tmp_path / "root", mirror=tmp_path)[0]


def test_fake_mnist_uncompressed_cannot_be_verified(tmp_path):
    mirror = write_fake_idx_mirror(tmp_path / "mnist", gz=False)
    assert availability("mnist", root=tmp_path / "root", mirror=mirror)[0]
    with pytest.raises(DatasetCorrupt, match="md5"):
        prepare("mnist", tmp_path / "m.npz", root=tmp_path / "root", mirror=mirror)
    assert not (tmp_path / "m.npz").exists()


def test_cache_is_searched_before_mirror_and_named(tmp_path):
    write_fake_idx_mirror(tmp_path / "root" / "MNIST" / "raw")
    with pytest.raises(DatasetCorrupt) as ei:
        prepare("mnist", tmp_path / "m.npz", root=tmp_path / "root", mirror=tmp_path / "elsewhere")
    assert "delete" in str(ei.value) and str(tmp_path / "root" / "MNIST" / "raw") in str(ei.value)


@pytest.mark.parametrize("variant,needle", [
    ("bad_gzip", "gzip decoding failed"),
    ("not_gzip", "not gzip data"),
    ("wrong_magic", "wrong idx magic"),
    ("short_idx", "truncated"),
])
def test_fake_fashion_mirror_decode_errors(tmp_path, variant, needle):
    """Fashion-MNIST has pinned content hashes, so md5-mismatching files are decoded: decoding errors are reported."""
    mirror = write_fake_idx_mirror(tmp_path / "mirror" / "fashion-mnist")
    target = mirror / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(target.read_bytes())
    if variant == "bad_gzip":
        target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    elif variant == "not_gzip":
        target.write_bytes(raw)
    elif variant == "wrong_magic":
        target.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + raw[4:]))
    else:
        target.write_bytes(gzip.compress(raw[:-100]))
    out = tmp_path / "out" / "f.npz"
    with pytest.raises(DatasetCorrupt) as ei:
        prepare("fashion_mnist", out, root=tmp_path / "root", mirror=tmp_path / "mirror")
    assert needle in str(ei.value) and "train-images-idx3-ubyte.gz" in str(ei.value)
    assert "What to do" in str(ei.value)
    assert not out.exists() and dir_entries(out.parent) == []


def test_fake_fashion_mirror_content_mismatch(tmp_path):
    mirror = write_fake_idx_mirror(tmp_path / "fashion_mnist")
    with pytest.raises(DatasetCorrupt, match="content sha256"):
        prepare("fashion_mnist", tmp_path / "f.npz", root=tmp_path / "root", mirror=mirror)
    assert not (tmp_path / "f.npz").exists()


def test_structure_checks():
    spec = real.REAL["cifar10"]
    x = np.zeros((10000, 32, 32, 3), np.uint8)
    real.check_structure(spec, "test", x, np.repeat(np.arange(10), 1000), "here")
    with pytest.raises(DatasetCorrupt, match="balance"):
        real.check_structure(spec, "test", x, np.repeat(np.arange(10), 1000)[::-1].copy() % 9, "here")
    with pytest.raises(DatasetCorrupt, match="expected uint8"):
        real.check_structure(spec, "train", x, np.repeat(np.arange(10), 1000), "here")
    with pytest.raises(DatasetCorrupt, match="labels range"):
        real.check_structure(spec, "test", x, np.repeat(np.arange(10), 1000) + 1, "here")


def _cifar_batch_bytes(n, seed=0, label_key="labels", protocol=2):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    entry = {"batch_label": "fake", label_key: list(range(n)), "data": data,
             "filenames": [f"{i}.png" for i in range(n)]}
    return pickle.dumps(entry, protocol=protocol), data


def test_cifar_batch_decoding_and_restricted_unpickler():
    raw, data = _cifar_batch_bytes(4)
    # python-2 era pickles name numpy.core.multiarray; accept that too
    raw_py2_names = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert raw_py2_names != raw
    for r in (raw, raw_py2_names):
        x, y = real.decode_cifar_batch(r, "batch", "labels")
        assert x.shape == (4, 32, 32, 3) and y.dtype == np.int64 and y.tolist() == [0, 1, 2, 3]
        # row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32
        assert x[1, 2, 3, 0] == data[1, 0 * 1024 + 2 * 32 + 3]
        assert x[1, 2, 3, 2] == data[1, 2 * 1024 + 2 * 32 + 3]

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    with pytest.raises(DatasetCorrupt, match="refusing to load global"):
        real.decode_cifar_batch(pickle.dumps(Evil()), "evil", "labels")
    with pytest.raises(DatasetCorrupt, match="cannot be unpickled"):
        real.decode_cifar_batch(raw[: len(raw) // 2], "half", "labels")


@pytest.mark.parametrize("layout", ["extracted", "flat", "archive"])
def test_fake_cifar_mirror_md5_mismatch(tmp_path, layout):
    cls = real.tv_class(real.REAL["cifar10"])
    names = [n for n, _ in cls.train_list] + [n for n, _ in cls.test_list]
    mirror = tmp_path / "mirror"
    if layout == "archive":
        (mirror / "cifar10").mkdir(parents=True)
        with tarfile.open(mirror / "cifar10" / cls.filename, "w:gz") as tar:
            for n in names:
                raw, _ = _cifar_batch_bytes(2)
                info = tarfile.TarInfo(f"{cls.base_folder}/{n}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    else:
        folder = mirror / cls.base_folder if layout == "extracted" else mirror
        folder.mkdir(parents=True)
        for n in names:
            (folder / n).write_bytes(_cifar_batch_bytes(2)[0])
    ok, reason = availability("cifar10", root=tmp_path / "root", mirror=mirror)
    assert ok, reason
    with pytest.raises(DatasetCorrupt) as ei:
        prepare("cifar10", tmp_path / "c.npz", root=tmp_path / "root", mirror=mirror)
    assert "md5" in str(ei.value) and "no content hash is pinned" in str(ei.value)
    assert (cls.filename if layout == "archive" else "data_batch_1") in str(ei.value)
    assert not (tmp_path / "c.npz").exists()
    # a CIFAR-10 mirror is not a CIFAR-100 one
    assert availability("cifar100", root=tmp_path / "root", mirror=mirror)[0] is False


# ----------------------------------------------------------------------------------------------------- real data

def _fmnist_dir() -> Path:
    d = Path(os.environ.get("ADVREP_FMNIST_MIRROR", "/usr/share/datasets/fashion-mnist"))
    if not all((d / f).is_file() for f in FMNIST_FILES):
        if os.environ.get("ADVREP_REQUIRE_REAL_DATA"):
            pytest.fail(f"ADVREP_REQUIRE_REAL_DATA is set but the Fashion-MNIST files {FMNIST_FILES} are not in {d} "
                        f"(apt-get install -y dataset-fashion-mnist, or set ADVREP_FMNIST_MIRROR)")
        pytest.skip(f"Fashion-MNIST files not in {d} (apt-get install -y dataset-fashion-mnist)")
    return d


@pytest.fixture(scope="module")
def fmnist_dir() -> Path:
    return _fmnist_dir()


@pytest.fixture(scope="module")
def fmnist_prepared(fmnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fm") / "fashion_mnist.npz"
    meta = prepare("fashion_mnist", out, root=tmp_path_factory.mktemp("root"), mirror=fmnist_dir)
    return meta, out


def _mirror_with_links(fmnist_dir: Path, folder: Path, skip=()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in FMNIST_FILES:
        if f not in skip:
            (folder / f).symlink_to(fmnist_dir / f)
    return folder


def test_fmnist_debian_copy(fmnist_prepared):
    meta, out = fmnist_prepared
    d = load(out)
    assert d.x_train.shape == (60000, 28, 28, 1) and d.x_test.shape == (10000, 28, 28, 1)
    assert d.x_train.dtype == np.uint8 and d.y_train.dtype == np.int64
    assert np.array_equal(np.bincount(d.y_train), [6000] * 10) and np.array_equal(np.bincount(d.y_test), [1000] * 10)
    assert meta["source"] == "mirror" and meta["standin_for"] is None and meta["shape"] == [28, 28, 1]
    # Debian's bytes differ from torchvision's md5s; the content matches the pinned hashes
    assert all(not f["md5_ok"] for f in meta["files"]) and len(meta["files"]) == 4
    assert meta["verified_by"] == "content sha256 (pinned)"
    assert meta["split_sha256"] == checksums.CONTENT_SHA256["fashion_mnist"]
    assert meta["content_sha256"] == checksums.PREPARED_SHA256["fashion_mnist"]
    assert content_sha256(d.x_train, d.y_train, d.x_test, d.y_test) == checksums.PREPARED_SHA256["fashion_mnist"]
    assert meta["classes"][0] == "T-shirt/top"
    assert json.loads(json.dumps(meta)) == d.meta


@pytest.mark.parametrize("layout", ["FashionMNIST/raw", "fashion_mnist", "Fashion-MNIST", ""])
def test_fmnist_mirror_layouts(fmnist_dir, tmp_path, layout):
    _mirror_with_links(fmnist_dir, tmp_path / "m" / layout if layout else tmp_path / "m" / "fashion-mnist")
    write_fake_idx_mirror(tmp_path / "m" / "mnist")  # a neighbouring dataset with the same file names
    ok, reason = availability("fashion_mnist", root=tmp_path / "root", mirror=tmp_path / "m")
    assert ok and (layout or "fashion-mnist") in reason


def test_fmnist_recompressed_and_uncompressed_accepted(fmnist_dir, tmp_path):
    m = _mirror_with_links(fmnist_dir, tmp_path / "fashion-mnist", skip=("t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"))
    raw = gzip.decompress((fmnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (m / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))
    (m / "t10k-images-idx3-ubyte").write_bytes(gzip.decompress((fmnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes()))
    meta = prepare("fashion_mnist", tmp_path / "f.npz", root=tmp_path / "root", mirror=m)
    assert meta["content_sha256"] == checksums.PREPARED_SHA256["fashion_mnist"]
    assert meta["split_verified_by"]["test"] == "content sha256 (pinned)"
    assert any(f["path"].endswith("t10k-images-idx3-ubyte") for f in meta["files"])


def test_fmnist_truncated_file(fmnist_dir, tmp_path):
    m = _mirror_with_links(fmnist_dir, tmp_path / "fashion-mnist", skip=("t10k-images-idx3-ubyte.gz",))
    data = (fmnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes()
    (m / "t10k-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out" / "f.npz"
    with pytest.raises(DatasetCorrupt) as ei:
        prepare("fashion_mnist", out, root=tmp_path / "root", mirror=m)
    msg = str(ei.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and "gzip" in msg and "fix the mirror" in msg
    assert not out.exists() and dir_entries(out.parent) == []


def test_fmnist_flipped_byte(fmnist_dir, tmp_path):
    m = _mirror_with_links(fmnist_dir, tmp_path / "fashion-mnist", skip=("t10k-images-idx3-ubyte.gz",))
    raw = bytearray(gzip.decompress((fmnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes()))
    raw[16 + 5 * 784 + 400] ^= 0x01  # one pixel of the 6th test image; the file stays well-formed
    (m / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    out = tmp_path / "out" / "f.npz"
    with pytest.raises(DatasetCorrupt) as ei:
        prepare("fashion_mnist", out, root=tmp_path / "root", mirror=m)
    msg = str(ei.value)
    assert "content sha256" in msg and checksums.CONTENT_SHA256["fashion_mnist"]["test"] in msg
    assert "t10k-images-idx3-ubyte.gz" in msg
    assert not out.exists() and dir_entries(out.parent) == []


def test_prepared_file_names_parse_to_parameters():
    import re

    from advrep.data import file_name_pattern, parse_name

    assert parse_name("planes_codim500") == ("planes", {"codim": 500})
    assert parse_name("cifar10") == ("cifar10", {})
    with pytest.raises(ValueError):
        parse_name("planes_codimx")
    pat = re.compile(file_name_pattern())
    assert pat.fullmatch("planes_codim10") and pat.fullmatch("fashion_mnist") and not pat.fullmatch("planes")
