#!/usr/bin/env bash
# The test command of the README: every test, in a real ComfyUI runtime (in process and headless
# server), with the environment scripts/setup.sh made. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest "$@"
