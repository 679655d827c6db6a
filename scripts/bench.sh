#!/usr/bin/env bash
# Runs every benchmark in bench/ at full size; each prints one JSON object with its
# figures, the baseline measured in the same run and the ratio. `--quick` for the small
# versions; names select benchmarks (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
quick=()
names=()
for a in "$@"; do
    if [ "$a" = --quick ]; then quick=(--quick); else names+=("$a"); fi
done
if [ ${#names[@]} -eq 0 ]; then
    for f in bench/*.py; do
        n=$(basename "$f" .py)
        case "$n" in __init__|common) ;; *) names+=("$n") ;; esac
    done
fi
mkdir -p bench/results
for n in "${names[@]}"; do
    echo "== $n" >&2
    .venv/bin/python -m "bench.$n" "${quick[@]}" | tee "bench/results/$n.json"
done
