#!/usr/bin/env bash
# The test command (README): Python suite, then the web extension's unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pytest -q tests "$@"
if command -v node >/dev/null 2>&1 && ls web/tests/*.test.mjs >/dev/null 2>&1; then
  node --test web/tests/
else
  echo "node not found or no web tests: skipping the web extension's unit tests"
fi
