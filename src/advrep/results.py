"""What every paper's table assembly shares: comparing a job's settings with the paper's stated ones, and collecting
long-format result cells (``row, column, value, unit, status, comparable, reason`` + ``dataset``, ``note``) for
:func:`advrep.provenance.write_result`.

A cell is comparable only when no reason speaks against it; a value that is missing or not finite becomes a
``not run`` cell with its reason, never a silent NaN in a table.
"""

from __future__ import annotations

import math

from .config import number

BEYOND = "beyond the paper (not a published number)"


def dotted_get(d: dict, dotted: str):
    """``d["a"]["b"]`` for ``"a.b"``; None where a key is missing."""
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def same_setting(got, paper) -> bool:
    """A setting equals the paper's: lists element-wise, names case-blind, numbers (also written as strings such as
    ``"8/255"``) to a relative 1e-6."""
    if isinstance(paper, (list, tuple)):
        return (isinstance(got, (list, tuple)) and len(got) == len(paper)
                and all(same_setting(a, b) for a, b in zip(got, paper)))
    if isinstance(paper, str):
        return str(got).lower() == paper.lower()
    if got is None:
        return False
    try:
        return math.isclose(number(got), float(paper), rel_tol=1e-6, abs_tol=1e-12)
    except ValueError:
        return False


def show_setting(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


class Cells:
    """Collects the result rows of one target, each with its comparability and reason.

    ``nonfinite_reason``: appended to the reason of a cell whose value is a number but not finite (e.g. a median
    over no broken image, a ratio over 0)."""

    def __init__(self, nonfinite_reason: str = ""):
        self.rows: list[dict] = []
        self.nonfinite_reason = nonfinite_reason

    def add(self, row, column, value, *, unit="percent", reasons=(), dataset="", beyond=False, note="") -> dict:
        """Add one cell; ``beyond``: not a published number (never comparable, says so first)."""
        reasons = list(dict.fromkeys(reasons))
        if beyond:
            reasons = [BEYOND] + reasons
        cell = dict(row=row, column=column, unit=unit, dataset=dataset, reason="; ".join(reasons), note=note)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            why = [cell["reason"]] if cell["reason"] else []
            if value is not None and self.nonfinite_reason:
                why.append(self.nonfinite_reason)
            cell.update(value=None, status="not run", comparable=False,
                        reason="; ".join(why) or "not computed for this model")
        else:
            cell.update(value=float(value), status="ok", comparable=not reasons)
        self.rows.append(cell)
        return cell

    def missing(self, row, column, reason: str, *, unit="percent", dataset="") -> dict:
        """A cell that cannot be computed here, with its reason."""
        return self.add(row, column, None, unit=unit, reasons=[reason], dataset=dataset)
