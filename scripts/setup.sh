#!/usr/bin/env bash
# Install the locked environment into .venv (uv links packages from its cache, so a second
# clone costs seconds and no extra disk). Needs only Python 3.11+ and the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
export KEDRO_DISABLE_TELEMETRY=true
python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv>=0.5"
python3 -m uv sync --locked --python "$(command -v python3)" --quiet
