"""`kfaclab dashboard`: optuna-dashboard's own server, started by the real command on a study that
the real `kfaclab sweep configs/smoke.toml` wrote, asked over HTTP on 127.0.0.1 for what a browser
asks (its JSON API and artifact routes); its answers are checked against the study's records."""

from __future__ import annotations

import gzip
import json
import os
import queue
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kfaclab.cli.main import main
from kfaclab.study import load_study_set, records
from kfaclab.study.curves import sampled_steps
from kfaclab.study.registry import index_study_name

pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is in requirements-dev.txt")

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.toml"
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smoke")
    assert main(["sweep", str(SMOKE), "--out", str(out)]) == 0
    return out


def start_dashboard(*args: str) -> tuple[subprocess.Popen[str], str]:
    """`kfaclab dashboard ARGS --port 0` and the URL it prints (waited for, at most 60 s)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kfaclab.cli.main", "dashboard", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    lines: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout
    assert stdout is not None
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        first = lines.get(timeout=60)
    except queue.Empty:
        proc.kill()
        raise AssertionError("kfaclab dashboard printed no URL within 60 s") from None
    assert first.startswith("kfaclab dashboard: http://127.0.0.1:"), first
    return proc, first.split()[2]


@pytest.fixture(scope="module")
def dashboard(smoke_study: Path) -> Iterator[str]:
    proc, url = start_dashboard(str(smoke_study))
    yield url
    proc.terminate()
    proc.wait(10)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        data: bytes = response.read()
    return data


def get_json(url: str) -> Any:
    return json.loads(get(url))


def test_dashboard_lists_the_studies_with_a_named_index(dashboard: str) -> None:
    names = {s["study_name"] for s in get_json(dashboard + "api/studies")["study_summaries"]}
    assert names == {
        index_study_name("smoke"),
        "smoke/sgd",
        "smoke/kfac-lam=1e-03",
        "smoke/kfac-lam=1e+00",
    }


def test_dashboard_serves_learning_curves_and_records(dashboard: str, smoke_study: Path) -> None:
    study_set = load_study_set(str(smoke_study))
    ours = {(f"smoke/{t.cell}", t.number): t for t in study_set.trials}
    seen = 0
    for summary in get_json(dashboard + "api/studies")["study_summaries"]:
        detail = get_json(f"{dashboard}api/studies/{summary['study_id']}")
        for trial in detail["trials"]:
            stored = ours[(summary["study_name"], trial["number"])]
            assert stored.record is not None
            losses = stored.record.step_losses
            curve = {v["step"]: v["value"] for v in trial["intermediate_values"]}
            expected = {t: losses[t] for t in sampled_steps(len(losses), 20)}  # smoke: 20 steps
            assert curve == {t: "inf" if v == float("inf") else v for t, v in expected.items()}
            # The objective is what Optuna holds: finite even for a diverged trial.
            value = trial["values"][0]
            if stored.status == "diverged":
                assert value == 10 * study_set.protocol["training"].get("divergence_loss", 1e3)
            else:
                assert value == stored.value
            attrs = {a["key"] for a in trial["user_attrs"]}
            assert attrs == {"seed", "status", "seconds", "test_accuracy"}
            (artifact,) = trial["artifacts"]
            assert artifact["filename"] == "record.json.gz"
            blob = get(
                f"{dashboard}artifacts/{summary['study_id']}/{trial['trial_id']}/"
                f"{artifact['artifact_id']}"
            )
            assert records.decode_record(blob) == stored.record
            assert json.loads(gzip.decompress(blob))["steps_done"] == stored.record.steps_done
            seen += 1
    assert seen == len(study_set.trials) == 9


def test_dashboard_without_optuna_dashboard_is_one_line() -> None:
    # sys.modules[name] = None is how Python itself marks a module as not importable.
    code = (
        "import sys; sys.modules['optuna_dashboard'] = None; "
        "from kfaclab.cli.main import main; sys.exit(main(['dashboard', '.']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "kfaclab: error: kfaclab dashboard needs optuna-dashboard, which is not installed: "
        "pip install optuna-dashboard==0.21.0"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "--port must be in 0..65535, got 70000"),
        ([], "does not exist"),
    ],
)
def test_dashboard_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["dashboard", str(tmp_path / "nothing"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_dashboard_port_in_use_is_one_line(
    smoke_study: Path, dashboard: str, capsys: pytest.CaptureFixture[str]
) -> None:
    port = dashboard.rsplit(":", 1)[1].strip("/")
    assert main(["dashboard", str(smoke_study), "--port", port]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"127.0.0.1:{port} cannot be listened on" in err[0], err
