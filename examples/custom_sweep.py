"""Run a custom sweep protocol (examples/custom_sweep.toml) and read its results from Python.

`kfaclab sweep` runs every cell's Optuna study (resumable: rerunning skips finished trials),
`kfaclab status` prints a table per cell, `kfaclab export` writes one CSV row per trial. The same
commands work on the shell; here they are called through ``kfaclab.cli.main.main``. Then
`kfaclab report OUT` writes the report with figures.

    python examples/custom_sweep.py --data-dir ../shared/data/mnist [--out runs/custom] [--smoke]

``--smoke`` shrinks the protocol to 2 trials of 10 steps a cell (a test of the plumbing).
"""

from __future__ import annotations

import argparse
import csv
import tomllib
from pathlib import Path

from kfaclab.cli.main import main as kfaclab

PROTOCOL = Path(__file__).with_name("custom_sweep.toml")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/custom")
    parser.add_argument("--smoke", action="store_true", help="2 trials of 10 steps per cell")
    args = parser.parse_args(argv)
    out = Path(args.out)
    protocol = PROTOCOL
    if args.smoke:  # the same file with three values changed (and another name)
        text = PROTOCOL.read_text(encoding="utf-8")
        for old, new in (
            ('name = "custom-lm-vs-fixed"', 'name = "custom-smoke"'),
            ("steps = 200", "steps = 10"),
            ("histogram_steps = [50, 150]", "histogram_steps = [5]"),
            ("n_trials = 20", "n_trials = 2"),
            ("top_k = 5", "top_k = 1"),
        ):
            assert old in text, old
            text = text.replace(old, new)
        out.mkdir(parents=True, exist_ok=True)
        protocol = out / "protocol.toml"
        protocol.write_text(text, encoding="utf-8")
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    if kfaclab(["protocol", "check", str(protocol)]) != 0:
        raise SystemExit(2)
    if kfaclab(["sweep", str(protocol), "--out", str(out), *data]) != 0:
        raise SystemExit("the sweep did not finish")
    kfaclab(["status", str(out)])
    kfaclab(["export", str(out), str(out / "trials.csv")])
    best: dict[str, float] = {}
    with open(out / "trials.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            value = float(row["value"]) if row["value"] not in ("", "inf") else float("inf")
            best[row["cell"]] = min(best.get(row["cell"], float("inf")), value)
    for cell, value in sorted(best.items()):
        print(f"{cell:20s} best final training loss {value:.4f}")
    print(f"report: kfaclab report {out}")
    n_cells = len(tomllib.loads(protocol.read_text(encoding="utf-8"))["cells"]["lambdas"]) + 2
    assert len(best) == n_cells, best
    return best


if __name__ == "__main__":
    main()
