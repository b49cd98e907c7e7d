"""Protocol authoring: every problem of a file at once, `kfaclab protocol new/check/keys`, and the
key reference (study/keys.py, docs/protocol.md) held to what protocol.py actually reads."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import optuna
import pytest

from kfaclab.cli.main import main
from kfaclab.errors import UsageError
from kfaclab.study import _schema as s
from kfaclab.study.keys import KEYS, TABLES
from kfaclab.study.keys_doc import reference_markdown, template
from kfaclab.study.protocol import load_protocol, parse_protocol

REPO = Path(__file__).resolve().parents[1]

# A natural first protocol with five problems that used to take five runs to find (review F11),
# plus two bad values and a misspelt key.
FIRST_TRY = """
[protocol]
name = "mine"
[data]
dataset = "mnist"
[model]
depth = 3
width = 50
[cells]
sgd = true
lambdas = [1e-3, -1, "x"]
[search]
n_trials = 5
top_k = 9
lrr = { low = 1e-3, high = 1 }
"""
FIRST_TRY_PROBLEMS = [
    "[training] is required",
    "cells.lambdas[1] must be > 0, got -1",
    "cells.lambdas[2] must be a number, got 'x'",
    "unknown key 'search.lrr'; allowed: n_trials, top_k, sampler, seed, trial_seeds, lr, lr_scale,"
    " strategy_lr_scale,"
    " lr_decay, momentum, kl_clip, kl_clip_lr; did you mean 'lr'?",
    "search.lr is required",
    "search.lr_decay is required",
    "search.momentum is required",
    "search.top_k must be <= search.n_trials (5), got 9",
]


def _template() -> dict[str, Any]:
    return tomllib.loads(template())


def test_every_problem_of_a_file_at_once() -> None:
    with pytest.raises(s.ProtocolError) as caught:
        parse_protocol(tomllib.loads(FIRST_TRY))
    assert list(caught.value.messages) == FIRST_TRY_PROBLEMS
    assert str(caught.value) == "\n".join(FIRST_TRY_PROBLEMS)
    assert isinstance(caught.value, UsageError)  # callers that catch UsageError still do


def test_cli_prints_one_problem_per_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "first.toml"
    path.write_text(FIRST_TRY)
    assert main(["protocol", "check", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"kfaclab: error: {m}" for m in FIRST_TRY_PROBLEMS]


def test_follow_on_problems_of_a_placeholder_are_not_reported() -> None:
    # n_trials is bad, so top_k cannot be compared with it; a missing [search] hides its keys.
    raw = _template()
    raw["search"]["n_trials"] = 0
    raw["report"] = {"histogram_lambdas": [5.0]}
    raw["cells"]["lambdas"] = [1e-3, "x"]
    with pytest.raises(s.ProtocolError) as caught:
        parse_protocol(raw)
    assert caught.value.messages == (
        "cells.lambdas[1] must be a number, got 'x'",
        "search.n_trials must be >= 1, got 0",
    )
    raw = _template()
    del raw["search"]
    with pytest.raises(s.ProtocolError) as caught:
        parse_protocol(raw)
    assert caught.value.messages == ("[search] is required",)


def test_a_single_problem_reads_as_before() -> None:
    raw = _template()
    raw["training"]["factor_decay"] = 1.0
    with pytest.raises(UsageError, match=r"^training\.factor_decay must be < 1\.0, got 1\.0$"):
        parse_protocol(raw)
    # outside parse_protocol the helpers still raise at the first problem
    with pytest.raises(UsageError, match="x must be an integer"):
        s.integer("1", "x")


def test_template_loads_and_new_writes_it_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "study.toml"
    assert main(["protocol", "new", "--out", str(out), "--name", "probe"]) == 0
    protocol = load_protocol(out)
    assert protocol.name == "probe"
    assert (protocol.cells.sgd, protocol.cells.lambdas) == (True, (1e-3, 1e-1, 10.0))
    assert main(["protocol", "new", "--out", str(out)]) == 2  # never overwritten
    assert "--out must not exist" in capsys.readouterr().err
    assert main(["protocol", "check", str(out)]) == 0
    assert "protocol 'probe' is valid: 4 cells × 30 trials of 469 steps" in capsys.readouterr().out


def _accepted_keys() -> tuple[set[str], set[str]]:
    """The keys protocol.py reads in the seven tables (an MLP and a CNN file), and the required."""
    accepted: set[str] = set()
    required: set[str] = set()
    cnn = _template()
    cnn["model"] = {"kind": "cnn"}
    for raw in (_template(), cnn):
        with s.tracing() as seen:
            parse_protocol(raw)
        assert seen[""][0] == TABLES
        for path, (allowed, req) in seen.items():
            if path in TABLES:
                accepted |= {f"{path}.{k}" for k in allowed}
                required |= {f"{path}.{k}" for k in req}
    return accepted, required


def test_reference_lists_exactly_the_keys_the_code_reads() -> None:
    accepted, required = _accepted_keys()
    assert {k.path for k in KEYS} == accepted
    # depth and width are required for an MLP only (a CNN refuses them): documented in their text
    assert {k.path for k in KEYS if k.required} == required - {"model.depth", "model.width"}
    assert all("required for it" in k.doc for k in KEYS if k.path in ("model.depth", "model.width"))


@pytest.mark.parametrize("key", [k for k in KEYS if k.default is not None], ids=lambda k: k.path)
def test_documented_default_is_what_the_code_uses(key: Any) -> None:
    table, name = key.path.split(".", 1)
    absent = _template()
    absent[table].pop(name, None)
    given = _template()
    given[table][name] = tomllib.loads(f"v = {key.default}")["v"]
    assert parse_protocol(given) == parse_protocol(absent)  # every field (raw is not compared)


def test_docs_page_is_generated_from_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    page = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert page == reference_markdown(), "regenerate: kfaclab protocol keys > docs/protocol.md"
    assert main(["protocol", "keys"]) == 0
    assert capsys.readouterr().out == page
    for key in KEYS:
        assert f"| `{key.name}` |" in page


@pytest.mark.parametrize("n_trials", [1, 2, 3, 10, 29, 30, 31, 300])
def test_tpe_startup_trials_are_what_the_reference_says(
    n_trials: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kfaclab.study.cells import build_cells
    from kfaclab.study.sweep import make_sampler

    seen: list[int] = []
    real = optuna.samplers.TPESampler

    def recording(*args: Any, **kwargs: Any) -> optuna.samplers.BaseSampler:
        seen.append(kwargs["n_startup_trials"])
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.samplers, "TPESampler", recording)
    raw = _template()
    raw["search"]["n_trials"] = n_trials
    raw["search"]["top_k"] = 1
    protocol = parse_protocol(raw)
    make_sampler(protocol, build_cells(protocol)[0], 0)
    assert seen == [min(10, max(1, n_trials // 3))]
    assert "min(10, max(1, n_trials // 3))" in reference_markdown()


def test_python_m_kfaclab_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kfaclab", "protocol", "new"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == template()


def test_template_strategy_example_loads_when_uncommented() -> None:
    text = template()
    block = text[text.index("# [[cells.strategies]]") :].split("\n\n", 1)[0]
    uncommented = "\n".join(line.removeprefix("# ") for line in block.splitlines())
    protocol = parse_protocol(tomllib.loads(text.replace(block, uncommented)))
    (lm,) = protocol.cells.strategies
    assert (lm.name, lm.kind, [k for k, _ in lm.search]) == ("lm", "levenberg_marquardt", ["omega"])


def test_problems_inside_strategy_entries_are_all_reported() -> None:
    raw = _template()
    raw["cells"]["strategies"] = [
        {"name": "a b", "kind": "levenberg_marquardt", "initial": -1.0},
        {"kind": "constant", "valu": 1.0},
    ]
    with pytest.raises(s.ProtocolError) as caught:
        parse_protocol(raw)
    assert caught.value.messages[1:] == (
        "cells.strategies[0].name must use letters, digits, '-', '_', '.', got 'a b'",
        "unknown key 'cells.strategies[1].valu'; allowed: name, kind, search, value; "
        "did you mean 'value'?",
        "cells.strategies[1].name is required",
    )
    # the damping package's own check of the constants, prefixed with the entry
    assert caught.value.messages[0].startswith("cells.strategies[0]: ")
    assert "initial" in caught.value.messages[0]
