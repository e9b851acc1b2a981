"""Audit verdicts: tolerance by printed precision, not-comparable reasons, claims."""

import math

import pandas as pd
import pytest
import yaml

from advrep import provenance
from advrep.audit import (DEVIATES, FAILS, HOLDS, MATCH, NOT_COMPARABLE, Bands, Results, audit_claims,
                          audit_numbers, load, shape_problems, tolerance)
from advrep.audit.report import audit_paper, summary_markdown, write_summary


def _registry(tmp_path, rows, layout, claims):
    cols = ["paper", "target", "row", "column", "value", "unit", "decimals", "kind", "tolerance", "source", "note"]
    pd.DataFrame(rows, columns=cols).to_csv(tmp_path / "lipreg.csv", index=False)
    (tmp_path / "lipreg.layout.yaml").write_text(yaml.safe_dump(layout))
    (tmp_path / "lipreg.claims.yaml").write_text(yaml.safe_dump(claims))
    return load("lipreg", tmp_path)


@pytest.fixture
def reg(tmp_path):
    rows = [
        ["lipreg", "table4", "L", "A", "0.417", "lipschitz", 3, "deterministic", "", "f.txt:L1", ""],
        ["lipreg", "table4", "L", "B", "0.626", "lipschitz", 3, "deterministic", "", "f.txt:L1", ""],
        ["lipreg", "table4", "L", "C", "0.364", "lipschitz", 3, "deterministic", "", "f.txt:L1", ""],
        ["lipreg", "table4", "L", "D", "1.245", "lipschitz", 3, "deterministic", "", "f.txt:L1", ""],
        ["lipreg", "table1", "m", "acc", "76.3", "percent", 1, "stochastic", "", "f.txt:L2", ""],
        ["lipreg", "table1", "m", "nauc", "0.81", "fraction", 2, "stochastic", "0.05", "f.txt:L2", ""],
    ]
    layout = {"table4": {"rows": ["L"], "columns": ["A", "B", "C", "D"]},
              "table1": {"rows": ["m"], "columns": ["acc", "nauc"]}}
    claims = [
        {"id": "a-below-b", "statement": "A < B", "source": "f.txt:L1", "op": "<",
         "left": {"target": "table4", "row": "L", "column": "A"},
         "right": {"target": "table4", "row": "L", "column": "B"}},
        {"id": "a-far-below-b", "statement": "A far below B", "source": "f.txt:L1", "op": "<", "factor": 0.5,
         "left": {"target": "table4", "row": "L", "column": "A"},
         "right": {"target": "table4", "row": "L", "column": "B"}},
        {"id": "c-small", "statement": "C small", "source": "f.txt:L1", "op": "<", "right": 1.0,
         "left": {"target": "table4", "row": "L", "column": "C"}},
        {"id": "c-small-any", "statement": "C small on any data", "source": "f.txt:L1", "op": "<", "right": 1.0,
         "any_data": True, "left": {"target": "table4", "row": "L", "column": "C"}},
    ]
    return _registry(tmp_path, rows, layout, claims)


def _result(tmp_path, name, cells, scale="smoke"):
    path = tmp_path / f"{name}.csv"
    provenance.write_result(cells, path, {"scale": scale, "datasets": [], "settings_sha256": "x"})
    return path


def test_tolerance_follows_printed_precision_and_bands():
    b = Bands(percent=2.0, fraction=0.02, relative=0.1)
    assert tolerance("lipschitz", "deterministic", 3, 0.417, "", b) == pytest.approx(0.001)
    assert tolerance("percent", "deterministic", 1, 76.3, "", b) == pytest.approx(0.1)
    assert tolerance("percent", "stochastic", 1, 76.3, "", b) == 2.0
    assert tolerance("fraction", "stochastic", 2, 0.81, "", b) == 0.02
    assert tolerance("distance", "stochastic", 2, 5.0, "", b) == pytest.approx(0.5)
    assert tolerance("percent", "stochastic", 1, 76.3, "0.7", b) == 0.7


def test_verdicts(tmp_path, reg):
    t4 = _result(tmp_path, "table4", [
        dict(row="L", column="A", value=0.4175, unit="lipschitz", comparable=True,  # within 0.001: match
             dataset="fashion_mnist:fa466530ec2b"),
        dict(row="L", column="B", value=0.6290, unit="lipschitz", comparable=True),  # off by 0.003: deviates
        dict(row="L", column="C", value=0.3, unit="lipschitz", comparable=False, reason="stand-in data: digits"),
        dict(row="L", column="D", value=None, status="not run", reason="dataset cifar100 not available"),
    ])
    res = Results.from_files([t4])
    out = audit_numbers(reg, res, "smoke").set_index(["target", "column"])
    assert out.loc[("table4", "A"), "verdict"] == MATCH
    assert out.loc[("table4", "A"), "datasets"] == "fashion_mnist:fa466530ec2b"  # the cell's own data
    assert out.loc[("table4", "B"), "verdict"] == DEVIATES
    assert out.loc[("table4", "B"), "difference"] == pytest.approx(0.003)
    assert out.loc[("table4", "C"), "verdict"] == NOT_COMPARABLE
    assert "stand-in" in out.loc[("table4", "C"), "reason"]
    assert out.loc[("table4", "C"), "reproduced"] == pytest.approx(0.3)
    assert out.loc[("table4", "D"), "verdict"] == NOT_COMPARABLE
    assert "not available" in out.loc[("table4", "D"), "reason"]
    assert math.isnan(out.loc[("table4", "D"), "reproduced"])
    # a target the workflow does not produce yet
    assert out.loc[("table1", "acc"), "verdict"] == NOT_COMPARABLE
    assert out.loc[("table1", "acc"), "reason"].startswith("not run yet")


def test_stochastic_band_and_explicit_tolerance(tmp_path, reg):
    t1 = _result(tmp_path, "table1", [
        dict(row="m", column="acc", value=74.5, unit="percent", comparable=True),  # 1.8 pp off, band 2.0
        dict(row="m", column="nauc", value=0.87, unit="fraction", comparable=True),  # 0.06 off, explicit 0.05
    ])
    out = audit_numbers(reg, Results.from_files([t1]), "reduced").set_index("column")
    assert out.loc["acc", "verdict"] == MATCH
    assert out.loc["nauc", "verdict"] == DEVIATES


def test_claims(tmp_path, reg):
    t4 = _result(tmp_path, "table4", [
        dict(row="L", column="A", value=0.4, comparable=True),
        dict(row="L", column="B", value=0.6, comparable=True),
        dict(row="L", column="C", value=0.3, comparable=False, reason="stand-in data"),
    ])
    out = audit_claims(reg, Results.from_files([t4])).set_index("id")
    assert out.loc["a-below-b", "verdict"] == HOLDS
    assert out.loc["a-far-below-b", "verdict"] == FAILS  # 0.4 < 0.5 * 0.6 is false
    assert out.loc["c-small", "verdict"] == NOT_COMPARABLE
    assert "stand-in" in out.loc["c-small", "reason"]
    assert out.loc["c-small-any", "verdict"] == HOLDS


def test_claims_on_the_data_at_hand(tmp_path, reg):
    """Stand-in cells: the strict verdict stays `not comparable`, `on_this_run` says what the claim gives there."""
    standin = "digits28:262053304f5f (stand-in for mnist-like 28x28x1)"
    t4 = _result(tmp_path, "table4", [
        dict(row="L", column="A", value=0.4, comparable=True, dataset="fashion_mnist:fa466530ec2b"),
        dict(row="L", column="B", value=0.6, comparable=True, dataset="fashion_mnist:fa466530ec2b"),
        dict(row="L", column="C", value=0.3, comparable=False, reason="stand-in data", dataset=standin),
    ])
    out = audit_claims(reg, Results.from_files([t4])).set_index("id")
    assert out.loc["c-small", "verdict"] == NOT_COMPARABLE and "stand-in" in out.loc["c-small", "reason"]
    assert out.loc["c-small", "on_this_run"] == HOLDS  # 0.3 < 1.0 on the stand-in
    assert out.loc["c-small", "data"] == f"{standin}, scale smoke"
    # comparable claims: the same answer in both columns, both ways
    for cid, expected in (("a-below-b", HOLDS), ("a-far-below-b", FAILS), ("c-small-any", HOLDS)):
        assert out.loc[cid, "verdict"] == out.loc[cid, "on_this_run"] == expected, cid
    assert out.loc["a-below-b", "data"] == "fashion_mnist:fa466530ec2b, scale smoke"  # both sides' data, once

    # a stand-in cell on which the claim fails, at another scale; and a side not computed: blank
    t4b = _result(tmp_path, "table4", [
        dict(row="L", column="A", value=0.4, comparable=True),
        dict(row="L", column="C", value=1.5, comparable=False, reason="stand-in data", dataset=standin),
    ], scale="reduced")
    out = audit_claims(reg, Results.from_files([t4b])).set_index("id")
    assert out.loc["c-small", "verdict"] == NOT_COMPARABLE and out.loc["c-small", "on_this_run"] == FAILS
    assert out.loc["c-small", "data"] == f"{standin}, scale reduced"
    assert out.loc["a-below-b", "verdict"] == NOT_COMPARABLE and "not run yet" in out.loc["a-below-b", "reason"]
    assert out.loc["a-below-b", "on_this_run"] == "" and out.loc["a-below-b", "data"] == ""


def test_summary_lists_claims_on_the_data_at_hand(tmp_path, reg, monkeypatch):
    import advrep.audit.report as report

    monkeypatch.setattr(report, "load", lambda paper: reg)
    t4 = _result(tmp_path, "table4", [
        dict(row="L", column="A", value=0.4, comparable=True),
        dict(row="L", column="C", value=0.3, comparable=False, reason="stand-in data", dataset="digits28:abc"),
    ])
    files = (tmp_path / "lipreg.csv", tmp_path / "lipreg.claims.csv")
    audit_paper("lipreg", [t4], "smoke", *files)
    on_disk = pd.read_csv(files[1]).set_index("id")  # the columns survive the CSV round trip
    assert on_disk.loc["c-small", "verdict"] == NOT_COMPARABLE and on_disk.loc["c-small", "on_this_run"] == HOLDS
    text = write_summary("smoke", {"lipreg": files}, tmp_path / "summary.md")
    section = text.split("### Claims on the data at hand (not a replication verdict)\n", 1)[1]
    assert "2 hold, 0 fail, 2 not computed, of 4" in section
    row = next(ln for ln in section.splitlines() if ln.startswith("| c-small |"))
    assert "| holds | digits28:abc, scale smoke |" in row
    row = next(ln for ln in section.splitlines() if ln.startswith("| a-below-b |"))
    assert "| not computed |" in row


def test_claims_not_run(reg):
    out = audit_claims(reg, Results()).set_index("id")
    assert (out["verdict"] == NOT_COMPARABLE).all()
    assert out["reason"].str.contains("not run yet").all()
    # both sides not comparable for the same reason: the reason is given once
    for r in out["reason"]:
        parts = r.split("; ")
        assert len(parts) == len(set(parts)), r


def test_audit_files_and_summary(tmp_path, reg, monkeypatch):
    import advrep.audit.report as report

    monkeypatch.setattr(report, "load", lambda paper: reg)
    t4 = _result(tmp_path, "table4", [dict(row="L", column="A", value=0.4172, comparable=True)])
    num, cl = audit_paper("lipreg", [t4], "smoke", tmp_path / "a" / "lipreg.csv", tmp_path / "a" / "lipreg.claims.csv")
    assert (tmp_path / "a" / "lipreg.csv").exists() and (tmp_path / "a" / "lipreg.claims.csv").exists()
    assert list(tmp_path.joinpath("a").glob(".*")) == []  # no temporary files left
    text = write_summary("smoke", {"lipreg": (tmp_path / "a" / "lipreg.csv", tmp_path / "a" / "lipreg.claims.csv")},
                         tmp_path / "summary.md")
    assert "| lipreg | 6 | 1 | 0 | 5 |" in text
    assert (tmp_path / "summary.md").read_text() == text
    assert "not run yet" in summary_markdown("smoke", {"lipreg": (num, cl)})


def test_shape_problems_catch_a_missing_cell_and_bad_decimals(tmp_path):
    rows = [["lipreg", "table4", "L", "A", "0.41", "lipschitz", 3, "deterministic", "", "f.txt:L1", ""]]
    reg = _registry(tmp_path, rows, {"table4": {"rows": ["L"], "columns": ["A", "B"]}}, [])
    probs = shape_problems(reg)
    assert any("decimals 3" in p for p in probs)
    assert any("'L'/'B' has no number" in p for p in probs)


def test_result_frame_rejects_bad_rows():
    with pytest.raises(ValueError, match="needs a reason"):
        provenance.result_frame([dict(row="r", column="c", value=None, status="not run")])
    with pytest.raises(ValueError, match="duplicate"):
        provenance.result_frame([dict(row="r", column="c", value=1.0), dict(row="r", column="c", value=2.0)])
    with pytest.raises(ValueError, match="unknown status"):
        provenance.result_frame([dict(row="r", column="c", value=1.0, status="done")])
