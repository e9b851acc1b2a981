"""The published-numbers registry: complete, consistent shape, claims that name real cells."""

import pytest

from advrep import PAPERS
from advrep.audit import load, shape_problems


@pytest.mark.parametrize("paper", PAPERS)
def test_registry_shape_is_consistent(paper):
    reg = load(paper)
    assert shape_problems(reg) == []


@pytest.mark.parametrize("paper", PAPERS)
def test_every_listed_table_has_numbers_or_is_declared_empty(paper):
    reg = load(paper)
    for target, spec in reg.layout.items():
        cells = len(spec.get("rows") or []) * len(spec.get("columns") or [])
        blanks = len(spec.get("blanks") or [])
        assert (reg.numbers["target"] == target).sum() == cells - blanks, target


def test_targets_named_in_papers_readme_are_in_the_registry():
    expected = {
        "abstain": {"table1", "figure1"},
        "lipreg": {"figure1", "table1", "table2", "table3", "table4", "table5", "table6", "figure2", "figure3",
                   "figure4"},
        "sonet": {"table1", "table2", "table3", "table4"},
        "voronoi": {"figure1", "figure2", "figure3", "figure4", "figure5"},
        "oaat": {"figure1", "table1", "table2"},
    }
    for paper, targets in expected.items():
        assert targets <= set(load(paper).layout), paper


def test_source_lines_hold_the_numbers():
    """Each registry value appears on the paper line its source names (checks transcription, not just shape)."""
    from pathlib import Path

    papers_dir = Path(__file__).resolve().parents[2] / "shared" / "papers"
    if not papers_dir.exists():
        pytest.skip("../shared/papers not beside this checkout")
    misses = []
    for paper in PAPERS:
        reg = load(paper)
        for _, r in reg.numbers.iterrows():
            fname, line = r["source"].rsplit(":L", 1)
            text = (papers_dir / fname).read_text().splitlines()[int(line) - 1]
            digits = r["value"].lstrip("+-").lstrip("0").replace(".", "") or "0"
            if digits.lstrip("0") and digits.lstrip("0")[:2] not in text.replace(".", "").replace(" ", ""):
                misses.append((paper, r["target"], r["row"], r["column"], r["value"], r["source"]))
    assert misses == []


def test_table4_published_values_are_the_papers():
    reg = load("lipreg")
    t4 = reg.numbers[reg.numbers["target"] == "table4"].set_index("column")
    assert set(t4.index) == {"MNIST", "FashionMNIST", "CIFAR-10", "CIFAR-100"}
    assert (t4["kind"] == "deterministic").all()
