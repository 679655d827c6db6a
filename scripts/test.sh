#!/usr/bin/env bash
# The README's test command: installs what is missing, checks lint and types (ruff over
# the tree, mypy over every package), then runs the whole suite (unit, integration against
# real etcd/BIRD/iptables in namespaces, and the quick mode of every benchmark). Extra
# arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "test.sh: ruff check ."
.venv/bin/ruff check .
echo "test.sh: mypy (every package, see [tool.mypy] files in pyproject.toml)"
.venv/bin/mypy
set +e
.venv/bin/python -m pytest -p no:cacheprovider -q -rfE --durations=15 "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    echo "test.sh: no test ran" >&2
    exit 1
fi
exit "$rc"
