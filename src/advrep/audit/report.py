"""Per-paper audit files and the human summary (Markdown)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .. import io
from .compare import FAILS, HOLDS, NOT_COMPARABLE, Bands, Results, audit_claims, audit_numbers
from .registry import load


def audit_paper(paper: str, result_files: list[str | Path], scale: str, out_csv: str | os.PathLike,
                out_claims_csv: str | os.PathLike, bands: Bands = Bands()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Audit one paper and write ``<paper>.csv`` (numbers) and ``<paper>.claims.csv`` atomically."""
    reg = load(paper)
    results = Results.from_files(result_files)
    numbers = audit_numbers(reg, results, scale, bands)
    claims = audit_claims(reg, results)
    for df, path in ((numbers, out_csv), (claims, out_claims_csv)):
        with io.atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)
    return numbers, claims


def _fmt(v) -> str:
    return "" if v is None or pd.isna(v) else f"{v:.6g}"


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_none_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(("" if pd.isna(r[c]) else str(r[c])).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def summary_markdown(scale: str, audits: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> str:
    """One page for people: per paper, verdict counts, every comparable number, claims, and why the rest is not;
    then each claim on the data at hand (:func:`_on_this_run`)."""
    out = [f"# Audit of the reproduction — scale `{scale}`\n",
           "Verdicts: **match** / **deviates** only where the data and settings are the paper's; otherwise "
           "**not comparable**, with the reason. Deterministic numbers match within one unit of the last printed "
           "digit; stochastic ones within the stated band (column `tolerance`), or, where a cell summarises n >= 3 "
           "runs (seeds or retrainings), within its 95% interval widened by one unit of the last printed digit "
           "(columns `n`, `interval`).\n",
           "| paper | numbers | match | deviates | not comparable | claims hold | claims fail "
           "| claims not comparable |",
           "|---|---|---|---|---|---|---|---|"]
    for paper, (num, cl) in audits.items():
        vc, cc = num["verdict"].value_counts(), cl["verdict"].value_counts()
        out.append(f"| {paper} | {len(num)} | {vc.get('match', 0)} | {vc.get('deviates', 0)} | "
                   f"{vc.get(NOT_COMPARABLE, 0)} | {cc.get('holds', 0)} | {cc.get('fails', 0)} | "
                   f"{cc.get(NOT_COMPARABLE, 0)} |")
    out.append("")
    for paper, (num, cl) in audits.items():
        out.append(f"## {paper}\n")
        comp = num[num["verdict"] != NOT_COMPARABLE]
        out.append("### Compared numbers\n")
        out.append(_md_table(comp.assign(published=comp["published"].map(_fmt),
                                         reproduced=comp["reproduced"].map(_fmt),
                                         difference=comp["difference"].map(_fmt),
                                         tolerance=comp["tolerance"].map(_fmt), n=_runs(comp),
                                         interval=_intervals(comp))[
            ["target", "row", "column", "published", "reproduced", "difference", "tolerance", "n", "interval",
             "verdict", "datasets"]]))
        nc = num[num["verdict"] == NOT_COMPARABLE]
        out.append("### Not comparable (why)\n")
        if nc.empty:
            out.append("_none_\n")
        else:
            grouped = nc.groupby(["target", "reason"], sort=True).size().reset_index(name="numbers")
            out.append(_md_table(grouped))
        out.append("### Claims\n")
        out.append(_md_table(cl[["id", "statement", "left", "op", "factor", "right", "verdict", "reason"]]))
        out.append(_on_this_run(cl))
    return "\n".join(out)


def _runs(df: pd.DataFrame) -> pd.Series:
    """The number of runs behind each reproduced number ("1" for a single run; audits before seeds: blank)."""
    if "n" not in df:
        return pd.Series([""] * len(df), index=df.index)
    return df["n"].map(lambda v: "1" if pd.isna(v) else str(int(v)))


def _intervals(df: pd.DataFrame) -> pd.Series:
    """``[low, high]`` of each number's 95% interval over runs, blank for a single run."""
    if "ci_low" not in df:
        return pd.Series([""] * len(df), index=df.index)
    return pd.Series([f"[{_fmt(lo)}, {_fmt(hi)}]" if pd.notna(lo) and pd.notna(hi) else ""
                      for lo, hi in zip(df["ci_low"], df["ci_high"])], index=df.index)


def _text(col: pd.Series) -> pd.Series:
    """A text column with blanks as "" (an all-blank column reads back from CSV as float NaN)."""
    return col.astype(object).where(col.notna(), "")


def _on_this_run(cl: pd.DataFrame) -> str:
    """Each claim evaluated on the cells this run computed, whatever their data: which findings transfer."""
    out = ["### Claims on the data at hand (not a replication verdict)\n"]
    if "on_this_run" not in cl:  # a claims file written before this column existed
        return out[0] + "_not recorded: rerun the audit_paper job_\n"
    res = _text(cl["on_this_run"])
    out.append(f"Each claim checked on the cells this run computed, whether or not they are the paper's data and "
               f"settings (column `verdict` above is the strict one): {int((res == HOLDS).sum())} hold, "
               f"{int((res == FAILS).sum())} fail, {int((res == '').sum())} not computed, of {len(cl)}.\n")
    table = cl.assign(on_this_run=res.where(res != "", "not computed"), data=_text(cl["data"]))
    out.append(_md_table(table[["id", "statement", "left", "op", "factor", "right", "on_this_run", "data"]]))
    return "\n".join(out)


def write_summary(scale: str, paper_files: dict[str, tuple[str, str]], out_md: str | os.PathLike) -> str:
    audits = {p: (pd.read_csv(n), pd.read_csv(c)) for p, (n, c) in paper_files.items()}
    text = summary_markdown(scale, audits)
    io.write_text(out_md, text)
    return text
