"""The published-numbers registry (``advrep/published/``): loading and shape checks.

Formats are described in ``advrep/published/README.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd
import yaml

from .. import PAPERS

REGISTRY_COLUMNS = ["paper", "target", "row", "column", "value", "unit", "decimals", "kind", "tolerance", "source",
                    "note"]
UNITS = ("percent", "fraction", "lipschitz", "distance", "ratio", "count", "seconds", "epsilon", "other")
KINDS = ("deterministic", "stochastic")
CLAIM_OPS = (">", ">=", "<", "<=")


def registry_dir() -> Path:
    return Path(str(resources.files("advrep") / "published"))


@dataclass(frozen=True)
class Registry:
    paper: str
    numbers: pd.DataFrame  # REGISTRY_COLUMNS; value kept as printed (str) plus ``published`` (float)
    layout: dict  # target -> {title, rows, columns, blanks}
    claims: list[dict]

    def targets(self) -> list[str]:
        return list(self.layout)


def _printed_decimals(value: str) -> int:
    value = value.strip()
    return len(value.split(".", 1)[1]) if "." in value else 0


def load(paper: str, directory: str | Path | None = None) -> Registry:
    """Load one paper's registry; raises ValueError naming the file and the problem when it is malformed."""
    if paper not in PAPERS:
        raise ValueError(f"unknown paper {paper!r}; expected one of {PAPERS}")
    d = Path(directory) if directory else registry_dir()
    csv, layout_file, claims_file = d / f"{paper}.csv", d / f"{paper}.layout.yaml", d / f"{paper}.claims.yaml"
    for f in (csv, layout_file, claims_file):
        if not f.exists():
            raise FileNotFoundError(f"published registry file {f} is missing")
    numbers = pd.read_csv(csv, dtype=str, keep_default_na=False)
    missing = [c for c in REGISTRY_COLUMNS if c not in numbers]
    if missing:
        raise ValueError(f"{csv}: missing columns {missing}")
    numbers["published"] = numbers["value"].astype(float)
    numbers["decimals"] = numbers["decimals"].astype(int)
    layout = yaml.safe_load(layout_file.read_text()) or {}
    claims = yaml.safe_load(claims_file.read_text()) or []
    return Registry(paper, numbers, layout, claims)


def shape_problems(reg: Registry) -> list[str]:
    """Everything wrong with a registry's shape and content; empty when it is consistent."""
    probs: list[str] = []
    n = reg.numbers
    if (n["paper"] != reg.paper).any():
        probs.append(f"rows with paper != {reg.paper}")
    for _, r in n.iterrows():
        key = f"{r['target']}/{r['row']}/{r['column']}"
        if _printed_decimals(r["value"]) != r["decimals"]:
            probs.append(f"{key}: decimals {r['decimals']} but value printed as {r['value']!r}")
        if r["unit"] not in UNITS:
            probs.append(f"{key}: unit {r['unit']!r} not in {UNITS}")
        if r["kind"] not in KINDS:
            probs.append(f"{key}: kind {r['kind']!r} not in {KINDS}")
        if not math.isfinite(r["published"]):
            probs.append(f"{key}: value {r['value']!r} is not a finite number")
        if r["tolerance"] and not float(r["tolerance"]) > 0:
            probs.append(f"{key}: tolerance must be positive")
        if ":L" not in r["source"]:
            probs.append(f"{key}: source {r['source']!r} is not '<file>:L<line>'")
    dup = n[n.duplicated(["target", "row", "column"], keep=False)]
    for _, r in dup.iterrows():
        probs.append(f"duplicate cell {r['target']}/{r['row']}/{r['column']}")
    for target in sorted(set(n["target"]) - set(reg.layout)):
        probs.append(f"target {target} has numbers but no layout")
    for target, spec in reg.layout.items():
        rows, cols = spec.get("rows") or [], spec.get("columns") or []
        blanks = {tuple(b) for b in spec.get("blanks") or []}
        expected = {(r, c) for r in rows for c in cols} - blanks
        got = set(map(tuple, n.loc[n["target"] == target, ["row", "column"]].values.tolist()))
        for r, c in sorted(expected - got):
            probs.append(f"{target}: layout cell {r!r}/{c!r} has no number (list it under blanks if the paper "
                         "leaves it empty)")
        for r, c in sorted(got - expected):
            probs.append(f"{target}: number at {r!r}/{c!r} is outside the layout")
        for r, c in sorted(blanks - {(r, c) for r in rows for c in cols}):
            probs.append(f"{target}: blank {r!r}/{c!r} is not a layout cell")
    for claim in reg.claims:
        cid = claim.get("id", "?")
        for key in ("id", "statement", "source", "left", "op", "right"):
            if key not in claim:
                probs.append(f"claim {cid}: missing {key}")
        if claim.get("op") not in CLAIM_OPS:
            probs.append(f"claim {cid}: op {claim.get('op')!r} not in {CLAIM_OPS}")
        for side in ("left", "right"):
            ref = claim.get(side)
            if isinstance(ref, dict):
                if set(ref) != {"target", "row", "column"}:
                    probs.append(f"claim {cid}: {side} must name target, row and column")
                elif ref["target"] not in reg.layout:
                    probs.append(f"claim {cid}: {side} target {ref['target']!r} not in the layout")
            elif not isinstance(ref, (int, float)):
                probs.append(f"claim {cid}: {side} must be a cell or a number")
    ids = [c.get("id") for c in reg.claims]
    probs += [f"duplicate claim id {i}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    return probs
