"""Damaged intermediate files: a prepared dataset, an abstain features file, a training checkpoint.

Each gives one line naming the file, what is wrong and what to do, never a raw ``zipfile.BadZipFile``; a damaged
prepared dataset is moved aside and rebuilt, never used (in the same run when the workflow's quick check before the
DAG sees the damage, in the next run when only the full hash check in the job does).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from advrep import data
from advrep.data.prepared import damage as structure_damage, set_aside_damaged
from advrep.abstain import workflow as abstain_workflow
from advrep.abstain.features import FeaturesCorrupt, read_features, write_features
from advrep.train import CheckpointError, fit, load_checkpoint
from conftest import digits01, small_cnn, tamper_npz, tensor_loader
from test_workflow import _scratch_copy, smk

# damage -> what it does to the bytes of a file; "tamper" (valid zip, one array element changed) is done by tamper_npz
DAMAGE = {
    "truncated to half": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
    "overwritten with text": lambda b: b"<html>proxy error</html>\n" * 40,
    "a flipped byte": lambda b: b[: len(b) // 2] + bytes([b[len(b) // 2] ^ 0xFF]) + b[len(b) // 2 + 1:],
}


def damage(path: Path, how: str) -> None:
    if how == "tamper":
        with zipfile.ZipFile(path) as z:
            key = "x_train" if "x_train.npy" in z.namelist() else "test_feats"
        tamper_npz(path, key)  # a whole zip whose arrays no longer match the recorded hash
    else:
        path.write_bytes(DAMAGE[how](path.read_bytes()))


def one_line(err: BaseException) -> str:
    msg = str(err)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------------------ prepared datasets

@pytest.fixture
def prepared(tmp_path) -> tuple[Path, str]:
    meta = data.prepare("digits28", tmp_path / "digits28.npz", root=None)
    return tmp_path / "digits28.npz", meta["content_sha256"]


@pytest.mark.parametrize("how", [*DAMAGE, "tamper"])
def test_damaged_prepared_dataset_is_moved_aside_with_one_line(prepared, how):
    path, _ = prepared
    damage(path, how)
    with pytest.raises(data.DatasetCorrupt) as err:
        data.load(path)
    msg = one_line(err.value)
    assert msg.startswith(f"{path}: damaged prepared dataset: ")
    assert "moved it to digits28.npz.damaged" in msg and "rule prepare_dataset rebuilds it" in msg
    assert not path.exists() and path.with_name("digits28.npz.damaged").is_file()  # never read again


@pytest.mark.parametrize("how, seen", [("truncated to half", True), ("empty", True), ("overwritten with text", True),
                                       ("a flipped byte", False), ("tamper", False)])
def test_quick_check_before_the_dag(prepared, how, seen):
    """The workflow's check before the DAG reads only the zip directory: it sees a truncated or overwritten file
    (moved aside, so this run rebuilds it); damage inside an array is left to the full check in the job."""
    path, _ = prepared
    good = path.with_name("planes_codim1.npz")
    data.prepare("planes", good, root=None, codim=1)
    in_progress = path.with_name(".mnist.npz.tmp-x1y2.npz")  # an atomic write under way: not looked at
    in_progress.write_bytes(b"partial")
    damage(path, how)
    messages = set_aside_damaged(path.parent)
    assert structure_damage(good) == "" and good.is_file() and in_progress.is_file()
    if seen:
        assert len(messages) == 1 and "\n" not in messages[0]
        assert messages[0].startswith(f"{path}: damaged prepared dataset: ")
        assert "rule prepare_dataset rebuilds it in this run" in messages[0]
        assert not path.exists() and path.with_name("digits28.npz.damaged").is_file()
    else:
        assert messages == [] and path.exists()
        with pytest.raises(data.DatasetCorrupt, match="damaged prepared dataset"):
            data.load(path)
    assert set_aside_damaged(path.parent / "no such folder") == []


def test_workflow_rebuilds_a_truncated_prepared_dataset_before_the_dag(tmp_path):
    """`snakemake` on a truncated results/data file: it says so and plans the rebuild instead of using the file."""
    work = _scratch_copy(tmp_path)
    target = work / "results" / "data" / "digits28.npz"
    meta = data.prepare("digits28", target, root=None)
    os.truncate(target, target.stat().st_size // 2)  # what the issue describes
    r = smk("-n", "results/smoke/voronoi/seed0/figures45/mnist_madry.npz", cwd=work)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "results/data/digits28.npz: damaged prepared dataset: not a whole zip archive" in out
    assert "prepare_dataset" in out and "voronoi_f45_model" in out
    assert not target.exists() and target.with_name("digits28.npz.damaged").is_file()
    r = smk("--cores", "1", "results/data/digits28.npz", cwd=work)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert data.load(target).meta["content_sha256"] == meta["content_sha256"]  # rebuilt, the same data


# -------------------------------------------------------------------------------------------------- features

@pytest.mark.parametrize("how", [*DAMAGE, "tamper"])
def test_damaged_features_file_gives_one_line(tmp_path, how):
    rng = np.random.default_rng(0)
    path = tmp_path / "simclr.npz"
    write_features(path, rng.normal(size=(40, 8)), np.arange(40) % 4, rng.normal(size=(10, 8)), np.arange(10) % 4,
                   {"method": "simclr"})
    assert read_features(path)[0].shape == (40, 8)
    damage(path, how)
    with pytest.raises(FeaturesCorrupt) as err:
        abstain_workflow.attack_pass(path, tmp_path / "attack.npz", sigmas=[0.0], n3=1, seed=0)  # what the rule runs
    msg = one_line(err.value)
    assert msg.startswith(f"{path}: damaged features file: ")
    assert "delete it and rerun the same command: rule abstain_features rebuilds it" in msg
    assert not (tmp_path / "attack.npz").exists()


# ------------------------------------------------------------------------------------------------ checkpoints

@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_checkpoint_stops_the_resume_with_one_line_and_deleting_it_restarts(tmp_path, how):
    x, y = digits01()
    x, y = x[:128], y[:128]
    kw = dict(objective="ce", seed=0, checkpoint_dir=tmp_path, progress=False, optimizer="sgd")
    fit(small_cnn(), tensor_loader(x, y), epochs=1, **kw)
    last = tmp_path / "last.pt"
    damage(last, how)
    damaged_bytes = last.read_bytes()
    with pytest.raises(CheckpointError) as err:
        fit(small_cnn(), tensor_loader(x, y), epochs=2, **kw)
    msg = one_line(err.value)
    assert msg.startswith(f"cannot read checkpoint {last}: it is corrupt, truncated")
    assert f"Delete {last} and rerun the same command to restart this training from scratch" in msg
    assert last.read_bytes() == damaged_bytes  # not silently replaced: the user decides (or restores a copy)
    # the advice works: without the file, training starts again from epoch 0 and finishes
    last.unlink()
    result = fit(small_cnn(), tensor_loader(x, y), epochs=2, **kw)
    assert result.resumed_from is None and [r["epoch"] for r in result.history] == [0, 1]
    # a damaged final.pt (or snapshot), read on its own, says the same
    damage(tmp_path / "final.pt", how)
    with pytest.raises(CheckpointError, match=r"final\.pt: it is corrupt, truncated"):
        load_checkpoint(tmp_path / "final.pt")
    assert torch.load(last, weights_only=True)["epoch"] == 2
