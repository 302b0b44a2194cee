#!/usr/bin/env bash
# Install everything, then run the whole test suite (tests needing ../shared skip with a reason without it) and the
# speed benchmarks with their ratio guard. Arguments, if any, go to pytest instead (e.g. tests/runtime -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
[ -d ../shared/keras ] && export KERAS_HOME=${KERAS_HOME:-$(realpath ../shared/keras)}
if [ $# -gt 0 ]; then exec .venv/bin/python -m pytest "$@"; fi
.venv/bin/python -m pytest
# A short speed run, side by side with the Keras way; fails on a ratio regression, never on an absolute time.
mkdir -p .benchmarks
.venv/bin/python -m pytest benchmarks --benchmark-only --benchmark-json=.benchmarks/latest.json -q
# With the data beside it every ratio must be measured: a benchmark that skipped must not pass as "no regression".
require=(); [ -d "${MEDCLF_SHARED:-../shared}/data/blood-cells/TEST" ] && require=(--require-all)  # as benchmarks/conftest.py finds it
.venv/bin/python benchmarks/guard.py .benchmarks/latest.json ${require[@]+"${require[@]}"}
