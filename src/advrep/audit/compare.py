"""Compare reproduced results with the published registry: one verdict per published number and per claim.

Verdicts for numbers: ``match`` / ``deviates`` (only where the result cell is comparable: the paper's data and
settings) or ``not comparable`` with the reason (scale, stand-in data, not run yet).  Claims: ``holds`` / ``fails`` /
``not comparable``; beside that strict verdict, ``on_this_run`` says what the claim gives on whatever cells were
computed (stand-in data, smoke settings), with ``data`` naming those cells' datasets and scale: which findings
transfer to the data at hand, never a replication verdict.

Tolerance (see :func:`tolerance`): deterministic quantities match within one unit of the last printed digit;
stochastic ones within a stated band (the registry's own ``tolerance`` where given, else the configured band).
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
                 "tolerance", "verdict", "reason", "source", "result_file", "scale", "datasets", "settings_sha256",
                 "seed", "git_commit"]
CLAIM_COLUMNS = ["paper", "id", "statement", "left", "op", "factor", "right", "verdict", "reason", "on_this_run",
                 "data", "source"]
_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


@dataclass(frozen=True)
class Bands:
    """Stated bands for stochastic quantities (config ``audit``)."""

    percent: float = 2.0  # absolute, in percentage points
    fraction: float = 0.02  # absolute, for quantities in [0, 1] (NAUC, error rates given as fractions)
    relative: float = 0.10  # relative, for every other unit


def tolerance(unit: str, kind: str, decimals: int, published: float, explicit: str | float | None,
              bands: Bands) -> float:
    if explicit not in (None, "") and not pd.isna(explicit):
        return float(explicit)
    last_digit = 10.0 ** (-int(decimals))
    if kind == "deterministic":
        return last_digit
    band = {"percent": bands.percent, "fraction": bands.fraction}.get(unit, bands.relative * abs(published))
    return max(band, last_digit)


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


def _datasets(prov: dict) -> str:
    return "; ".join(provenance.dataset_tag(d) for d in prov.get("datasets", []))


def audit_numbers(reg: Registry, results: Results, scale: str, bands: Bands = Bands()) -> pd.DataFrame:
    rows = []
    for _, pub in reg.numbers.iterrows():
        value, comparable, reason, prov, path, datasets = results.cell(pub["target"], pub["row"], pub["column"])
        tol = tolerance(pub["unit"], pub["kind"], pub["decimals"], pub["published"], pub["tolerance"], bands)
        diff = None if value is None else value - pub["published"]
        if comparable:
            verdict = MATCH if abs(diff) <= tol + 1e-12 else DEVIATES
        else:
            verdict = NOT_COMPARABLE
        rows.append({
            "paper": reg.paper, "target": pub["target"], "row": pub["row"], "column": pub["column"],
            "unit": pub["unit"], "kind": pub["kind"], "published": pub["published"], "reproduced": value,
            "difference": diff, "tolerance": tol, "verdict": verdict, "reason": reason, "source": pub["source"],
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
