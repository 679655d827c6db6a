#!/usr/bin/env bash
# The reliability figures (issue 16): the fault matrix on a running 3-host cluster, the
# churn soak and the fuzzers at full size; each section prints JSON (also written to
# faults/results/). `--quick` for the small versions the test suite runs; section names
# (matrix, soak, fuzz) select; `--only FAULT...` picks faults. See faults/__main__.py.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m faults "$@"
