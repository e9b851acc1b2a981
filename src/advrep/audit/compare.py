"""Compare reproduced results with the published registry: one verdict per published number and per claim.

Verdicts for numbers: ``match`` / ``deviates`` (only where the result cell is comparable: the paper's data and
settings) or ``not comparable`` with the reason (scale, stand-in data, not run yet).  Claims: ``holds`` / ``fails`` /
``not comparable``; beside that strict verdict, ``on_this_run`` says what the claim gives on whatever cells were
computed (stand-in data, smoke settings), with ``data`` naming those cells' datasets and scale: which findings
transfer to the data at hand, never a replication verdict.

Tolerance (see :func:`tolerance`): deterministic quantities match within one unit of the last printed digit;
stochastic ones within a stated band (the registry's own ``tolerance`` where given, else the configured band).
Where a cell summarises n >= 3 runs (several seeds, or retrainings within one run; :mod:`advrep.seeds`), the measured
spread replaces the guess: "match" when the published value lies within the cell's 95% interval widened by one unit
of the published number's last printed digit (column ``tolerance_rule`` says which rule was applied, ``n``,
``ci_low``, ``ci_high`` give the interval).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import provenance
from .registry import Registry

MATCH, DEVIATES, NOT_COMPARABLE = "match", "deviates", "not comparable"
HOLDS, FAILS = "holds", "fails"
AUDIT_COLUMNS = ["paper", "target", "row", "column", "unit", "kind", "published", "reproduced", "difference",
                 "tolerance", "tolerance_rule", "n", "ci_low", "ci_high", "verdict", "reason", "source", "result_file",
                 "scale", "datasets", "settings_sha256", "seed", "git_commit"]
CLAIM_COLUMNS = ["paper", "id", "statement", "left", "op", "factor", "right", "verdict", "reason", "on_this_run",
                 "data", "source"]
_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


@dataclass(frozen=True)
class Bands:
    """Stated bands for stochastic quantities (config ``audit``)."""

    percent: float = 2.0  # absolute, in percentage points
    fraction: float = 0.02  # absolute, for quantities in [0, 1] (NAUC, error rates given as fractions)
    relative: float = 0.10  # relative, for every other unit


MIN_RUNS = 3  # a measured interval replaces the stated band from this many runs on


def tolerance(unit: str, kind: str, decimals: int, published: float, explicit: str | float | None,
              bands: Bands) -> float:
    return tolerance_and_rule(unit, kind, decimals, published, explicit, bands)[0]


def tolerance_and_rule(unit: str, kind: str, decimals: int, published: float, explicit: str | float | None,
                       bands: Bands, n: int | None = None, ci: tuple[float, float] | None = None,
                       reproduced: float | None = None) -> tuple[float, str]:
    """(tolerance around the reproduced value, the rule that gave it).  With ``n`` >= :data:`MIN_RUNS` runs and
    their 95% interval ``ci`` (symmetric about ``reproduced``, the mean), the tolerance is the interval's half-width
    plus one unit of the last printed digit: "match" iff the published value lies in the widened interval."""
    last_digit = 10.0 ** (-int(decimals))
    if (n is not None and n >= MIN_RUNS and ci is not None and reproduced is not None
            and all(pd.notna(v) for v in ci)):
        half = max(ci[1] - reproduced, reproduced - ci[0])
        return half + last_digit, f"95% interval of {n} runs, widened by {last_digit:g} (last printed digit)"
    if explicit not in (None, "") and not pd.isna(explicit):
        return float(explicit), "the registry's tolerance"
    if kind == "deterministic":
        return last_digit, "last printed digit (deterministic)"
    band = {"percent": bands.percent, "fraction": bands.fraction}.get(unit, bands.relative * abs(published))
    why = (f"stated band ({unit})" if unit in ("percent", "fraction") else "stated band (relative)") + (
        f", n={n} < {MIN_RUNS} runs" if n is not None and n > 1 else "")
    return max(band, last_digit), why


@dataclass
class Results:
    """The reproduced result tables of one paper: target -> (frame, provenance, path)."""

    tables: dict[str, tuple[pd.DataFrame, dict, str]] = field(default_factory=dict)

    @classmethod
    def from_files(cls, paths: list[str | Path]) -> "Results":
        out = cls()
        for p in paths:
            df, prov = provenance.read_result(p)
            out.tables[Path(p).stem] = (df, prov, str(p))
        return out

    def cell(self, target: str, row: str, column: str):
        """(value, comparable, reason, provenance, path, datasets) for one cell; value None with a reason when
        absent.  ``datasets`` is the cell's own ``dataset`` entry where the result has one, else the result's."""
        if target not in self.tables:
            return None, False, f"not run yet: the workflow produced no {target} for this paper", {}, "", ""
        df, prov, path = self.tables[target]
        hit = df[(df["row"] == row) & (df["column"] == column)]
        if hit.empty:
            return None, False, f"not run yet: {target} has no cell {row!r} / {column!r}", prov, path, ""
        r = hit.iloc[0]
        own = r.get("dataset")
        datasets = own if isinstance(own, str) and own else _datasets(prov)
        if r["status"] != "ok":
            return None, False, r["reason"] or r["status"], prov, path, datasets
        value = float(r["value"])
        if not bool(r["comparable"]):
            return value, False, r["reason"] or "not the paper's data or settings", prov, path, datasets
        return value, True, "", prov, path, datasets

    def spread(self, target: str, row: str, column: str) -> tuple[int | None, float, float]:
        """(n, ci_low, ci_high) of a cell that summarises several runs (:mod:`advrep.seeds`); (None, nan, nan)
        for a single run or a cell not computed."""
        nan = float("nan")
        if target not in self.tables:
            return None, nan, nan
        df = self.tables[target][0]
        if "n" not in df:
            return None, nan, nan
        hit = df[(df["row"] == row) & (df["column"] == column)]
        if hit.empty or pd.isna(hit.iloc[0]["n"]):
            return None, nan, nan
        r = hit.iloc[0]
        return int(r["n"]), float(r.get("ci_low", nan)), float(r.get("ci_high", nan))


def _datasets(prov: dict) -> str:
    return "; ".join(provenance.dataset_tag(d) for d in prov.get("datasets", []))


def audit_numbers(reg: Registry, results: Results, scale: str, bands: Bands = Bands()) -> pd.DataFrame:
    rows = []
    for _, pub in reg.numbers.iterrows():
        value, comparable, reason, prov, path, datasets = results.cell(pub["target"], pub["row"], pub["column"])
        n, lo, hi = results.spread(pub["target"], pub["row"], pub["column"]) if value is not None else (
            None, float("nan"), float("nan"))
        tol, rule = tolerance_and_rule(pub["unit"], pub["kind"], pub["decimals"], pub["published"],
                                       pub["tolerance"], bands, n=n, ci=(lo, hi), reproduced=value)
        diff = None if value is None else value - pub["published"]
        if comparable:
            verdict = MATCH if abs(diff) <= tol + 1e-12 else DEVIATES
        else:
            verdict = NOT_COMPARABLE
        rows.append({
            "paper": reg.paper, "target": pub["target"], "row": pub["row"], "column": pub["column"],
            "unit": pub["unit"], "kind": pub["kind"], "published": pub["published"], "reproduced": value,
            "difference": diff, "tolerance": tol, "tolerance_rule": rule, "n": n, "ci_low": lo, "ci_high": hi,
            "verdict": verdict, "reason": reason, "source": pub["source"],
            "result_file": path, "scale": prov.get("scale", scale), "datasets": datasets,
            "settings_sha256": prov.get("settings_sha256", ""), "seed": prov.get("seed"),
            "git_commit": prov.get("git_commit", ""),
        })
    return pd.DataFrame(rows, columns=AUDIT_COLUMNS)


def _side(ref, results: Results):
    """(value, comparable, reason, label, data) of one side of a claim; ``data`` is ``(scale, datasets)`` of a
    computed cell, None for a plain number or a cell not computed."""
    if isinstance(ref, (int, float)):
        return float(ref), True, "", str(ref), None
    value, comparable, reason, prov, _, datasets = results.cell(ref["target"], ref["row"], ref["column"])
    label = f"{ref['target']}[{ref['row']} / {ref['column']}]"
    if value is None:
        return value, comparable, reason, label, None
    return value, comparable, reason, f"{label} = {value:g}", (prov.get("scale", ""), datasets)


def _data(*sides) -> str:
    """``"<datasets>, scale <s>"`` of the computed cells a claim compared, each distinct entry once."""
    parts = []
    for side in sides:
        if side is None:
            continue
        scale, datasets = side
        text = f"{datasets or 'datasets not recorded'}, scale {scale or 'not recorded'}"
        if text not in parts:
            parts.append(text)
    return "; ".join(parts)


def audit_claims(reg: Registry, results: Results) -> pd.DataFrame:
    """A claim holds/fails only when every cell it names is comparable; otherwise it is not comparable.

    A claim marked ``any_data: true`` (an illustration on data the paper does not publish, e.g. a synthetic
    sample) is evaluated on any computed cells.  ``on_this_run`` is the claim evaluated on the computed cells
    whatever their data (``holds`` / ``fails``; blank when a side was not computed), ``data`` those cells' datasets
    and scale; the strict ``verdict`` does not depend on it.
    """
    rows = []
    for c in reg.claims:
        factor = float(c.get("factor", 1.0))
        lv, lc, lr, ltxt, ldata = _side(c["left"], results)
        rv, rc, rr, rtxt, rdata = _side(c["right"], results)
        any_data = bool(c.get("any_data", False))
        computed = lv is not None and rv is not None
        on_this_run = (HOLDS if _OPS[c["op"]](lv, factor * rv) else FAILS) if computed else ""
        if computed and ((lc and rc) or any_data):
            verdict, reason = on_this_run, ""
        else:
            verdict = NOT_COMPARABLE
            reason = "; ".join(dict.fromkeys(r for r in (lr, rr) if r)) or "cells not comparable"  # each once
        rows.append({"paper": reg.paper, "id": c["id"], "statement": c["statement"], "left": ltxt, "op": c["op"],
                     "factor": factor, "right": rtxt, "verdict": verdict, "reason": reason,
                     "on_this_run": on_this_run, "data": _data(ldata, rdata) if computed else "",
                     "source": c["source"]})
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)
