#!/usr/bin/env bash
# The README's test command: installs what is missing, then runs the whole suite
# (unit, integration against real etcd/BIRD/iptables in namespaces, and the quick mode
# of every benchmark). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
set +e
.venv/bin/python -m pytest -p no:cacheprovider -q -rfE --durations=15 "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    echo "test.sh: no test ran" >&2
    exit 1
fi
exit "$rc"
