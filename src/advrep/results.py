"""What every paper's table assembly shares: comparing a job's settings with the paper's stated ones, and collecting
long-format result cells (``row, column, value, unit, status, comparable, reason`` + ``dataset``, ``note``) for
:func:`advrep.provenance.write_result`.

A cell is comparable only when no reason speaks against it; a value that is missing or not finite becomes a
``not run`` cell with its reason, never a silent NaN in a table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

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


def load_job(csv_path, json_path) -> tuple:
    """One training + evaluation job's files: (per-sample table, summary dict)."""
    from .evaluate import read_per_sample

    return read_per_sample(csv_path), json.loads(Path(json_path).read_text())


def dataset_tag(meta: dict) -> str:
    from .provenance import dataset_tag as tag  # lazy: the workflow imports the paper modules at DAG time

    return tag(meta)


def job_datasets(jobs: dict) -> list[dict]:
    """The distinct prepared datasets (meta dicts) of ``{job: (table, summary)}``, for the provenance record."""
    return list({js["meta"].get("content_sha256"): js["meta"] for _df, js in jobs.values()}.values())


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

    def add_timings(self, jobs: dict) -> None:
        """Per job of ``{job: (table, summary)}``: its training and evaluation seconds (never a result)."""
        for job, (_df, js) in jobs.items():
            timing = dict(unit="seconds", reasons=["timing, not a result"], dataset=dataset_tag(js["meta"]))
            self.add(f"{job}", "seconds (training)", js["seconds_train"], **timing)
            self.add(f"{job}", "seconds (evaluation)", js["seconds_eval"], **timing)

    def missing(self, row, column, reason: str, *, unit="percent", dataset="") -> dict:
        """A cell that cannot be computed here, with its reason."""
        return self.add(row, column, None, unit=unit, reasons=[reason], dataset=dataset)
