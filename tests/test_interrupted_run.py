"""A killed workflow (SIGKILL to snakemake and its jobs during a training job) recovers as the README says:
the next `snakemake` stops with "Directory cannot be locked"; `snakemake --unlock`, then the same command, keeps
the finished jobs, resumes the training from its last epoch checkpoint and gives the results of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from test_workflow import SNAKEMAKE, _scratch_copy, smk

# one voronoi Figure 4/5 model: digits28 prepared, then Madry AT for 3 epochs (about 1 s each at smoke scale), then
# its robust-accuracy curve
TARGET = "results/smoke/voronoi/seed0/figures45/mnist_madry.npz"
CHECKPOINTS = "results/smoke/voronoi/seed0/checkpoints/mnist_madry"  # <settings hash>/last.pt, final.pt
LOG = "results/smoke/logs/voronoi/seed0/figures45/mnist_madry.log"
ARGS = ("--cores", "1", TARGET)
TIMING = ("seconds_train", "seconds_eval")  # wall-clock, differ between any two runs
HISTORY_TIMING = ("time_s", "images_per_s")


def checkpoint(work: Path, name: str) -> Path | None:
    found = sorted((work / CHECKPOINTS).glob(f"*/{name}"))
    assert len(found) <= 1, found
    return found[0] if found else None


def kill_during_training(work: Path, timeout: float = 120.0) -> int:
    """Start the workflow in its own session, wait for the training job's first epoch checkpoint, then SIGKILL the
    whole process group (snakemake and the job): a power cut or `kill -9`.  Returns the epochs the checkpoint had."""
    proc = subprocess.Popen([SNAKEMAKE, *ARGS], cwd=work, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while checkpoint(work, "last.pt") is None:
            assert proc.poll() is None, f"the workflow ended (rc {proc.returncode}) before its first checkpoint"
            assert time.monotonic() < deadline, "no epoch checkpoint within the time limit"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    return int(torch.load(checkpoint(work, "last.pt"), weights_only=True)["epoch"])


def outputs(work: Path) -> tuple[dict, dict]:
    """The target's arrays (history without its timings) and the trained weights (final.pt)."""
    with np.load(work / TARGET, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k not in TIMING}
    arrays["history"] = [{k: v for k, v in r.items() if k not in HISTORY_TIMING}
                         for r in json.loads(str(arrays["history"][()]))]
    weights = torch.load(checkpoint(work, "final.pt"), weights_only=True)["model"]
    return arrays, weights


@pytest.mark.slow
def test_killed_run_unlocks_resumes_and_matches_an_uninterrupted_run(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ref, work = _scratch_copy(tmp_path / "a"), _scratch_copy(tmp_path / "b")
    r = smk(*ARGS, cwd=ref)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]

    done = kill_during_training(work)
    assert 1 <= done < 3, f"killed after {done} of 3 epochs: not during the training"
    assert not (work / TARGET).exists() and checkpoint(work, "final.pt") is None
    prepared = work / "results/data/digits28.npz"
    prepared_mtime = prepared.stat().st_mtime_ns

    locked = smk(*ARGS, cwd=work)
    assert locked.returncode != 0
    assert "Directory cannot be locked" in locked.stdout + locked.stderr
    assert "--unlock" in locked.stdout + locked.stderr

    unlock = smk("--unlock", *ARGS[2:], cwd=work)
    assert unlock.returncode == 0, (unlock.stdout + unlock.stderr)[-3000:]
    again = smk(*ARGS, cwd=work)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    # the finished job is kept, the training resumes from its checkpoint
    assert "voronoi_f45_model" in out and "prepare_dataset" not in out
    assert prepared.stat().st_mtime_ns == prepared_mtime
    last = checkpoint(work, "last.pt").relative_to(work)
    assert f"resuming from {last}: {done} of 3 epochs done" in (work / LOG).read_text()

    (got, got_w), (want, want_w) = outputs(work), outputs(ref)
    assert sorted(got) == sorted(want)
    for k in want:
        if isinstance(want[k], np.ndarray):
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        else:
            assert got[k] == want[k], k
    assert got["curve_final"].any()  # a curve that is not all zeros: the comparison can see a difference
    assert sorted(got_w) == sorted(want_w)
    for k in want_w:
        assert torch.equal(got_w[k], want_w[k]), k
