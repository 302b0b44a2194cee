#!/usr/bin/env bash
# Create .venv (if needed) and install medclf with every extra the demo and the tests use.
# pip's output goes to .venv/install.log and is shown only if the install fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
echo "installing medclf and its dependencies into .venv (a few minutes on a fresh machine)..."
# The tested versions (scripts/constraints.txt): a new release upstream cannot turn the tests red overnight.
if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install --progress-bar off \
        -c scripts/constraints.txt -e ".[dev]"; } \
    > .venv/install.log 2>&1; then
    tail -n 40 .venv/install.log
    echo "install failed; full log: .venv/install.log" >&2
    exit 1
fi
