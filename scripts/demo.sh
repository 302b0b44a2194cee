#!/usr/bin/env bash
# The main job, end to end on real data: install, train, export + verify, classify. No arguments needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export KERAS_HOME=${KERAS_HOME:-$(realpath ../shared/keras)}
.venv/bin/medclf demo "$@"
