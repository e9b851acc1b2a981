"""Checkpoints: written atomically (:func:`advrep.io.atomic_path`), read with ``torch.load(weights_only=True)`` and
every record of the archive checked against its CRC-32 (a damaged checkpoint is an error, never a silent resume).

Everything in a checkpoint is a tensor or a plain type (dict, list, tuple, str, int, float, bool, None) so that
the restricted unpickler accepts it; RNG states are stored as tensors and lists.
"""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_path

FORMAT = "advrep.train/1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the run being resumed."""


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": [int(v) for v in internal], "gauss_next": gauss_next},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` in one rename: a kill mid-write leaves the previous checkpoint intact."""
    state = {"format": FORMAT, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location=None, required=("epoch", "model")) -> dict:
    """``torch.load(path, weights_only=True)`` once the archive's records match their CRC-32; any failure becomes a
    :class:`CheckpointError`, one line naming the file, what is wrong and what to do.  A damaged ``last.pt`` is
    not replaced by a fresh start on its own: deleting it (the message says so) restarts that training from epoch 0,
    and a good copy may be worth restoring first."""
    path = Path(path)
    advice = (f"Delete {path} and rerun the same command to restart this training from scratch (epoch 0), or "
              f"restore a good copy of it.")
    bad = _bad_record(path)  # first: torch.load does not check the CRCs, a changed byte in a tensor loads silently
    if bad:
        raise CheckpointError(f"cannot read checkpoint {path}: it is corrupt, truncated or not a weights-only "
                              f"advrep checkpoint ({bad}). {advice}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # bad pickle, disallowed global, ...
        raise CheckpointError(f"cannot read checkpoint {path}: it is corrupt, truncated or not a weights-only "
                              f"advrep checkpoint ({type(e).__name__}: {_reason(e)}). {advice}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an advrep training checkpoint (format "
                              f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}, "
                              f"expected {FORMAT!r}). {advice}")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}. {advice}")
    return state


def _bad_record(path: Path) -> str:
    """"" when the checkpoint is a whole zip archive (as ``torch.save`` writes it) whose every record matches its
    CRC-32; otherwise what is wrong (reads the file once: a fraction of a second even for large models)."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception as e:  # noqa: BLE001 - any failure to re-read the archive is damage
        return f"{type(e).__name__}: {_reason(e)}"
    if not bad:
        return ""
    record = bad.split("/", 1)[-1]  # torch.save names records <archive name>/<record>
    return f"record {record} fails its CRC-32 check: its bytes changed after it was written"


def _reason(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "WeightsUnpickler error" in ln:
            return ln
    return lines[0] if lines else "no message"
