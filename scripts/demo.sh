#!/usr/bin/env bash
# The main job, end to end on real data: install, train, export + verify, classify. No arguments needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if [ -d ../shared/keras ]; then export KERAS_HOME=${KERAS_HOME:-$(realpath ../shared/keras)}; fi  # else unset, not ""
.venv/bin/medclf demo "$@"
