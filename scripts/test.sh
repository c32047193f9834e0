#!/usr/bin/env bash
# The test command (docs/development.md): every test, in a real ComfyUI runtime (in process and headless
# server), with the environment scripts/setup.sh made (DIFFBIR_ENV names another one, e.g. a second
# ComfyUI version). Extra arguments go to pytest.
set -euo pipefail
if [[ -n ${DIFFBIR_ENV:-} ]]; then
  DIFFBIR_ENV=$(cd "$DIFFBIR_ENV" && pwd)
  export DIFFBIR_ENV
fi
cd "$(dirname "$0")/.."
exec "${DIFFBIR_ENV:-.}/.venv/bin/python" -m pytest "$@"
