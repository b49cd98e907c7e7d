"""A factorial design kept in a real PostgreSQL server, as several machines would share it:
`kfaclab sweep DESIGN.toml --storage URL`, then `status`, `replicate` (its reruns through the
database's queue, written into each run's folder) and `effects` on the design's folder with the
same URL. The server comes from scripts/start-postgres.sh (CI: .ci/run); see test_postgres.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kfaclab.cli.main import main
from test_design_sweep import DESIGN

pytestmark = pytest.mark.postgres


def test_a_design_in_postgres_from_sweep_to_effects(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "design.toml"
    path.write_text(DESIGN)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--storage", postgres_url]) == 0
    assert (out / "design.json").exists() and not (out / "run01-seed0").exists()  # all in the DB
    capsys.readouterr()

    assert main(["status", str(out), "--storage", postgres_url]) == 0
    table = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert all(table[f"run0{i}-seed{s}"].split()[1] == "6/6" for i in range(1, 5) for s in (0, 1))
    assert "8 of 8 runs done" in table["all"]

    smallest = "kfac-lam=1e-02"
    args = ["replicate", str(out), "--storage", postgres_url, "--cells", smallest]
    assert main([*args, "--top", "1", "--seeds", "2"]) == 0
    for run in ("run01-seed0", "run04-seed1"):
        rows = (out / run / "paired-reruns.jsonl").read_text().splitlines()
        assert len(rows) == 2 and all(json.loads(r)["cell"] == smallest for r in rows)

    report = tmp_path / "effects"
    effects = ["effects", str(out), "--storage", postgres_url, "--out", str(report)]
    assert main([*effects, "--responses", "smallest_lambda_rerun_divergence"]) == 0
    data = json.loads((report / "effects.json").read_text())
    values = [r["values"]["smallest_lambda_rerun_divergence"] for r in data["runs"]]
    assert len(values) == 8 and all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values)
