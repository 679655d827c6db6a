#!/usr/bin/env bash
# The README's main-job command: installs what is missing (./scripts/bootstrap.sh), then
# builds a 3-host Calico cluster in network namespaces (etcd, felix, confd and BIRD per
# host), adds pools, a profile and workloads, and prints node status, routes and a
# ping/TCP matrix before and after a deny rule. Everything is removed at the end.
#   scripts/demo.sh              run and tear down (exit 0 only if the matrix is as expected)
#   scripts/demo.sh --keep       leave it running and print how to explore it
#   scripts/demo.sh --teardown   remove what a --keep run left behind
set -euo pipefail
cd "$(dirname "$0")/.."
case " $* " in
    *" -h "*|*" --help "*) ;;
    *) ./scripts/bootstrap.sh ;;
esac
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m demo.cluster "$@"
