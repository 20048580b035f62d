#!/usr/bin/env bash
# Tests marked slow that are not the soak: long-running acceptance checks left out of scripts/test.sh
# (for example sticky clients over two minutes). Run as root from the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, whatever wanlb is installed
python3 -m pytest -q -p no:cacheprovider -m slow --deselect tests/integration/test_soak.py tests/integration "$@"
