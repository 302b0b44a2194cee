#!/usr/bin/env bash
# Install everything, then run the whole test suite (tests needing ../shared skip with a reason without it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
[ -d ../shared/keras ] && export KERAS_HOME=${KERAS_HOME:-$(realpath ../shared/keras)}
exec .venv/bin/python -m pytest "$@"
