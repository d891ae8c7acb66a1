#!/usr/bin/env bash
# Set up, then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export KEDRO_DISABLE_TELEMETRY=true
# Let Python cache compiled bytecode in .venv (some machines set PYTHONDONTWRITEBYTECODE): without
# it every process compiles torch, Kedro and MLflow from source again, about 8 s per `kedro` start.
unset PYTHONDONTWRITEBYTECODE
exec .venv/bin/python -m pytest "$@"
