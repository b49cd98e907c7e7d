#!/usr/bin/env bash
# Every GPU check of issue 30 in one command, for a lent accelerator machine.
#
#   bash benchmarks/device_check.sh            # on the GPU machine, from the repository root
#   bash benchmarks/device_check.sh --dry-run  # anywhere: on the CPU, the smallest case of each
#                                              # stage (what tests/test_device_check.py runs)
#
# Stages, each under its own time limit; a failing stage is reported and the next one runs:
#   env    python, torch, the device
#   tests  the library tests that take the `device` fixture (tests/conftest.py), CUDA cases only
#   eigh   one batched torch.linalg.eigh of k 101x101 factors (a population's inversion does
#          2*depth - 1 of these every inverse_every steps), k = 1 ... 1024, on the GPU and through
#          host threads (a CUDA population's default; if the GPU wins, rerun bench with
#          --eigh-on device and flip Population's default)
#   bench  benchmarks/bench_population.py: one fused trial against populations of k <= 1024
#   paper  the `paper` protocol end to end, `kfaclab sweep --population --device cuda`, once
#          per PER_CELL:TRIALS pair of PAPER_RUNS (default "1:5 10:30": each cell's search
#          strictly sequential with 5 trials per cell; 10 trials of each cell per round, 30 per
#          cell), search.n_trials cut to TRIALS; the full protocol's wall time (300 trials per
#          cell) extrapolated linearly
# Then a summary table. Logs: $OUT/<stage>.log (default OUT=/tmp/device_check).
#
# MNIST: $KFACLAB_MNIST_DIR, else out/mnist, shared/data/mnist or ../shared/data/mnist. The
# device machine gets only the working tree: copy the gzip files (11 MB) to out/mnist (ignored
# by git) and carry it:  mkdir -p out && cp -r ../shared/data/mnist out/mnist, then
# run(command="bash benchmarks/device_check.sh", carry=["out/mnist"]).
# Environment: PYTHON (default: .venv/bin/python if present, else python3), OUT, PAPER_RUNS,
# STAGES (default "env tests eigh bench paper").
set -uo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY=1
elif [[ -n "${1:-}" ]]; then
    echo "device_check.sh: the only option is --dry-run, got '$1'" >&2
    exit 2
fi
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
STAGES=${STAGES:-"env tests eigh bench paper"}
# PER_CELL:TRIALS pairs: each cell's search strictly sequential, and 10 of a cell per round
PAPER_RUNS=${PAPER_RUNS:-"1:5 10:30"}

for dir in "${KFACLAB_MNIST_DIR:-}" out/mnist shared/data/mnist ../shared/data/mnist; do
    if [[ -n "$dir" && -f "$dir/train-images-idx3-ubyte.gz" ]]; then MNIST=$(cd "$dir" && pwd); break; fi
done
if [[ -z "${MNIST:-}" ]]; then
    echo "device_check.sh: MNIST not found (set KFACLAB_MNIST_DIR, or carry out/mnist)" >&2
    exit 2
fi
export KFACLAB_MNIST_DIR="$MNIST"
# tests/conftest.py looks for MNIST beside the repository; give it this copy if it is missing.
if [[ ! -e ../shared/data/mnist && $DRY == 0 ]]; then
    mkdir -p ../shared/data && ln -s "$MNIST" ../shared/data/mnist
fi

if [[ $DRY == 1 ]]; then
    DEVICE=cpu
    TEST_ARGS=(tests/test_population.py -k "refuses")
    KS="1 4"
    BENCH_ARGS=(--k 1 2 --steps 6 --repeats 1)
    PROTOCOL=src/kfaclab/configs/smoke.toml
    PAPER_RUNS="1:1 2:2"
    LIMIT_TESTS=120 LIMIT_EIGH=60 LIMIT_BENCH=120 LIMIT_PAPER=180
else
    DEVICE=cuda
    mapfile -t FILES < <(grep -l "device: torch.device" tests/test_*.py)
    TEST_ARGS=("${FILES[@]}" -k cuda)
    KS="1 16 64 256 1024"
    BENCH_ARGS=(--k 1 16 64 256 1024 --steps 30 --repeats 2)
    PROTOCOL=src/kfaclab/configs/paper.toml
    LIMIT_TESTS=150 LIMIT_EIGH=45 LIMIT_BENCH=180 LIMIT_PAPER=150  # <= 9 min in all
fi

declare -a SUMMARY=()

run_stage() {  # name, limit (s), command…: runs it, logs it, adds a summary row
    local name=$1 limit=$2
    shift 2
    local log="$OUT/$name.log" start end rc status
    echo "=== $name (limit ${limit}s): $*"
    start=$(date +%s)
    # bash -c: a stage may be one of the functions below (exported with their variables)
    timeout "$limit" bash -c '"$@"' stage "$@" >"$log" 2>&1
    rc=$?
    end=$(date +%s)
    case $rc in
        0) status=ok ;;
        124) status="timeout" ;;
        *) status="FAILED rc=$rc" ;;
    esac
    tail -n 25 "$log"
    SUMMARY+=("$(printf '%-6s %-14s %5ss  %s' "$name" "$status" "$((end - start))" "$(stage_result "$name" "$log")")")
}

stage_result() {  # the one line a stage's log is read for
    case $1 in
        env) grep -m1 '^device' "$2" ;;
        tests) grep -E '(passed|failed|error)' "$2" | tail -n 1 ;;
        eigh) grep 'k=' "$2" | tr '\n' ';' ;;
        bench) grep -E '^ +(kfac|sgd) ' "$2" | awk '{printf "%s k=%s %s; ", $1, $2, $NF}' ;;
        paper) grep '^paper:' "$2" | tr '\n' ';' ;;
    esac
}

env_stage() {
    "$PYTHON" - "$DEVICE" <<'EOF'
import platform, sys
import torch
device = sys.argv[1]
name = torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else platform.processor() or "cpu"
print(f"device {device}: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}, python {platform.python_version()}")
if device == "cuda" and not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch")
for module in ("optuna", "scipy", "pytest", "sqlalchemy"):
    __import__(module)
EOF
}

eigh_stage() {
    "$PYTHON" - "$DEVICE" $KS <<'EOF'
import sys
import torch
from bench_population import eigh_ms
device, ks = sys.argv[1], [int(k) for k in sys.argv[2:]]
for k in ks:
    line = f"eigh k={k} {eigh_ms(k, 101, device):.2f} ms on {device}"
    if device != "cpu":  # Population's default for cuda (eigh_on_cpu=None): the host threads
        line += f", {eigh_ms(k, 101, device, on_cpu=True):.2f} ms via host threads"
    print(line, flush=True)
EOF
}

paper_stage() {  # for each PER_CELL:TRIALS of PAPER_RUNS, a timed population sweep
    local run per_cell trials dir toml start end
    for run in $PAPER_RUNS; do
        per_cell=${run%%:*} trials=${run##*:}
        dir="$OUT/paper-$per_cell" toml="$OUT/paper-$per_cell.toml"
        rm -rf "$dir"
        # The protocol with n_trials (and top_k) cut to `trials` per cell; a sweep times the
        # training only, so the report's paired reruns (whose top must fit top_k) go too.
        sed -e "s/^n_trials = .*/n_trials = $trials/" -e "s/^top_k = .*/top_k = 1/" \
            -e 's/^data_dir = .*//' -e 's/^paired_reruns = .*//' "$PROTOCOL" >"$toml"
        start=$(date +%s.%N)
        "$PYTHON" -m kfaclab sweep "$toml" --out "$dir" --device "$DEVICE" --population \
            --per-cell "$per_cell" --data-dir "$MNIST" || return $?
        end=$(date +%s.%N)
        "$PYTHON" - "$start" "$end" "$trials" "$per_cell" "$dir" <<'EOF'
import sys
from kfaclab.study import load_study_set
start, end, per_cell_trials, per_cell, folder = sys.argv[1:]
trials = load_study_set(folder, with_records=False).trials
seconds = float(end) - float(start)
full = seconds * 300 / int(per_cell_trials) / 60
print(f"paper: --per-cell {per_cell}: {len(trials)} trials ({per_cell_trials} per cell) in "
      f"{seconds:.1f} s, {len(trials) / seconds:.2f} trials/s; 300 per cell ~{full:.1f} min")
EOF
    done
}

export -f env_stage eigh_stage paper_stage
export PYTHON DEVICE KS MNIST PROTOCOL PAPER_RUNS OUT
for stage in $STAGES; do
    case $stage in
        env) run_stage env 60 env_stage ;;
        tests) run_stage tests "$LIMIT_TESTS" "$PYTHON" -m pytest -q -m "not slow" -p no:cacheprovider \
            --continue-on-collection-errors "${TEST_ARGS[@]}" ;;
        eigh) run_stage eigh "$LIMIT_EIGH" eigh_stage ;;
        bench) run_stage bench "$LIMIT_BENCH" "$PYTHON" benchmarks/bench_population.py --device "$DEVICE" "${BENCH_ARGS[@]}" ;;
        paper) run_stage paper "$LIMIT_PAPER" paper_stage ;;
        *) echo "device_check.sh: STAGES must name env, tests, eigh, bench, paper; got '$stage'" >&2; exit 2 ;;
    esac
done

echo
echo "=== summary ($([[ $DRY == 1 ]] && echo 'dry run, cpu' || echo "$DEVICE"); logs in $OUT)"
printf '%s\n' "${SUMMARY[@]}"
failed=$(printf '%s\n' "${SUMMARY[@]}" | grep -c -E 'FAILED|timeout')
exit $((failed > 0))
