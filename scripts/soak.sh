#!/usr/bin/env bash
# The soak test (root): lab traffic with a failover every minute for 10 minutes; the daemon's RSS, fds,
# nft objects, namespaces and processes must not grow (tests/integration/test_soak.py, docs/reliability.md).
# WANLB_SOAK_SECONDS (default 600) and WANLB_SOAK_FAILOVER_EVERY (default 60) shorten it for a quick check.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, whatever wanlb is installed
# Its own pytest base temp dir, so soak.json (path printed at the end) is not pruned by other pytest runs.
python3 -m pytest -q -p no:cacheprovider -s -m slow --basetemp "${WANLB_SOAK_TMP:-/tmp/wanlb-soak}" \
  tests/integration/test_soak.py "$@"
