"""Checkpoints: written atomically (:func:`advrep.io.atomic_path`), read with ``torch.load(weights_only=True)``.

Everything in a checkpoint is a tensor or a plain type (dict, list, tuple, str, int, float, bool, None) so that
the restricted unpickler accepts it; RNG states are stored as tensors and lists.
"""

from __future__ import annotations

import random
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
    """``torch.load(path, weights_only=True)``; any failure becomes a :class:`CheckpointError` naming the file and
    telling what to do."""
    path = Path(path)
    advice = f"Delete {path} to restart training from scratch (or restore a good copy of it)."
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, disallowed global, ...
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


def _reason(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "WeightsUnpickler error" in ln:
            return ln
    return lines[0] if lines else "no message"
