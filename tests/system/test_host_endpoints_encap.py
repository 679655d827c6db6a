"""Host endpoints on the fabric interface of hosts whose workloads talk through VXLAN.

Two hosts on two L2 segments behind a plain router (`netsim.fabric.RoutedFabric`, one
host per segment, an "outside" namespace behind the router), each running the real
node (felix, confd, BIRD), a workload on each in a VXLAN pool: every workload packet
between the hosts crosses the fabric inside VXLAN (UDP 4789 between the hosts'
addresses), i.e. through the hosts' INPUT and OUTPUT. Then each host's eth0 becomes a
host endpoint with a deny-all profile:

- the workloads still reach each other across the segments (felix accepts VXLAN from and
  to the cluster's hosts before host endpoint policy), and BGP stays up through the
  failsafe ports (every session restarted through the host endpoint);
- a well-formed VXLAN packet from the outside (not a cluster host) carrying a packet for
  a workload is dropped - the same packet from the other host is delivered, and before
  the host endpoints existed it was delivered from the outside too;
- `calicoctl policy trace` says the same (the encapsulation rule, the host endpoint);
- making the pool plain removes the all-hosts set and the rules from every host.

The tests share the fabric and run in file order.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from libcalico import keyspace as ks
from libcalico.client import CalicoClient
from netsim.fabric import OUTSIDE_IP, RoutedFabric
from netsim.netns import Namespace
from netsim.topology import Host
from netsim.wait import wait_for
from tests.support.workloads import Workload, ping

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

POOL = "198.19.0.0/16"
PROFILE = "fab"
PORT = 8081
CONVERGE_S = 30.0
VNI = 4096
ALL_HOSTS = "felix-all-hosts"
DENY_ALL = """\
apiVersion: v1
kind: profile
metadata: {name: host-deny-all}
spec: {inbound_rules: [], outbound_rules: []}
"""


@dataclass
class Lab:
    fab: RoutedFabric
    client: CalicoClient
    w1: Workload  # on host1, segment 1
    w2: Workload  # on host2, segment 2

    @property
    def h1(self) -> Host:
        return self.fab.hosts[0]

    @property
    def h2(self) -> Host:
        return self.fab.hosts[1]

    def ctl(self, *args: str) -> str:
        return self.fab.calicoctl(self.h1, *args).stdout

    def trace(self, *args: str) -> dict:  # type: ignore[type-arg]
        return json.loads(self.ctl("policy", "trace", *args, "-o", "json"))


def add_workload(fab: RoutedFabric, client: CalicoClient, host: Host) -> Workload:
    ns = Namespace("hepx-wl")
    try:
        fab.calicoctl(host, "container", "add", ns.name, POOL)
        fab.calicoctl(host, "container", ns.name, "profile", "set", PROFILE)
    except BaseException:
        ns.delete()
        raise
    (ep,) = client.list_workload_endpoints(host.name, "netns", ns.name)
    wl = Workload(host.ns, host.name, ns, ep.name, ep.ipv4_nets[0].split("/")[0], None,
                  ep.mac or "", [PROFILE])
    wl.listen(PORT)
    return wl


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    fab = RoutedFabric("hepx", (1, 1))
    store = None
    workloads: list[Workload] = []
    try:
        assert fab.etcd is not None
        store = fab.datastore()
        # the test etcd listens on a random port: keep it reachable whatever the policy
        store.put(ks.global_config_key("FailsafeOutboundHostPorts"),
                  f"udp:53,tcp:179,tcp:{fab.etcd.port}")
        for host in fab.hosts:
            fab.start_node(host, with_prefix=True)
        client = CalicoClient(store)
        fab.calicoctl(fab.hosts[0], "pool", "add", POOL, "--vxlan")
        fab.calicoctl(fab.hosts[0], "profile", "add", PROFILE)
        for host in fab.hosts:
            workloads.append(add_workload(fab, client, host))
        lab = Lab(fab, client, *workloads)
        wait_for(lambda: workloads_reach_each_other(lab), CONVERGE_S,
                 message="the workloads reaching each other through VXLAN")
        yield lab
    finally:
        for wl in workloads:
            for proc in wl.listeners:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        fab.close()
        for wl in workloads:
            wl.ns.delete()
        if store is not None:
            store.close()


def workloads_reach_each_other(lab: Lab) -> bool:
    return all((lab.w1.ping(lab.w2.ipv4, timeout=0.5), lab.w2.ping(lab.w1.ipv4, timeout=0.5),
                lab.w1.connect(lab.w2.ipv4, PORT, timeout=0.5),
                lab.w2.connect(lab.w1.ipv4, PORT, udp=True, timeout=0.5)))


def bgp_established(lab: Lab) -> bool:
    for host, other in ((lab.h1, lab.h2), (lab.h2, lab.h1)):
        status = lab.fab.calicoctl(host, "node", "status").stdout
        if not re.search(rf"{re.escape(other.ip)} +\| node-to-node mesh \| up .*Established",
                         status):
            return False
    return True


# ---- a VXLAN packet made by hand ----------------------------------------------------------------

def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def vxlan_packet(inner_dst_mac: str, inner_src: str, inner_dst: str, inner_dport: int) -> bytes:
    """A VXLAN payload (what goes after the outer UDP header): VNI 4096, an Ethernet frame
    to `inner_dst_mac` carrying UDP `inner_src` -> `inner_dst`:`inner_dport`."""
    data = b"injected"
    udp = struct.pack("!HHHH", 40000, inner_dport, 8 + len(data), 0) + data
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(inner_src), socket.inet_aton(inner_dst))
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    eth = bytes.fromhex(inner_dst_mac.replace(":", "")) + bytes.fromhex("02deadbeef01") + \
        b"\x08\x00"
    return struct.pack("!II", 0x08000000, VNI << 8) + eth + ip + udp


_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[3])))
s.sendto(bytes.fromhex(sys.argv[4]), (sys.argv[1], int(sys.argv[2])))
"""


def send_vxlan(ns: Namespace, dest: str, sport: int, payload: bytes) -> None:
    """One UDP datagram to dest:4789 from `ns` (source port `sport`)."""
    subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c", _SEND, dest, "4789",
                    str(sport), payload.hex()], check=True, capture_output=True)


def injected_into_w1(lab: Lab, sender: Namespace, sport: int, inner_dport: int,
                     tries: int) -> Callable[[], bool]:
    """A probe: send a VXLAN packet from `sender` to host1 whose inner packet (from w2's
    address, which w1's profile allows) goes to w1:`inner_dport`; True when w1 saw it."""
    node = lab.client.get_node(lab.h1.name)
    assert node is not None and node.vxlan_tunnel_mac
    packet = vxlan_packet(node.vxlan_tunnel_mac, lab.w2.ipv4, lab.w1.ipv4, inner_dport)

    def probe() -> bool:
        cap = lab.fab.capture(lab.w1.ns, "any", f"udp dst port {inner_dport}")
        try:
            for _ in range(tries):
                send_vxlan(sender, lab.h1.ip, sport, packet)
            lines = cap.lines()
        finally:
            cap.remove()
        return any(f"{lab.w1.ipv4}.{inner_dport}" in line for line in lines)
    return probe


# ---- the tests, in order ------------------------------------------------------------------------


def test_without_host_endpoints_anyone_can_send_into_the_overlay(lab: Lab) -> None:
    """The baseline the host endpoint changes: the VXLAN device takes a well-formed packet
    from any sender (this is what makes the packet below a fair probe)."""
    assert lab.fab.outside is not None
    from_outside = injected_into_w1(lab, lab.fab.outside, 41001, 7001, tries=3)
    wait_for(from_outside, CONVERGE_S, message="w1 receiving a VXLAN packet from the outside")


def test_deny_all_host_endpoints_keep_vxlan_between_hosts_and_bgp(lab: Lab) -> None:
    h1, h2 = lab.h1, lab.h2
    assert lab.fab.outside is not None
    path = h1.dir / "deny.yaml"
    path.write_text(DENY_ALL)
    lab.ctl("apply", "-f", str(path))
    for host in (h1, h2):
        lab.ctl("hostendpoint", "add", "fabric", "--node", host.name, "--interface", "eth0",
                "--profile", "host-deny-all", "--label", "role=fabric")
    for host in (h1, h2):
        wait_for(lambda h=host: not ping(lab.fab.outside.name, h.ip, 0.5),  # type: ignore[union-attr]
                 CONVERGE_S, message=f"{host.name} closed by its host endpoint")
    # the host endpoints police the hosts' own traffic between them too
    assert not ping(h1.ns.name, h2.ip) and not ping(h2.ns.name, h1.ip)
    # ... but not VXLAN between them: the workloads still reach each other
    assert workloads_reach_each_other(lab)
    captured = lab.fab.capture(lab.fab.router, lab.fab.segments[0].router_if, "udp port 4789")
    try:
        lab.w1.ping(lab.w2.ipv4, count=2, timeout=1)
        lines = captured.lines()
    finally:
        captured.remove()
    assert any(f"{h1.ip}." in line and f"{h2.ip}.4789" in line for line in lines), lines
    # BGP through the failsafe ports: every session torn down and set up again
    h1.ns.exec("birdcl", "-s", str(h1.dir / "run" / "bird.ctl"), "restart", "all")
    wait_for(lambda: bgp_established(lab), CONVERGE_S, message="BGP re-established")
    # VXLAN from an address that is not a cluster host meets the host endpoint: dropped;
    # the same packet from host2 is delivered (sent after, on the same path)
    from_outside = injected_into_w1(lab, lab.fab.outside, 41002, 7002, tries=5)
    from_host2 = injected_into_w1(lab, h2.ns, 41003, 7003, tries=2)
    assert not from_outside()
    wait_for(from_host2, CONVERGE_S, message="w1 receiving a VXLAN packet from host2")
    assert not from_outside()
    assert workloads_reach_each_other(lab)
    # and the trace says so
    between = lab.trace("--from", f"host:{h2.name}", "--to", f"host:{h1.name}",
                        "--protocol", "udp", "--port", "4789")
    assert between["verdict"] == "allow", between
    assert [d["decided_by"]["kind"] for d in between["directions"]] == [
        "encapsulation", "encapsulation"]
    outside = lab.trace("--from", OUTSIDE_IP, "--to", f"host:{h1.name}", "--protocol", "udp",
                        "--port", "4789")
    assert outside["verdict"] == "deny", outside
    assert outside["directions"][1]["decided_by"]["kind"] == "no-policy-accepted"
    assert "felix-hfrom-eth0" in outside["directions"][1]["chains"]


def test_a_plain_pool_removes_the_exemption(lab: Lab) -> None:
    lab.ctl("pool", "add", POOL)  # no encapsulated pool any more

    def exempt(host: Host) -> bool:
        rules = host.ns.exec("iptables-save", "-t", "filter").stdout
        sets = host.ns.exec("ipset", "list", "-n").stdout.split()
        return ALL_HOSTS in rules or ALL_HOSTS in sets

    for host in (lab.h1, lab.h2):
        wait_for(lambda h=host: not exempt(h), CONVERGE_S,
                 message=f"the all-hosts set and its rules gone from {host.name}")
    between = lab.trace("--from", f"host:{lab.h2.name}", "--to", f"host:{lab.h1.name}",
                        "--protocol", "udp", "--port", "4789")
    assert between["verdict"] == "deny"
    assert between["directions"][0]["decided_by"]["kind"] == "no-policy-accepted"
    assert bgp_established(lab)
