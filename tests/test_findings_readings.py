"""FINDINGS.md's readings table: each assessment kept under docs/results read back as it is
stored (the base reading's first), with no section while only the base reading has one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kfaclab.analysis.findings.readings import readings_section, readings_sentence

STORED = Path(__file__).resolve().parents[1] / "docs" / "results" / "verdicts" / "verdicts.json"


def test_one_reading_has_no_section_two_are_side_by_side(tmp_path: Path) -> None:
    (tmp_path / "verdicts").mkdir()
    shutil.copy(STORED, tmp_path / "verdicts" / "verdicts.json")
    assert readings_section(tmp_path) == [] and readings_sentence(tmp_path) == ""
    other = json.loads(STORED.read_text(encoding="utf-8"))
    other["replications"], other["n_units"] = ["paper-popular-noclip"], 10
    c1 = next(c for c in other["claims"] if c["key"] == "C1")
    c1["verdict"], c1["finding"] = "reproduced", "lowest: λ=1e+00 (0.05); more"
    (tmp_path / "verdicts-popular").mkdir()
    (tmp_path / "verdicts-popular" / "verdicts.json").write_text(json.dumps(other))
    lines = readings_section(tmp_path)
    header = next(line for line in lines if line.startswith("| claim |"))
    assert header.index("`paper-seed2`") < header.index("`paper-popular-noclip`")
    assert "(3 replications, 30 seeds)" in header and "(1 replication, 10 seeds)" in header
    row = next(line for line in lines if line.startswith("| C1 |"))
    assert row.endswith("| **holds**: lowest: λ=1e+00 (0.05) |")  # first clause only
    assert "| **does not hold**: lowest: λ=1e-01 (0.126) |" in row
    c3 = next(line for line in lines if line.startswith("| C3 |"))
    assert "(30 of 30 positive; replications +0.178, +0.227, +0.238) |" in c3  # brackets whole
    sentence = readings_sentence(tmp_path)
    assert sentence.startswith(" The same tests in other readings: `paper-popular-noclip` (1 ")
    assert "C1 holds, C2 holds, C3 holds, C4 does not hold, C5 holds; the crossing does not" in (
        sentence
    )


def test_a_page_of_ones_own_protocol_is_not_a_reading(tmp_path: Path) -> None:
    """The adaptive rules' page (`[claims] paper = false`) holds no paper claims and is left out."""
    (tmp_path / "verdicts").mkdir()
    shutil.copy(STORED, tmp_path / "verdicts" / "verdicts.json")
    own = json.loads(STORED.read_text(encoding="utf-8"))
    own["replications"], own["paper_claims"], own["claims"] = ["adaptive-fair"], False, []
    (tmp_path / "verdicts-adaptive-fair").mkdir()
    (tmp_path / "verdicts-adaptive-fair" / "verdicts.json").write_text(json.dumps(own))
    assert readings_section(tmp_path) == [] and readings_sentence(tmp_path) == ""
