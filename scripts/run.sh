#!/usr/bin/env bash
# Set up, then run a pipeline (default: the offline MNIST task). Extra arguments go to `kedro run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export KEDRO_DISABLE_TELEMETRY=true
exec .venv/bin/kedro run "$@"
