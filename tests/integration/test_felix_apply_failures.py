"""Felix end to end when an apply fails: the endpoint's status in etcd says "error" with
the reason, the other endpoints stay "up", and once the cause is gone felix programs the
endpoint and reports "up".

A simulated host namespace runs calico-felix against a real etcd; workloads are real
namespaces with veths. The failures are real ones:
  - routes: the kernel refuses an IPv6 route through an interface whose IPv6 is
    disabled (`net.ipv6.conf.<if>.disable_ipv6=1`, EACCES);
  - chains: `iptables-restore` fails for this felix, through a command earlier on its
    PATH that exits 1 while a marker file exists and otherwise runs the real one.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from libcalico import keyspace
from libcalico.datastore import Datastore
from netsim.topology import Host, Topology
from netsim.wait import wait_for
from tests.support.workloads import Workload, create_workload, delete_workload

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

FELIX = str(Path(sys.executable).with_name("calico-felix"))
HOSTNAME = "host1"
OPEN = {"inbound_rules": [{"action": "allow"}], "outbound_rules": [{"action": "allow"}]}


@dataclass
class Rig:
    topo: Topology
    host: Host
    store: Datastore
    marker: Path  # while it exists, this felix's iptables-restore fails
    workloads: list[Workload]

    def add_workload(self, index: int) -> Workload:
        wl = create_workload(self.host.ns, HOSTNAME, index, f"198.18.20.{index}",
                             f"fd00::20:{index}", ["open"])
        self.workloads.append(wl)
        return wl

    def status(self, wl: Workload) -> dict[str, str]:
        kv = self.store.get(keyspace.endpoint_status_key(HOSTNAME, "test", wl.workload_id,
                                                         "eth0"))
        return json.loads(kv.value) if kv is not None else {}

    def wait_status(self, wl: Workload, status: str, what: str) -> dict[str, str]:
        wait_for(lambda: self.status(wl).get("status") == status, 30,
                 message=f"{what}: status {status}, have {self.status(wl)}; felix log:\n"
                         f"{self.topo.log_tail(self.host, 'felix', 4000)}")
        return self.status(wl)


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with Topology("flxe", hosts=1) as topo:
        host = topo.hosts[0]
        host.ns.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
        host.ns.exec("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        real = shutil.which("iptables-restore")
        assert real is not None
        bindir = topo.dir / "bin"
        bindir.mkdir()
        marker = topo.dir / "fail-iptables-restore"
        wrapper = bindir / "iptables-restore"
        wrapper.write_text(f"#!/bin/sh\nif [ -e {marker} ]; then\n"
                           "    echo 'iptables-restore: injected failure' >&2\n    exit 1\nfi\n"
                           f'exec {real} "$@"\n')
        wrapper.chmod(0o755)
        store = topo.datastore()
        r = Rig(topo, host, store, marker, [])
        try:
            store.put(keyspace.profile_key("open", "rules"), json.dumps(OPEN))
            a = r.add_workload(1)
            store.put(a.key, a.endpoint_json())
            env = topo.daemon_env({
                "PATH": f"{bindir}:{topo.daemon_env().get('PATH', '')}",
                "FELIX_FELIXHOSTNAME": HOSTNAME, "FELIX_REFRESHINTERVAL": "2",
                "FELIX_LOGSEVERITYSCREEN": "INFO", "FELIX_IPV6SUPPORT": "true",
                "FELIX_ENDPOINTREPORTINGDELAYSECS": "0.2"})
            topo.spawn(host, [FELIX], "felix", env=env)
            r.wait_status(a, "up", "first endpoint")
            yield r
        finally:
            for wl in r.workloads:
                delete_workload(wl)
            store.close()


def test_a_refused_route_is_error_until_the_interface_is_fixed(rig: Rig) -> None:
    a = rig.workloads[0]
    d = rig.add_workload(2)
    assert d.ipv6 is not None
    rig.host.ns.exec("sysctl", "-qw", f"net.ipv6.conf.{d.ifname}.disable_ipv6=1")
    rig.store.put(d.key, d.endpoint_json())
    status = rig.wait_status(d, "error", "IPv6 route refused")
    assert status["reason"].startswith("routes: ")
    assert "EACCES" in status["reason"] and f"{d.ipv6}/128" in status["reason"], status
    assert rig.status(a) == {"status": "up"}  # the others are not failed with it
    assert a.ping(d.ipv4)  # what could be programmed was: the IPv4 route and chains
    rig.host.ns.exec("sysctl", "-qw", f"net.ipv6.conf.{d.ifname}.disable_ipv6=0")
    assert rig.wait_status(d, "up", "route programmed after the fix") == {"status": "up"}
    assert wait_for(lambda: a.ping(d.ipv6), 10, message="IPv6 to the fixed endpoint")


def test_chains_that_fail_to_restore_are_error_until_a_restore_succeeds(rig: Rig) -> None:
    a = rig.workloads[0]
    rig.marker.touch()
    try:
        e = rig.add_workload(3)
        rig.store.put(e.key, e.endpoint_json())
        status = rig.wait_status(e, "error", "iptables-restore failing")
        assert status["reason"].startswith("iptables-v4-filter: ")
        assert "injected failure" in status["reason"], status
        assert rig.status(a) == {"status": "up"}
        assert not a.ping(e.ipv4)  # really not programmed: no dispatch entry for it
    finally:
        rig.marker.unlink()
    assert rig.wait_status(e, "up", "chains restored after the fix") == {"status": "up"}
    assert wait_for(lambda: a.ping(e.ipv4), 10, message="traffic to the fixed endpoint")
    assert rig.status(a) == {"status": "up"}
