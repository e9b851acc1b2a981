"""Seeds: a stochastic target run once per seed, its cells summarised as mean, std, n and a 95% interval.

The workflow runs every training and every stochastic evaluation job once per entry of the config's ``seeds`` list
(outputs under ``results/<scale>/<paper>/seed<k>/``) and assembles each seeded target per seed; :func:`combine`
turns those per-seed result tables into the target's table.  Every numeric cell then carries

* ``value``: the mean over all runs, ``std``: their sample standard deviation (ddof 1), ``n``: the number of runs,
* ``ci_low`` / ``ci_high``: the two-sided 95% Student-t interval of the mean, ``mean +- t(0.975, n-1) std/sqrt(n)``.

A cell that already summarises a sample of its own (voronoi Figure 3 averages 20 retrainings per seed: its cells
carry ``std`` and ``n``) is pooled exactly: the result is the mean, std and n of all underlying runs together.
With a single seed the target's table is the seed's table, byte for byte (nothing changes by default).

A cell is computed only if every seed computed it; otherwise it is ``not run``, saying which seeds lacked it.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from . import io, provenance

SEED_COLUMNS = ["std", "n", "ci_low", "ci_high"]
LEVEL = 0.95


def t_quantile(n: int, level: float = LEVEL) -> float:
    """The two-sided Student-t quantile ``t((1 + level) / 2, n - 1)`` for a sample of ``n``."""
    from scipy import stats

    if n < 2:
        raise ValueError(f"an interval needs at least 2 runs, got n={n}")
    return float(stats.t.ppf(0.5 + level / 2, n - 1))


def interval(mean: float, std: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The ``level`` t-interval of the mean of ``n`` runs with sample std ``std``; (nan, nan) for n < 2."""
    if n < 2 or not math.isfinite(std):
        return math.nan, math.nan
    half = t_quantile(n, level) * std / math.sqrt(n)
    return mean - half, mean + half


def summarise(values, level: float = LEVEL) -> dict:
    """``{value, std, n, ci_low, ci_high}`` of a sample of run results (ddof-1 std; nan where n < 2)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("summarise: no values")
    if not np.isfinite(v).all():
        raise ValueError(f"summarise: non-finite run results {v.tolist()}")
    n = int(v.size)
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if n > 1 else math.nan
    lo, hi = interval(mean, std, n, level)
    return {"value": mean, "std": std, "n": n, "ci_low": lo, "ci_high": hi}


def pool(parts: list[tuple[float, float, int]], level: float = LEVEL) -> dict:
    """Combine samples given as ``(mean, std, n)`` (std with ddof 1; ignored where n == 1) into the summary of all
    their runs together, exactly as :func:`summarise` of the concatenated runs."""
    if not parts:
        raise ValueError("pool: no samples")
    means = np.array([float(m) for m, _, _ in parts])
    ns = np.array([int(n) for _, _, n in parts])
    stds = np.array([0.0 if int(n) < 2 else float(s) for _, s, n in parts])
    if (ns < 1).any() or not (np.isfinite(means).all() and np.isfinite(stds).all()):
        raise ValueError(f"pool: bad samples {parts}")
    total = int(ns.sum())
    mean = float((ns * means).sum() / total)
    if total < 2:
        return {"value": mean, "std": math.nan, "n": total, "ci_low": math.nan, "ci_high": math.nan}
    ss = float(((ns - 1) * stds ** 2).sum() + (ns * (means - mean) ** 2).sum())
    std = math.sqrt(max(ss, 0.0) / (total - 1))
    lo, hi = interval(mean, std, total, level)
    return {"value": mean, "std": std, "n": total, "ci_low": lo, "ci_high": hi}


def _own_sample(r: pd.Series) -> tuple[float, float, int]:
    """(mean, std, n) of one seed's cell: its own sample where it carries one (``n`` >= 1), else one run."""
    n = r.get("n")
    if n is not None and not pd.isna(n) and int(n) >= 1:
        s = r.get("std")
        return float(r["value"]), (math.nan if s is None or pd.isna(s) else float(s)), int(n)
    return float(r["value"]), math.nan, 1


def aggregate(frames: dict[int, pd.DataFrame], level: float = LEVEL) -> pd.DataFrame:
    """The per-seed result tables (seed -> long-format frame) as one table: each cell the summary of its runs."""
    if not frames:
        raise ValueError("aggregate: no seeds")
    seeds = list(frames)
    indexed = {}
    for seed, df in frames.items():
        if df.duplicated(["row", "column"]).any():
            raise ValueError(f"seed {seed}: duplicate result cells")
        indexed[seed] = {(r["row"], r["column"]): r for _, r in df.iterrows()}
    keys = list(dict.fromkeys(k for seed in seeds for k in indexed[seed]))
    extra = [c for df in frames.values() for c in df.columns
             if c not in provenance.RESULT_COLUMNS and c not in SEED_COLUMNS]
    extra = list(dict.fromkeys(extra))
    rows = []
    for key in keys:
        cells = {s: indexed[s].get(key) for s in seeds}
        first = next(c for c in cells.values() if c is not None)
        out = {c: first.get(c) for c in provenance.RESULT_COLUMNS + extra}
        out.update(row=key[0], column=key[1])
        missing = [s for s, c in cells.items() if c is None]
        failed = {s: c for s, c in cells.items() if c is not None and c["status"] != "ok"}
        if missing or failed:
            reasons = list(dict.fromkeys(str(c["reason"]) for c in failed.values() if str(c["reason"])))
            if missing:
                reasons.append(f"no such cell for seed(s) {', '.join(map(str, missing))}")
            if len(failed) + len(missing) < len(seeds):  # some seeds computed it, others not: say which
                lacking = sorted(set(missing) | set(failed))
                reasons = [f"not computed for seed(s) {', '.join(map(str, lacking))}: " + "; ".join(reasons)]
            out.update(value=math.nan, status="not run", comparable=False, reason="; ".join(reasons))
            out.update({c: math.nan for c in SEED_COLUMNS})
        else:
            summary = pool([_own_sample(c) for c in cells.values()], level)
            out.update(summary)
            out["comparable"] = all(bool(c["comparable"]) for c in cells.values())
        rows.append(out)
    df = pd.DataFrame(rows)
    df["n"] = df["n"].astype("Int64")
    return df[provenance.RESULT_COLUMNS + extra + SEED_COLUMNS]


def combine(seed_files: dict[int, str | os.PathLike], out_csv: str | os.PathLike,
            out_png: str | os.PathLike | None = None, level: float = LEVEL) -> pd.DataFrame:
    """Write the target's table (``out_csv`` + provenance sidecar, and the figure ``out_png``) from its per-seed
    tables (seed -> CSV written by the target's own code, with a sidecar and, for a figure, a PNG beside it).

    One seed: the seed's files, byte for byte.  Several: :func:`aggregate`; the figure is the first seed's (its
    provenance says so), the CSV carries the spread over seeds.  The per-seed settings must agree."""
    seeds = list(seed_files)
    if not seeds:
        raise ValueError("combine: no seeds")
    provs, frames = {}, {}
    for seed, path in seed_files.items():
        frames[seed], provs[seed] = provenance.read_result(path)
        if not provs[seed]:
            raise ValueError(f"{path}: no provenance sidecar; delete {path} and rerun to rebuild it")
    hashes = {s: p.get("settings_sha256") for s, p in provs.items()}
    if len(set(hashes.values())) > 1:
        raise ValueError(f"the per-seed results of {out_csv} were made with different settings {hashes}: "
                         "delete them and rerun")
    first = seeds[0]
    prov = dict(provs[first])
    prov.update(seeds=seeds, seed_results={str(s): str(p) for s, p in seed_files.items()})
    if len(seeds) == 1:
        df = frames[first]
        with io.atomic_path(out_csv) as tmp:
            shutil.copyfile(seed_files[first], tmp)
    else:
        df = aggregate(frames, level)
        prov.update(seed=seeds, spread={"over": "seeds", "statistic": "mean", "std_ddof": 1, "interval":
                                        f"two-sided {level:.0%} Student-t interval of the mean"})
        with io.atomic_path(out_csv) as tmp:
            df.to_csv(tmp, index=False)
    if out_png is not None:
        png = Path(seed_files[first]).with_suffix(".png")
        if not png.exists():
            raise FileNotFoundError(f"{png}: the figure of seed {first} is missing; delete {seed_files[first]} "
                                    "and rerun to rebuild it")
        with io.atomic_path(out_png) as tmp:
            shutil.copyfile(png, tmp)
        prov["figure"] = (f"the figure of seed {first}" + (f" (one of {len(seeds)} seeds; the CSV has the spread)"
                                                           if len(seeds) > 1 else ""))
    io.write_json(provenance.provenance_sidecar(out_csv), prov)
    return df
