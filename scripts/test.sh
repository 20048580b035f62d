#!/usr/bin/env bash
# The whole test suite: lint, unit tests (no root) and kernel integration tests (root, netns).
# The soak test (marked slow, 10 minutes) is left out; run it with scripts/soak.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m ruff check src tests $( [ -d bench ] && echo bench )
python3 -m pytest -q -p no:cacheprovider -m "not slow" tests "$@"
