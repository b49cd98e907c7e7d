#!/usr/bin/env bash
# One command that sets kfaclab up on a fresh machine: a virtual environment in .venv with the
# pinned dependencies, the test tools and the package itself (editable).
# With --system it also installs the Debian packages the full test suite uses
# (PostgreSQL for the multi-machine tests, Chromium for the report test, Fashion-MNIST).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--system" ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql chromium dataset-fashion-mnist >/dev/null
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements-dev.txt
.venv/bin/pip install -q --no-deps -r requirements-peer.txt
.venv/bin/pip install -q --no-deps -e .
.venv/bin/python -c "import torch, kfaclab; print('kfaclab ready: torch', torch.__version__)"
