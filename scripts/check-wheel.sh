#!/usr/bin/env bash
# What a user outside this repository gets: build the wheel, install it into a clean virtual
# environment (the pinned torch first, as a user brings their own), and run the main job from
# another folder. Usage: bash scripts/check-wheel.sh [PRESET] [DATA_DIR]
# (default: smoke, ../shared/data/mnist). Prints the seconds each part took.
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-smoke}"
data="$(cd "${2:-../shared/data/mnist}" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
t0=$SECONDS
# Built from a copy of the tracked files, so the checkout gets no build/ or *.egg-info.
mkdir "$tmp/src"
git ls-files -co --exclude-standard | grep -v '^docs/results/' | tar -cf - -T - | tar -xf - -C "$tmp/src"
.venv/bin/python -m pip wheel -q --no-deps -w "$tmp/dist" "$tmp/src"  # after scripts/setup.sh
wheel="$(ls "$tmp"/dist/kfaclab-*.whl)"
unzip -l "$wheel" | grep -q "kfaclab/configs/${preset}.toml" || { echo "no configs/${preset}.toml in $wheel"; exit 1; }
t1=$SECONDS
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "$(grep '^torch==' requirements.txt)"
"$tmp/venv/bin/pip" install -q "$wheel"
t2=$SECONDS
mkdir "$tmp/elsewhere"
cd "$tmp/elsewhere"
"$tmp/venv/bin/python" -m kfaclab --version
"$tmp/venv/bin/kfaclab" reproduce --preset "$preset" --workers 2 --data-dir "$data" --out run >/dev/null
test -s run/report.html
t3=$SECONDS
echo "check-wheel: $(basename "$wheel"): build $((t1 - t0)) s, clean install $((t2 - t1)) s," \
    "kfaclab reproduce --preset $preset from another folder $((t3 - t2)) s"
