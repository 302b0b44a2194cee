#!/usr/bin/env bash
# Create .venv (if needed) and install medclf with every extra the demo and the tests use.
# pip's output goes to .venv/install.log and is shown only if the install fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
echo "installing medclf and its dependencies into .venv (a few minutes on a fresh machine)..."
# The tested versions (scripts/constraints.txt): a new release upstream cannot turn the tests red overnight. They
# were frozen on one Python and CPU architecture (its header says which); elsewhere some have no wheel (numpy 2.4
# needs Python 3.11+), so there the newest versions within pyproject.toml's bounds are installed, said first.
frozen=$(sed -n 's/^# frozen on: //p' scripts/constraints.txt)
here=$(.venv/bin/python -c 'import platform, sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}-{platform.machine()}")')
pinned=(-c scripts/constraints.txt)
if [ "$here" != "$frozen" ]; then
    echo "scripts/constraints.txt was frozen on $frozen, this is $here: installing unpinned versions" >&2
    pinned=()
fi
if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install --progress-bar off \
        ${pinned[@]+"${pinned[@]}"} -e ".[dev]"; } \
    > .venv/install.log 2>&1; then
    tail -n 40 .venv/install.log
    echo "install failed; full log: .venv/install.log" >&2
    exit 1
fi
