"""Protocol files: strict validation, cells, conventions; bad input exits 2 with one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kfaclab.errors import UsageError
from kfaclab.study._schema import first_difference
from kfaclab.study.cells import build_cells, format_lambda, search_space
from kfaclab.study.protocol import load_protocol, parse_protocol

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SMOKE = (CONFIGS / "smoke.toml").read_text()


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "kfaclab.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )


SHIPPED = ["paper", "paper-linear", "paper-b2", "quick", "smoke", "adaptive", "adaptive-quick"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_protocols_load(name: str) -> None:
    protocol = load_protocol(CONFIGS / f"{name}.toml")
    assert protocol.name == name
    cells = build_cells(protocol)
    assert len({c.name for c in cells}) == len(cells)


def test_paper_protocols_have_the_reference_shape() -> None:
    for name, activation in (("paper", "relu"), ("paper-linear", "identity")):
        p = load_protocol(CONFIGS / f"{name}.toml")
        assert p.model.activation == activation
        assert (p.search.n_trials, p.search.top_k) == (300, 100)
        assert p.cells.sgd and p.cells.lambdas == tuple(10.0**e for e in range(-5, 3))
        assert (p.training.batch_size, p.training.total_steps) == (128, 469)
    quick = load_protocol(CONFIGS / "quick.toml")
    paper = load_protocol(CONFIGS / "paper.toml")
    assert [c.name for c in build_cells(quick)] == [c.name for c in build_cells(paper)]


def test_b2_convention_converts_with_the_library_function() -> None:
    p = load_protocol(CONFIGS / "paper-b2.toml")
    kfac = [c for c in build_cells(p) if c.optimizer == "kfac"]
    b = p.training.batch_size
    # ours = B² × theirs (kfaclab.curvature.conventions)
    assert [c.damping for c in kfac] == [lam * b * b for lam in sorted(p.cells.lambdas)]
    assert kfac[0].name == "kfac-lam_b2=1e-05"
    assert kfac[0].damping_label == "1e-05 (B²-scaled)"


def test_cell_names_and_labels() -> None:
    assert format_lambda(1e-3) == "1e-03"
    assert format_lambda(2.5e-4) == "2.5e-04"
    p = load_protocol(CONFIGS / "smoke.toml")
    names = [c.name for c in build_cells(p)]
    assert names == ["sgd", "kfac-lam=1e-03", "kfac-lam=1e+00"]


def test_strategy_cells_fixed_and_searched_constants() -> None:
    raw = tomllib.loads(SMOKE)
    raw["cells"]["strategies"] = [
        {"name": "lm", "kind": "levenberg_marquardt", "initial": 1.0,
         "search": {"omega": {"low": 0.5, "high": 0.99}}},
    ]  # fmt: skip
    p = parse_protocol(raw)
    cell = build_cells(p)[-1]
    assert cell.name == "kfac-lm"
    assert cell.damping == {"kind": "levenberg_marquardt", "initial": 1.0}
    assert set(search_space(p, cell)) == {"lr", "lr_decay", "momentum", "damping.omega"}


def test_strategy_constant_misspelt_names_allowed_keys() -> None:
    raw = tomllib.loads(SMOKE)
    raw["cells"]["strategies"] = [{"name": "lm", "kind": "levenberg_marquardt", "intial": 1.0}]
    with pytest.raises(UsageError, match="did you mean 'initial'"):
        parse_protocol(raw)


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def apply(raw: dict[str, Any]) -> None:
        *parents, key = path.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[key] = value

    return apply


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set("protocol.author", "x"), "unknown key 'protocol.author'; allowed: name, description"),
        (_set("training.epochs", 1), "give epochs or steps, not both"),
        (_set("search.top_k", 0), "search.top_k must be >= 1, got 0"),
        (_set("search.lr", {"low": 0.0, "high": 1.0, "log": True}), "must be > 0 when log"),
        (_set("training.histogram_steps", [60]), "must be <= the number of steps"),
        (_set("search.sampler", "cmaes"), "search.sampler must be one of tpe, gp, random"),
        (_set("search.n_trials", True), "search.n_trials must be an integer, got True"),
        (_set("search.momentum", {"low": 0.0, "high": 1.0}), "search.momentum must lie"),
        (_set("report.histogram_lambdas", [5.0]), "must be values of cells.lambdas"),
        (_set("cells.lambdas", [1.0, -1.0]), "cells.lambdas[1] must be > 0"),
        (_set("model.depth", 0), "model.depth must be >= 1, got 0"),
    ],
)
def test_invalid_values_in_process(mutate: Callable[[dict[str, Any]], None], message: str) -> None:
    raw = tomllib.loads(SMOKE)
    mutate(raw)
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_protocol(raw)


# The CLI cases the issue lists: each exits 2 with exactly one line naming the problem.
CLI_CASES = {
    "unknown-key": (("sampler = ", "samplr = "), "unknown key 'search.samplr'", "did you mean"),
    "negative-trials": (("n_trials = 3", "n_trials = -3"), "search.n_trials must be >= 1", "-3"),
    "empty-grid": (("lambdas = [1e-3, 1.0]", "lambdas = []"), "cells.lambdas", "got []"),
    "top-k": (("top_k = 2", "top_k = 5"), "search.top_k must be <= search.n_trials (3)", "5"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_bad_protocol_exits_2_with_one_line(case: str, tmp_path: Path) -> None:
    (old, new), *needles = CLI_CASES[case]
    # The file lives in configs/' place so its relative data_dir still resolves.
    config = tmp_path / "bad.toml"
    config.write_text(SMOKE.replace(old, new, 1))
    result = run_cli("sweep", str(config), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]
    assert not (tmp_path / "out" / "studies.journal").exists()


def test_unreachable_storage_exits_2_without_password(tmp_path: Path) -> None:
    url = "postgresql://kfaclab:s3cret@127.0.0.1:1/kfaclab"
    result = run_cli("sweep", str(CONFIGS / "smoke.toml"), "--storage", url)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "kfaclab: error: cannot reach storage postgresql://kfaclab@127.0.0.1:1/kfaclab: "
        "connection refused"
    ]
    status = run_cli("status", "--storage", url)
    assert status.returncode == 2 and "s3cret" not in status.stderr


def test_status_of_missing_folder_exits_2(tmp_path: Path) -> None:
    result = run_cli("status", str(tmp_path / "nothing"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"kfaclab: error: no studies in {tmp_path / 'nothing'}: "
        f"{tmp_path / 'nothing' / 'studies.journal'} does not exist"
    ]


def test_first_difference_names_the_key() -> None:
    a = {"search": {"n_trials": 3, "lr": {"low": 1e-3}}, "cells": {"lambdas": [1.0, 2.0]}}
    b = {"search": {"n_trials": 3, "lr": {"low": 1e-2}}, "cells": {"lambdas": [1.0, 2.0]}}
    assert first_difference(a, b) == ("search.lr.low", 1e-3, 1e-2)
    assert first_difference(a, a) is None
    assert first_difference({"x": 1}, {"x": 1.0}) is None
    assert first_difference({"x": [1]}, {"x": [1, 2]}) == ("x", [1], [1, 2])


@pytest.mark.parametrize("name", ["adaptive", "adaptive-quick"])
def test_adaptive_protocols_run_every_strategy_beside_fixed_lambda_and_sgd(name: str) -> None:
    """Every strategy kind is a cell; each builds a trial config the trial runner accepts, with
    its searched constants (at the middle of their ranges) in the damping spec."""
    from kfaclab.damping import KINDS, build_damping
    from kfaclab.study.cells import search_space
    from kfaclab.study.sweep import trial_config
    from kfaclab.train import validate_config

    p = load_protocol(CONFIGS / f"{name}.toml")
    cells = build_cells(p)
    kinds = {s.kind for s in p.cells.strategies}
    assert kinds == set(KINDS) - {"constant", "linear_decay"}
    assert p.cells.sgd and len(p.cells.lambdas) == 1
    for cell in cells:
        space = search_space(p, cell)
        params = {
            key: (r.low * r.high) ** 0.5 if r.log else (r.low + r.high) / 2
            for key, r in space.items()
        }
        config = trial_config(p, cell, params, p.search.seed)
        validate_config(config)
        if isinstance(config.damping, dict):
            build_damping(config.damping)
            searched = {k.split(".", 1)[1] for k in space if k.startswith("damping.")}
            assert searched and searched <= set(config.damping)


def test_lr_scale_lambda_scales_each_lambda_cell_in_our_convention() -> None:
    raw = tomllib.loads(SMOKE)
    raw["search"]["lr"] = {"low": 1e-4, "high": 1e3, "log": True}
    raw["search"]["lr_scale"] = "lambda"
    raw["cells"]["lambda_convention"] = "b2_scaled"
    raw["cells"]["strategies"] = [{"name": "lm", "kind": "levenberg_marquardt", "initial": 1.0}]
    p = parse_protocol(raw)
    b2 = raw["training"]["batch_size"] ** 2
    ranges = {c.name: search_space(p, c)["lr"] for c in build_cells(p)}
    assert (ranges["sgd"].low, ranges["sgd"].high) == (1e-4, 1e3)
    assert (ranges["kfac-lm"].low, ranges["kfac-lm"].high) == (1e-4, 1e3)  # no constant λ
    for lam in raw["cells"]["lambdas"]:
        r = ranges[f"kfac-lam_b2={format_lambda(lam)}"]
        assert r.low == pytest.approx(1e-4 * lam * b2) and r.high == pytest.approx(1e3 * lam * b2)
        assert r.log


def test_lr_scale_rejects_unknown_values() -> None:
    raw = tomllib.loads(SMOKE)
    raw["search"]["lr_scale"] = "lam"
    with pytest.raises(UsageError, match=r"search\.lr_scale.*none.*lambda"):
        parse_protocol(raw)
