#!/usr/bin/env bash
# The project's checks, as CI runs them: lint, types, then the default test suite (slow tests are
# excluded by pytest's configuration; run them with `.venv/bin/pytest -m slow`).
# Starts the local PostgreSQL test server when the PostgreSQL binaries are installed
# (scripts/setup.sh --system installs them), so the multi-worker storage tests run against it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${KFACLAB_TEST_POSTGRES:-}" ]] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    KFACLAB_TEST_POSTGRES="$(bash scripts/start-postgres.sh)"
    export KFACLAB_TEST_POSTGRES
fi
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
.venv/bin/mypy
# The user guide and API reference (mkdocs.yml): offline, warnings are errors, built outside the tree.
.venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)/site"
.venv/bin/pytest "$@"
