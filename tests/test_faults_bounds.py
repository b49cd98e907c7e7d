"""Bounds on what a file or flag may ask for (issue 29, F15-F17, F21 and the BOM): refused in
one line before anything is stored or allocated."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cli_helpers import MNIST, REPO, one_line, tiny_protocol
from kfaclab.cli.main import main
from kfaclab.study.protocol import load_protocol


def sweep_refuses(capsys: pytest.CaptureFixture[str], tmp_path: Path, config: Path) -> str:
    out = tmp_path / "s"
    err = one_line(capsys, ["sweep", str(config), "--out", str(out)])
    assert not (out / "studies.journal").exists()
    return err


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        (
            "steps = 2\n",
            "steps = 1000000000000\n",
            "at most 10000000 steps per trial, got 1000000000000",
        ),
        ("steps = 2\neval_steps = [2]\n", "epochs = 100000000\n", "at most 10000000 steps"),
        ('name = "tiny"', f'name = "{"n" * 300}"', "protocol.name must be at most 200 characters"),
        ('name = "tiny"', 'name = "a\\u0000b"', "must not contain control characters"),
        ('name = "tiny"', 'name = "esc\\u001b]0;T\\u0007"', "must not contain control characters"),
    ],
)
def test_protocol_bounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, words: str
) -> None:
    config = tiny_protocol(tmp_path)
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))
    err = sweep_refuses(capsys, tmp_path, config)
    assert words in err, err


@pytest.mark.parametrize("nested", ["[" * 100_000 + "]" * 100_000, "{a=" * 5000 + "1" + "}" * 5000])
def test_deeply_nested_toml_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nested: str
) -> None:
    config = tiny_protocol(tmp_path)
    config.write_text(config.read_text().replace("[model]", f"extra = {nested}\n[model]", 1))
    err = sweep_refuses(capsys, tmp_path, config)
    assert "must nest tables and arrays at most 16 deep" in err, err
    train = tmp_path / "train.toml"
    train.write_text(f"lr = {nested}\n")
    err = one_line(capsys, ["train", "--config", str(train), "--data-dir", str(MNIST)])
    assert "must nest arrays and tables at most 16 deep" in err, err


def test_a_strategy_name_that_no_storage_can_hold_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_protocol(tmp_path)
    strategy = f'[[cells.strategies]]\nname = "{"s" * 300}"\nkind = "constant"\nvalue = 1.0\n'
    config.write_text(config.read_text().replace("[search]", strategy + "[search]"))
    err = sweep_refuses(capsys, tmp_path, config)
    assert "cells.strategies[0].name must be at most 200 characters" in err, err


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    config = tiny_protocol(tmp_path)
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    assert load_protocol(config).name == "tiny"
    train = tmp_path / "train.toml"
    train.write_bytes(b"\xef\xbb\xbfsteps = 1\n")
    from kfaclab.cli.train_cmd import load_toml

    assert load_toml(train) == {"steps": 1}


def test_train_refuses_unbounded_steps(capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line(capsys, ["train", "--steps", str(10**12), "--data-dir", str(MNIST)])
    assert "at most 10000000 steps, got 1000000000000" in err, err


def test_dashboard_refuses_an_empty_host(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("optuna_dashboard")
    err = one_line(capsys, ["dashboard", str(tmp_path), "--host", "", "--port", "0"])
    assert "--host must name an address, got ''" in err


def test_dashboard_answers_only_its_own_host_names(tmp_path: Path) -> None:
    pytest.importorskip("optuna_dashboard")
    assert main(["sweep", str(tiny_protocol(tmp_path)), "--out", str(tmp_path / "s")]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    argv = [sys.executable, "-m", "kfaclab.cli.main", "dashboard", str(tmp_path / "s")]
    proc = subprocess.Popen(
        [*argv, "--port", "0", "--allow-host", "lab.example"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[2]  # "kfaclab dashboard: http://127.0.0.1:PORT/ …"
        port = url.rsplit(":", 1)[1].strip("/")

        def status(host: str) -> int:
            request = urllib.request.Request(url + "api/studies", headers={"Host": host})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert status(f"127.0.0.1:{port}") == 200
        assert status(f"localhost:{port}") == 200
        assert status("lab.example") == 200
        assert status(f"attacker.example:{port}") == 403  # DNS rebinding: refused
        assert status("127.0.0.1.attacker.example") == 403
    finally:
        proc.terminate()
        proc.wait(timeout=30)
