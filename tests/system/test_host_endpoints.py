"""Host endpoints on simulated hosts running the whole node (felix, confd, BIRD).

Two hosts on a fabric, each started with `calicoctl node run`, a workload on each
(`calicoctl container add`), and behind host1 a "lan" namespace that host1 routes for
(forwarded traffic that is not a workload's). host1's fabric interface eth0 becomes a
host endpoint with a deny-all profile (`calicoctl hostendpoint add`): the failsafe ports
stay open (ssh in; BGP both ways, proven by restarting every BGP session; etcd out, on
the test etcd's random port, configured in FailsafeOutboundHostPorts, proven by felix
still applying changes), everything else to, from and through host1 is dropped, a
policy opens one port, the workloads do not notice, `calicoctl policy trace` says the
same, and removing the host endpoint restores the default. Last, the three
DefaultEndpointToHostAction values for workload-to-host traffic.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from libcalico import keyspace as ks
from libcalico.client import CalicoClient
from netsim.netns import Namespace, veth
from netsim.topology import Host, Topology
from netsim.wait import wait_for
from tests.support.workloads import Workload, connect, ping, serve, wait_serving

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

POOL4, POOL6 = "198.19.0.0/16", "fd00:198:19::/64"
LAN_NET, LAN_GW, LAN_IP = "198.18.5.0/24", "198.18.5.1", "198.18.5.2"
OPENED, CLOSED, SSH = 8080, 9090, 22
CONVERGE_S = 30.0
DENY_ALL = """\
apiVersion: v1
kind: profile
metadata: {name: host-deny-all}
spec: {inbound_rules: [], outbound_rules: []}
"""
OPEN_ONE_PORT = f"""\
apiVersion: v1
kind: policy
metadata: {{tier: hosts, name: open-{OPENED}}}
spec:
  order: 1
  selector: role == 'fabric'
  inbound_rules: [{{action: allow, protocol: tcp, dst_ports: [{OPENED}]}}]
"""


@dataclass
class Lab:
    topo: Topology
    client: CalicoClient
    h1: Host
    h2: Host
    lan: Namespace
    w1: Workload  # on host1
    w2: Workload  # on host2

    def ctl(self, *args: str, host: Host | None = None) -> str:
        return self.topo.calicoctl(host or self.h1, *args).stdout

    def apply(self, text: str, name: str) -> None:
        path = self.h1.dir / name
        path.write_text(text)
        self.ctl("apply", "-f", str(path))

    def trace(self, *args: str) -> dict:  # type: ignore[type-arg]
        return json.loads(self.ctl("policy", "trace", *args, "-o", "json"))


def add_workload(topo: Topology, client: CalicoClient, host: Host) -> Workload:
    ns = Namespace("hep-wl")
    topo.calicoctl(host, "container", "add", ns.name, "ipv4")
    topo.calicoctl(host, "container", ns.name, "ip", "add", "ipv6")
    topo.calicoctl(host, "container", ns.name, "profile", "set", "wl")
    (ep,) = client.list_workload_endpoints(host.name, "netns", ns.name)
    wl = Workload(host.ns, host.name, ns, ep.name, ep.ipv4_nets[0].split("/")[0],
                  ep.ipv6_nets[0].split("/")[0], ep.mac or "", ["wl"])
    wl.listen(OPENED, CLOSED)
    return wl


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    topo = Topology("hep", hosts=2, ipv6=True)
    workloads: list[Workload] = []
    listeners = []
    lan: Namespace | None = None
    store = None
    try:
        assert topo.etcd is not None
        h1, h2 = topo.hosts
        store = topo.datastore()
        # the tests' etcd listens on a random port: keep it reachable whatever the policy
        store.put(ks.global_config_key("FailsafeOutboundHostPorts"),
                  f"udp:53,tcp:179,tcp:{topo.etcd.port}")
        client = CalicoClient(store)
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(topo.start_node, topo.hosts))
        topo.calicoctl(h1, "pool", "add", POOL4, POOL6)
        topo.calicoctl(h1, "profile", "add", "wl")
        topo.calicoctl(h1, "profile", "wl", "rule", "add", "inbound", "allow")
        for host in (h1, h2):
            workloads.append(add_workload(topo, client, host))
        # a LAN behind host1: traffic between it and host2 is forwarded by host1
        lan = Namespace("hep-lan")
        veth(h1.ns, "eth1", lan, "lan0")
        h1.ns.ip("addr", "add", f"{LAN_GW}/24", "dev", "eth1")
        lan.ip("addr", "add", f"{LAN_IP}/24", "dev", "lan0")
        lan.ip("route", "add", "default", "via", LAN_GW)
        h2.ns.ip("route", "add", LAN_NET, "via", h1.ip)
        for ns in (h1.ns.name, h2.ns.name, lan.name):
            listeners.append(serve(ns, (SSH, OPENED, CLOSED)))
        for ns in (h1.ns.name, h2.ns.name, lan.name, *(w.ns.name for w in workloads)):
            wait_serving(ns, (SSH, OPENED, CLOSED) if ns in (h1.ns.name, h2.ns.name,
                                                             lan.name) else (OPENED, CLOSED))
        lab = Lab(topo, client, h1, h2, lan, *workloads)
        wait_for(lambda: lab.w1.ping(lab.w2.ipv4) and lab.w1.ping(str(lab.w2.ipv6)),
                 CONVERGE_S, message="workloads reaching each other")
        yield lab
    finally:
        for proc in listeners:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for wl in workloads:
            for proc in wl.listeners:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        topo.close()
        for wl in workloads:
            wl.ns.delete()
        if lan is not None:
            lan.delete()
        if store is not None:
            store.close()


def reach(ns: Host | Namespace, dest: str, port: int) -> bool:
    name = ns.ns.name if isinstance(ns, Host) else ns.name
    return connect(name, dest, port, timeout=0.7)


def bgp_established(lab: Lab) -> bool:
    for host, other in ((lab.h1, lab.h2), (lab.h2, lab.h1)):
        status = lab.topo.calicoctl(host, "node", "status").stdout
        for ip in (other.ip, str(other.ip6)):
            if not re.search(rf"{re.escape(ip)} +\| node-to-node mesh \| up .*Established",
                             status):
                return False
    return True


def workloads_unaffected(lab: Lab) -> bool:
    w1, w2 = lab.w1, lab.w2
    return all((w1.ping(w2.ipv4), w2.ping(w1.ipv4), w1.ping(str(w2.ipv6)),
                w2.ping(str(w1.ipv6)), w1.connect(w2.ipv4, OPENED),
                w2.connect(w1.ipv4, CLOSED), w2.connect(str(w1.ipv6), OPENED)))


def test_deny_all_host_endpoint_keeps_failsafe_bgp_and_workloads(lab: Lab) -> None:
    h1, h2 = lab.h1, lab.h2
    assert reach(h2, h1.ip, OPENED) and reach(h2, LAN_IP, OPENED)  # before: all open
    lab.apply(DENY_ALL, "deny.yaml")
    lab.ctl("hostendpoint", "add", "fabric", "--node", h1.name, "--interface", "eth0",
            "--profile", "host-deny-all", "--label", "role=fabric")
    assert "host-deny-all" in lab.ctl("hostendpoint", "show")
    wait_for(lambda: not reach(h2, h1.ip, OPENED), CONVERGE_S,
             message="host1 closed by its host endpoint")
    # into host1: only the failsafe ports
    assert reach(h2, h1.ip, SSH)
    assert not reach(h2, h1.ip, CLOSED)
    assert not ping(h2.ns.name, h1.ip)
    # out of host1: closed too (22 is not an outbound failsafe port)
    assert not reach(h1, h2.ip, OPENED) and not reach(h1, h2.ip, SSH)
    # forwarded through eth0, both ways; no failsafe for forwarded traffic
    assert not reach(h2, LAN_IP, OPENED) and not reach(h2, LAN_IP, SSH)
    assert not reach(lab.lan, h2.ip, OPENED)
    # BGP: every session torn down and set up again through the host endpoint
    birdcl = ["birdcl", "-s", str(h1.dir / "run" / "bird.ctl")]
    h1.ns.exec(*birdcl, "restart", "all")
    wait_for(lambda: bgp_established(lab), CONVERGE_S, message="BGP re-established")
    assert workloads_unaffected(lab)
    # the trace agrees, and names the failsafe port and the profile
    ssh = lab.trace("--from", h2.ip, "--to", h1.ip, "--port", str(SSH))
    assert ssh["verdict"] == "allow"
    assert ssh["directions"][1]["decided_by"]["kind"] == "failsafe"
    http = lab.trace("--from", h2.ip, "--to", f"host:{h1.name}", "--port", str(OPENED))
    assert http["verdict"] == "deny"
    assert http["directions"][1]["decided_by"]["kind"] == "no-policy-accepted"
    assert "felix-hfrom-eth0" in http["directions"][1]["chains"]


def test_a_policy_opens_one_port_into_and_through_the_host(lab: Lab) -> None:
    h1, h2 = lab.h1, lab.h2
    lab.apply(OPEN_ONE_PORT, "open.yaml")  # felix on host1 still reads etcd: failsafe out
    wait_for(lambda: reach(h2, h1.ip, OPENED), CONVERGE_S, message=f"port {OPENED} open")
    assert reach(h2, LAN_IP, OPENED)  # forwarded in through eth0: its inbound policy
    assert not reach(h2, h1.ip, CLOSED) and not reach(h2, LAN_IP, CLOSED)
    assert not reach(lab.lan, h2.ip, OPENED)  # forwarded out through eth0: outbound policy
    assert reach(h2, h1.ip, SSH) and bgp_established(lab) and workloads_unaffected(lab)
    opened = lab.trace("--from", h2.ip, "--to", h1.ip, "--port", str(OPENED))
    assert opened["verdict"] == "allow"
    decided = opened["directions"][1]["decided_by"]
    assert (decided["kind"], decided["tier"], decided["policy"], decided["rule_index"]) == (
        "policy", "hosts", f"open-{OPENED}", 0)


def test_removing_the_host_endpoint_restores_the_default(lab: Lab) -> None:
    h1, h2 = lab.h1, lab.h2
    lab.ctl("hostendpoint", "remove", "fabric", "--node", h1.name)
    wait_for(lambda: reach(h2, h1.ip, CLOSED), CONVERGE_S, message="host1 open again")
    assert reach(h1, h2.ip, OPENED) and reach(h2, LAN_IP, CLOSED)
    assert reach(lab.lan, h2.ip, OPENED) and ping(h2.ns.name, h1.ip)
    assert bgp_established(lab) and workloads_unaffected(lab)
    assert lab.trace("--from", h2.ip, "--to", h1.ip, "--port", str(CLOSED))["verdict"] == \
        "allow"


@pytest.mark.parametrize("action,allowed", [("RETURN", True), ("ACCEPT", True),
                                            ("DROP", False)])
def test_default_endpoint_to_host_action(lab: Lab, action: str, allowed: bool) -> None:
    """Workload to its own host: dropped by default; RETURN and ACCEPT let it through
    after the workload's outbound policy (felix restarts itself for the change)."""
    key = ks.global_config_key("DefaultEndpointToHostAction")
    lab.client.store.put(key, action)
    try:
        wait_for(lambda: lab.w1.connect(lab.h1.ip, OPENED, timeout=0.5) == allowed,
                 CONVERGE_S, message=f"DefaultEndpointToHostAction={action}")
        assert lab.w1.ping(lab.h1.ip) == allowed
        trace = lab.trace("--from", lab.w1.ipv4, "--to", lab.h1.ip, "--port", str(OPENED))
        assert trace["verdict"] == ("allow" if allowed else "deny")
        if not allowed:
            assert trace["directions"][1]["decided_by"]["kind"] == \
                "DefaultEndpointToHostAction"
        assert workloads_unaffected(lab)
    finally:
        lab.client.store.delete(key)
