"""Bad input to every command: one line naming the argument, the rule and the value, exit 2,
no traceback, nothing written — for values that used to pass validation and then crash, for
unreadable files and for output paths that cannot be written, all found before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import LONG, one_line, run_cli, tiny_protocol
from kfaclab.cli.main import main

# --- values that passed validation and then crashed ------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--lr", "1e39"], "lr must be finite in float32 (<= 3.4e+38), got 1e+39"),
        (["--damping", "1e39"], "damping must be finite in float32"),
        (["--kl-clip", "inf"], "kl_clip must be finite in float32 (<= 3.4e+38), got inf"),
        (["--device", "nope"], "device must be a torch device such as 'cpu' or 'cuda', got 'nope'"),
        (["--device", "cuda:99"], "device must be available, got 'cuda:99'"),
        (["--width", "100000000"], "width must be <= 65536, got 100000000"),
        (["--depth", "100000"], "depth must be <= 1000, got 100000"),
        (["--width", "60000", "--depth", "50"], "depth × width must fit in memory"),
        (["--threads", "100000"], "threads must be in [1, "),
        (["--eigen-floor", "-1"], "eigen_floor must be a finite number >= 0, got -1.0"),
        (["--eigen-floor", "inf"], "eigen_floor must be a finite number >= 0, got inf"),
        (["--factor-decay", "1.0"], "factor_decay must be in [0, 1), got 1.0"),
    ],
)
def test_train_values_that_used_to_crash(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert expected in one_line(capsys, ["train", *argv, "--no-progress"])


def test_seed_beyond_64_bits_in_a_toml_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    config = tmp_path / "trial.toml"
    config.write_text("seed = 100000000000000000000000\n")
    err = one_line(capsys, ["train", "--config", str(config)])
    assert "seed must be an integer in [0, 2**63 - 1], got 100000000000000000000000" in err


def test_seed_flag_and_factor_init_are_parsed_strictly() -> None:
    proc = run_cli("train", "--seed", "1e23")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "argument --seed: invalid int value: '1e23'" in proc.stderr
    proc = run_cli("train", "--factor-init", "identiy")
    assert proc.returncode == 2 and "invalid choice: 'identiy'" in proc.stderr


def test_threads_far_above_the_cores_is_refused_not_a_segfault() -> None:
    """torch.set_num_threads(100000) ends the process with SIGSEGV (exit -11) on Linux."""
    proc = run_cli("train", "--threads", "100000")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("kfaclab: error: threads must be in [1, ")
    assert "Traceback" not in proc.stderr


def test_lr_search_range_above_float32(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    text = tiny_protocol(tmp_path).read_text().replace("high = 0.1", "high = 1e39")
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    err = one_line(capsys, ["sweep", str(bad), "--out", str(tmp_path / "out")])
    assert "search.lr.high must be within float32's range (±3.4e38), got 1e+39" in err
    assert not (tmp_path / "out").exists()


# --- unreadable inputs ------------------------------------------------------------------------


def test_non_utf8_protocol(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('[protocol]\nname = "caf\xe9"\n'.encode("latin-1"))
    err = one_line(capsys, ["sweep", str(bad), "--out", str(tmp_path / "out")])
    assert str(bad) in err and "utf-8" in err.lower()
    err = one_line(capsys, ["train", "--config", str(bad)])
    assert "--config must be UTF-8 text" in err


def test_config_that_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line(capsys, ["train", "--config", str(tmp_path)])
    assert err == f"kfaclab: error: --config must be a file, got '{tmp_path}' (a folder)\n"
    err = one_line(capsys, ["sweep", str(tmp_path), "--out", str(tmp_path / "out")])
    assert str(tmp_path) in err


# --- output paths, checked before any work ----------------------------------------------------


def bad_outputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name → (path, expected text). /proc takes no new files, even from root (the tests may
    run as root, for whom permission bits mean nothing)."""
    existing_file = tmp_path / "file.txt"
    existing_file.write_text("keep me\n")
    return {
        "folder": (tmp_path, "must be a regular file"),
        "file": (existing_file, "must be a folder"),
        "unwritable": (Path("/proc/kfaclab-out"), "/proc"),
        "too-long": (tmp_path / LONG, "must use names of at most 255 bytes"),
        "dev-full": (Path("/dev/full"), "a character device"),
        "in-git": (tmp_path / "repo" / ".git" / "out", "must not be inside a .git folder"),
    }


CASES = ["folder", "file", "unwritable", "too-long", "dev-full", "in-git"]


@pytest.mark.parametrize("case", CASES)
def test_train_out(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, expected = bad_outputs(tmp_path)[case]
    if case == "file":  # train may overwrite a result file; a file where a folder is needed
        path, expected = path / "r.json", "must be a folder"
    if case == "in-git":
        expected = "must not be inside a .git folder"
    err = one_line(capsys, ["train", "--steps", "2", "--out", str(path)])
    assert expected in err, err
    assert (tmp_path / "file.txt").read_text() == "keep me\n"


@pytest.mark.parametrize("case", CASES)
def test_sweep_and_reproduce_out(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, expected = bad_outputs(tmp_path)[case]
    if case == "folder":
        return  # an existing folder is where a sweep resumes: allowed
    config = tiny_protocol(tmp_path)
    for argv in (["sweep", str(config)], ["reproduce", "--preset", "quick", "--no-reruns"]):
        err = one_line(capsys, [*argv, "--out", str(path)])
        assert expected in err, err
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("case", CASES)
def test_export_and_report_out(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "sweep"
    assert main(["sweep", str(tiny_protocol(tmp_path)), "--out", str(sweep)]) == 0
    capsys.readouterr()
    path, expected = bad_outputs(tmp_path)[case]
    csv_path = path / "t.csv" if case == "file" else path
    csv_expected = "must be a folder" if case == "file" else expected
    if case != "folder":
        assert csv_expected in one_line(capsys, ["export", str(sweep), str(csv_path)])
    else:
        assert "must be a regular file" in one_line(capsys, ["export", str(sweep), str(path)])
        return  # an existing report folder is allowed (the sweep's own, by default)
    err = one_line(capsys, ["report", str(sweep), "--out", str(path), "--no-reruns"])
    assert expected in err, err


def test_export_refuses_a_too_long_curves_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "sweep"
    assert main(["sweep", str(tiny_protocol(tmp_path)), "--out", str(sweep)]) == 0
    capsys.readouterr()
    name = "y" * 250 + ".csv"  # fits; its companion "<name>-curves.csv" does not
    err = one_line(capsys, ["export", str(sweep), str(tmp_path / name)])
    assert "must use names of at most 255 bytes" in err
    assert not (tmp_path / name).exists()


def test_real_commands_print_no_traceback(tmp_path: Path) -> None:
    """The same refusals from the installed entry point, in fresh processes."""
    config = tiny_protocol(tmp_path)
    for argv in (
        ["train", "--out", "/dev/full"],
        ["train", "--lr", "1e39"],
        ["sweep", str(config), "--out", "/dev/full"],
        ["reproduce", "--out", str(tmp_path / LONG)],
        ["report", str(tmp_path / "missing")],
    ):
        proc = run_cli(*argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr


# --- flags --------------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from kfaclab import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"kfaclab {__version__}\n"


def test_mistyped_preset_is_caught_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "--preset", "paperr"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --preset: invalid choice: 'paperr'" in err and err.count("\n") == 1


def test_an_empty_out_is_not_the_working_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_protocol(tmp_path)
    for argv in (["train", "--out", ""], ["sweep", str(config), "--out", ""]):
        assert one_line(capsys, argv) == "kfaclab: error: --out must name a path, got ''\n"
