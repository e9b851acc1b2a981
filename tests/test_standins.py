"""The smoke stand-ins built from Fashion-MNIST (fashion28, fashion32) and the one resolver of the symbolic names
standin28 / standin32 (advrep.data.standins; used by rules/common.smk).

Real data: Debian's ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist or ``ADVREP_FMNIST_MIRROR``); those
tests skip without it unless ``ADVREP_REQUIRE_REAL_DATA`` is set (CI), then they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from advrep.data import (DATASETS, DatasetCorrupt, availability, config_params, load, prepare, resolve_standin,
                         resolve_standins)
from advrep.data import standins
from advrep.data.registry import _obtain_real
from advrep.models.registry import DATASET_STATS
from test_data import write_fake_idx_mirror

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
FMNIST = Path(os.environ.get("ADVREP_FMNIST_MIRROR", "/usr/share/datasets/fashion-mnist"))
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="module")
def fmnist() -> Path:
    if not all((FMNIST / f).is_file() for f in FILES):
        if os.environ.get("ADVREP_REQUIRE_REAL_DATA"):
            pytest.fail(f"ADVREP_REQUIRE_REAL_DATA is set but Fashion-MNIST is not in {FMNIST}")
        pytest.skip(f"Fashion-MNIST not in {FMNIST} (apt-get install -y dataset-fashion-mnist)")
    return FMNIST


# ---------------------------------------------------------------------------------------------- subset, padding

def test_balanced_subset_is_seeded_balanced_and_without_repeats():
    y = np.repeat(np.arange(10), 30)[np.random.default_rng(1).permutation(300)]
    a = standins.balanced_subset(y, 47, 10, seed=0, split=0)
    assert len(a) == 47 and len(set(a.tolist())) == 47 and (np.diff(a) > 0).all()
    counts = np.bincount(y[a], minlength=10)
    assert counts.tolist() == [5] * 7 + [4] * 3  # the remainder goes to the first classes
    assert np.array_equal(a, standins.balanced_subset(y, 47, 10, seed=0, split=0))
    assert not np.array_equal(a, standins.balanced_subset(y, 47, 10, seed=1, split=0))
    assert not np.array_equal(a, standins.balanced_subset(y, 47, 10, seed=0, split=1))
    with pytest.raises(ValueError, match="needs 31 images of class 0"):
        standins.balanced_subset(y, 310, 10, seed=0, split=0)
    with pytest.raises(ValueError, match="integer >= 10"):
        standins.balanced_subset(y, 5, 10, seed=0, split=0)


def test_pad_repeat_centres_the_image_in_zeros_and_copies_the_grey_channel():
    x = np.random.default_rng(0).integers(1, 256, (3, 28, 28, 1)).astype(np.uint8)
    p = standins.pad_repeat(x)
    assert p.shape == (3, 32, 32, 3) and p.dtype == np.uint8
    assert np.array_equal(p[:, 2:30, 2:30, 0], x[..., 0])
    assert (p[:, :2].sum(), p[:, 30:].sum(), p[:, :, :2].sum(), p[:, :, 30:].sum()) == (0, 0, 0, 0)
    assert np.array_equal(p[..., 1], p[..., 0]) and np.array_equal(p[..., 2], p[..., 0])
    with pytest.raises(ValueError, match="cannot pad"):
        standins.pad_repeat(np.zeros((1, 33, 33, 1), np.uint8))


# --------------------------------------------------------------------------------------------------- resolver

def test_resolver_maps_symbolic_names_only_and_asks_once():
    asked = []

    def have(name):
        asked.append(name)
        return True

    cfg = {"a": {"dataset": "standin32", "n": 3}, "b": ["standin28", "digits32", "cifar10"],
           "c": {"d": {"cifar10": "standin32"}}, "e": "standin32x"}
    out = resolve_standins(cfg, have)
    assert out == {"a": {"dataset": "fashion32", "n": 3}, "b": ["fashion28", "digits32", "cifar10"],
                   "c": {"d": {"cifar10": "fashion32"}}, "e": "standin32x"}
    assert sorted(asked) == ["fashion28", "fashion32"]
    assert cfg["a"]["dataset"] == "standin32"  # a copy: the input is left as it was
    assert resolve_standins(cfg, lambda name: False)["b"][:2] == ["digits28", "digits32"]
    assert resolve_standin("mnist", have) == "mnist" and resolve_standin(7, have) == 7
    for symbolic, (preferred, fallback) in standins.SYMBOLIC.items():  # same image shape either way
        assert DATASETS[preferred].shape == DATASETS[fallback].shape
        assert DATASETS[preferred].standin_for == DATASETS[fallback].standin_for


def test_availability_follows_the_mirror(tmp_path):
    empty, mirror = tmp_path / "empty", write_fake_idx_mirror(tmp_path / "m" / "fashion-mnist").parent
    empty.mkdir()
    for name in ("fashion28", "fashion32"):
        ok, why = availability(name, root=tmp_path / "root", mirror=empty)
        assert not ok and "fashion_mnist" in why and "data.mirror" in why
        assert availability(name, root=tmp_path / "root", mirror=mirror)[0]
        assert availability(name, root=tmp_path / "root", mirror=None, download=True)[0]
    have = lambda m: (lambda n: availability(n, root=tmp_path / "root", mirror=m)[0])  # noqa: E731
    assert resolve_standins({"x": "standin32"}, have(mirror)) == {"x": "fashion32"}
    assert resolve_standins({"x": "standin32"}, have(empty)) == {"x": "digits32"}


def test_a_mirror_that_fails_verification_builds_no_standin(tmp_path):
    mirror = write_fake_idx_mirror(tmp_path / "m" / "fashion-mnist")  # well formed, but not Fashion-MNIST's content
    with pytest.raises(DatasetCorrupt):
        prepare("fashion32", tmp_path / "f.npz", root=tmp_path / "root", mirror=mirror)
    assert not (tmp_path / "f.npz").exists()


def test_config_params_are_the_standins_block_for_derived_datasets_only():
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["data"]
    assert config_params("fashion32", cfg) == cfg["standins"] == {"n_train": 2000, "n_test": 500, "seed": 0}
    assert config_params("fashion28", {"standins": {"n_train": 30}}) == {"n_train": 30, "n_test": 500, "seed": 0}
    assert config_params("digits32", cfg) == {} and config_params("planes_codim10", cfg) == {}


def test_smoke_overlays_name_only_symbolic_standins():
    """Nothing branches per paper: every smoke overlay names standin28/standin32, never a concrete stand-in."""
    text = (ROOT / "config" / "config.yaml").read_text()
    body = "\n".join(line.split("#")[0] for line in text.splitlines())
    for concrete in ("digits28", "digits32", "fashion28", "fashion32"):
        assert concrete not in body, concrete
    assert "standin32" in body and "standin28" in body


# ------------------------------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def built(fmnist, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("standins")
    out = {}
    for name in ("fashion28", "fashion32"):
        meta = prepare(name, tmp / f"{name}.npz", root=None, mirror=fmnist.parent, n_train=200, n_test=50, seed=3)
        out[name] = (meta, load(tmp / f"{name}.npz"))
    return out


def test_standins_from_the_real_copy_have_their_shape_balance_and_provenance(built):
    for name, shape in (("fashion28", (28, 28, 1)), ("fashion32", (32, 32, 3))):
        meta, p = built[name]
        assert p.x_train.shape == (200, *shape) and p.x_test.shape == (50, *shape) and p.x_train.dtype == np.uint8
        assert np.bincount(p.y_train, minlength=10).tolist() == [20] * 10
        assert np.bincount(p.y_test, minlength=10).tolist() == [5] * 10
        assert meta["name"] == name and meta["standin_for"] == DATASETS[name].standin_for
        assert meta["source"] == "mirror" and meta["derived_from"]["name"] == "fashion_mnist"
        assert meta["verified_by"] in ("archive md5 (torchvision)", "content sha256 (pinned)")
        assert meta["params"] == {"n_train": 200, "n_test": 50, "seed": 3}
    (_, p28), (_, p32) = built["fashion28"], built["fashion32"]
    assert np.array_equal(p32.x_train[:, 2:30, 2:30, :1], p28.x_train)  # the same images, padded
    assert np.array_equal(p32.y_test, p28.y_test)


def test_standin_images_are_fashion_mnist_images_and_the_subset_is_reproducible(built, fmnist, tmp_path):
    (x_tr, y_tr), (x_te, y_te), _ = _obtain_real("fashion_mnist", None, fmnist.parent, False)
    full = {(row.tobytes(), int(lab)) for row, lab in zip(x_te, y_te)}
    meta28, p28 = built["fashion28"]
    assert all((row.tobytes(), int(lab)) in full for row, lab in zip(p28.x_test, p28.y_test))
    again = prepare("fashion28", tmp_path / "a.npz", root=None, mirror=fmnist.parent, n_train=200, n_test=50, seed=3)
    other = prepare("fashion28", tmp_path / "b.npz", root=None, mirror=fmnist.parent, n_train=200, n_test=50, seed=4)
    assert again["content_sha256"] == meta28["content_sha256"] != other["content_sha256"]
    # DATASET_STATS of the stand-ins: the whole training split as each stand-in shows it
    for name, x in (("fashion28", x_tr), ("fashion32", standins.pad_repeat(x_tr))):
        f = x[..., 0].astype(np.float64) / 255
        mean, std = DATASET_STATS[name]
        assert len(mean) == DATASETS[name].shape[2]
        assert mean[0] == pytest.approx(f.mean(), abs=1e-4) and std[0] == pytest.approx(f.std(), abs=1e-4)


# ------------------------------------------------------------------------------------------------ the DAG

def _dag_datasets(*extra) -> set[str]:
    """The stand-in files the whole smoke DAG reads (a dry run: nothing is built)."""
    r = subprocess.run([SNAKEMAKE, "-n", "--forceall", *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    return {n for n in ("digits28", "digits32", "fashion28", "fashion32") if f"results/data/{n}.npz" in out}


@pytest.mark.slow
def test_the_dag_reads_fashion_standins_with_the_mirror_and_digits_without(fmnist, tmp_path):
    mirror = json.dumps(str(fmnist.parent))
    assert _dag_datasets("--config", f'data={{"mirror": {mirror}}}') == {"fashion28", "fashion32"}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _dag_datasets("--config", f'data={{"mirror": {json.dumps(str(empty))}, "root": '
                         f'{json.dumps(str(tmp_path / "root"))}}}') == {"digits28", "digits32"}
