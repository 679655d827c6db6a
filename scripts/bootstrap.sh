#!/usr/bin/env bash
# Installs what the project needs on a Debian 12 machine, as root: the Debian packages
# (etcd, BIRD 2, iptables, ipset, iproute2, supervisor, ...) and a virtualenv in .venv with
# the project and its test extras. Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(etcd-server etcd-client bird2 iptables ipset iproute2 conntrack supervisor
      iputils-ping netcat-openbsd tcpdump openssl procps kmod python3 python3-venv python3-pip)

if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: run as root (it installs Debian packages and creates namespaces)" >&2
    exit 2
fi

missing=()
for p in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The packaged services must not run on the host: tests and the demo start their own.
    for svc in etcd bird; do
        if command -v systemctl >/dev/null && systemctl is-active -q "$svc" 2>/dev/null; then
            systemctl disable --now "$svc" >/dev/null 2>&1 || true
        fi
    done
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
    echo "bootstrap: installing the project into .venv"
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[test]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
