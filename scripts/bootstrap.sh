#!/usr/bin/env bash
# Installs what the project needs on a Debian 12 machine, as root: the Debian packages
# (etcd, BIRD 2, iptables, ipset, iproute2, supervisor, ...) and a virtualenv in .venv with
# the project and its test extras. Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# docker.io and busybox-static serve the tests that run a real Docker container (each test
# starts its own dockerd with a private socket; the packaged service is not started);
# debootstrap makes the node image's Debian base (`calicoctl node image build`); tcpdump
# serves the routing tests (what crosses the simulated router), iperf3 the routing
# benchmark (bench/routing.py). podman and containernetworking-plugins (the reference CNI
# plugins in /usr/lib/cni) serve the CNI tests and benchmark: each podman run gets a
# private storage root and a containers.conf of its own, so nothing in /etc/containers is
# changed.
DEBS=(etcd-server etcd-client bird2 iptables ipset iproute2 conntrack supervisor
      iputils-ping netcat-openbsd tcpdump iperf3 openssl procps kmod python3 python3-venv
      python3-pip docker.io busybox-static debootstrap podman containernetworking-plugins)

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
    # Packaged services (etcd, bird, docker) must not start on the host: tests and the
    # demo start their own, in namespaces. policy-rc.d stops invoke-rc.d from starting
    # them during the install (a Docker engine would rewrite the host's iptables).
    own_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        own_policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$own_policy"
        chmod 755 "$own_policy"
        trap 'rm -f "$own_policy"' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ -z "$own_policy" ] || rm -f "$own_policy"
    for svc in etcd bird docker containerd; do
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
# Bytecode for the project's own modules: an editable install writes none, and with
# PYTHONDONTWRITEBYTECODE set every calicoctl run would compile them again (~30 ms).
.venv/bin/python -m compileall -q -j 0 libcalico rtnl workload calicoctl felix confd netsim cni >/dev/null
