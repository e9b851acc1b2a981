"""Provenance: what every result records about how it was made.

A result is a long-format table (one row per cell: ``row, column, value, unit, status, comparable, reason``) plus a
JSON sidecar written by :func:`record`.  The audit reads both: a cell is compared with the published number only
when the cell says it is ``comparable`` (the paper's data and settings); otherwise the ``reason`` is reported.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path

import pandas as pd

from . import io

RESULT_COLUMNS = ["row", "column", "value", "unit", "status", "comparable", "reason"]
# status: "ok" (computed), "not run" (could not be computed here; reason says why)
STATUSES = ("ok", "not run")

_LIBRARIES = ("advrep", "numpy", "pandas", "torch", "torchvision", "faiss-cpu", "faiss-gpu", "cvxpy", "scikit-learn",
              "matplotlib", "snakemake", "torchattacks", "torchdiffeq", "lpips")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def device_description() -> dict[str, str]:
    """The device the computation ran on (CUDA name when torch sees a GPU)."""
    out = {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
           "cpu_count": str(os.cpu_count())}
    try:
        import torch

        out["torch_threads"] = str(torch.get_num_threads())
        if torch.cuda.is_available():
            out["cuda"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return out


def git_commit(start: str | os.PathLike | None = None) -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=start or Path(__file__).parent, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def record(*, paper: str, target: str, scale: str, settings: dict, seed: int | None, datasets: list[dict],
           extra: dict | None = None) -> dict:
    """Provenance dict for one result.

    ``datasets``: the prepared datasets' metadata (``advrep.data`` meta dicts: name, source, content_sha256,
    standin_for ...), reduced here to what a reader needs.
    """
    keep = ("name", "source", "origin", "verified_by", "content_sha256", "standin_for", "params", "n_train", "n_test")
    return {
        "paper": paper,
        "target": target,
        "scale": scale,
        "settings": settings,
        "settings_sha256": settings_hash(settings),
        "seed": seed,
        "datasets": [{k: d.get(k) for k in keep if k in d} for d in datasets],
        "libraries": library_versions(),
        "device": device_description(),
        "git_commit": git_commit(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }


def result_frame(rows: list[dict]) -> pd.DataFrame:
    """Validate and order result rows (dicts with the keys of RESULT_COLUMNS)."""
    df = pd.DataFrame(rows)
    for col, default in (("unit", ""), ("status", "ok"), ("comparable", False), ("reason", "")):
        if col not in df:
            df[col] = default
        df[col] = df[col].astype(object).where(df[col].notna(), default)
    df["comparable"] = df["comparable"].astype(bool)
    missing = [c for c in RESULT_COLUMNS if c not in df]
    if missing:
        raise ValueError(f"result rows lack columns {missing}")
    bad = sorted(set(df["status"]) - set(STATUSES))
    if bad:
        raise ValueError(f"unknown status {bad}; use one of {STATUSES}")
    if df.duplicated(["row", "column"]).any():
        dup = df[df.duplicated(["row", "column"], keep=False)][["row", "column"]].values.tolist()
        raise ValueError(f"duplicate result cells {dup}")
    not_run = df["status"] != "ok"
    if (df.loc[not_run, "reason"].fillna("") == "").any():
        raise ValueError("every 'not run' cell needs a reason")
    if df.loc[not_run, "value"].notna().any():
        raise ValueError("a 'not run' cell must have no value")
    df["comparable"] = df["comparable"].astype(bool) & ~not_run
    return df[RESULT_COLUMNS + [c for c in df.columns if c not in RESULT_COLUMNS]]


def write_result(rows: list[dict], csv_path: str | os.PathLike, provenance: dict,
                 provenance_path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Write a result table (long format) and its provenance sidecar, both atomically."""
    df = result_frame(rows)
    csv_path = Path(csv_path)
    with io.atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False)
    io.write_json(provenance_path or provenance_sidecar(csv_path), provenance)
    return df


def provenance_sidecar(result_path: str | os.PathLike) -> Path:
    """``table4.csv`` -> ``table4.provenance.json``."""
    p = Path(result_path)
    return p.with_name(p.stem + ".provenance.json")


def dataset_tag(meta: dict) -> str:
    """``name:<first 12 hex of content sha256>`` plus the stand-in note: what a cell was computed on."""
    tag = f"{meta.get('name')}:{(meta.get('content_sha256') or '')[:12]}"
    if meta.get("standin_for"):
        tag += f" (stand-in for {meta['standin_for']})"
    return tag


def read_result(csv_path: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    df = pd.read_csv(csv_path, dtype={"row": str, "column": str, "reason": str, "unit": str, "dataset": str})
    df["reason"] = df["reason"].fillna("")
    side = provenance_sidecar(csv_path)
    return df, (io.read_json(side) if side.exists() else {})
