"""What `pip install kfaclab` ships: the presets inside the package (checked in a real wheel),
dependency ranges that never replace a user's torch, one version written once, and the files
users expect (LICENSE, CITATION.cff, CHANGELOG.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import kfaclab
from kfaclab.cli.reproduce_cmd import PRESETS, preset_path
from kfaclab.study.protocol import load_protocol

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGED = Path(kfaclab.__file__).resolve().parent / "configs"


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_is_inside_the_package_and_loads(name: str) -> None:
    path = preset_path(name)
    assert path.resolve() == (PACKAGED / f"{name}.toml").resolve()
    assert load_protocol(path).name  # parses under the strict schema


def test_wheel_contains_the_presets_and_the_license(tmp_path: Path) -> None:
    # Built from a copy of the source (no build/ in the checkout) with this venv's setuptools.
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("kfaclab-*.whl")
    assert wheel.name.startswith(f"kfaclab-{kfaclab.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"kfaclab/configs/{p}.toml" for p in PRESETS} <= names
    assert {"kfaclab/__main__.py", "kfaclab/py.typed"} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_dependencies_are_lower_bounds_and_extras_exist() -> None:
    project = PYPROJECT["project"]
    torch = next(d for d in project["dependencies"] if d.startswith("torch"))
    assert torch.startswith("torch>=") and "<" not in torch and "," not in torch
    extras = project["optional-dependencies"]
    assert any(d.startswith("optuna-dashboard") for d in extras["dashboard"])
    assert any(d.startswith("psycopg2") for d in extras["postgres"])
    # the exact pin lives in requirements.txt, satisfying the lower bound
    pins = (REPO / "requirements.txt").read_text(encoding="utf-8").split()
    assert any(p.startswith("torch==") for p in pins)


def test_version_is_written_once_and_recorded_everywhere() -> None:
    assert "version" not in PYPROJECT["project"]
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "kfaclab.__version__"}
    version = kfaclab.__version__
    assert f"## [{version}]" in (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    cff = (REPO / "CITATION.cff").read_text(encoding="utf-8")
    assert f"\nversion: {version}\n" in cff and "cff-version: 1.2.0" in cff
    assert (REPO / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    assert PYPROJECT["project"]["license"] == "MIT"
