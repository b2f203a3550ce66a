#!/usr/bin/env bash
# Install fastlstm against the installed torch (never pulling another) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --no-build-isolation -e ".[test]"
pytest -q tests "$@"
