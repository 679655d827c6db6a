#!/usr/bin/env bash
# Runs every benchmark in bench/ at full size; each prints one JSON object with its
# figures, the baseline measured in the same run and the ratio (docs/benchmarks.md).
# `--quick` for the small versions; names select benchmarks (default: all); any other
# option (`--disk`, `--disk-dir=DIR`) goes to the named benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
opts=()
names=()
for a in "$@"; do
    case "$a" in -*) opts+=("$a") ;; *) names+=("$a") ;; esac
done
if [ ${#names[@]} -eq 0 ]; then
    for f in bench/*.py; do
        n=$(basename "$f" .py)
        case "$n" in __init__|common|probe|felix_floor|etcdstats|hostprocs|scale_calc) ;; *) names+=("$n") ;; esac
    done
fi
mkdir -p bench/results
for n in "${names[@]}"; do
    echo "== $n" >&2
    .venv/bin/python -m "bench.$n" "${opts[@]}" | tee "bench/results/$n.json"
done
