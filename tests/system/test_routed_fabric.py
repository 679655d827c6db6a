"""Routing modes on a routed fabric that knows nothing of the pools, end to end.

Four hosts on two L2 segments (198.18.1.0/24: host1, host2; 198.18.2.0/24: host3, host4)
behind a plain router (no BGP, only its connected routes), an "outside" host behind the
router (`netsim.fabric.RoutedFabric`). Every host runs the real node (felix, confd, BIRD
under supervisord); host1 and host2 are given `--ip ADDRESS/24`, host3 and host4 find their
subnet from their interface. One IPv4 pool changes mode on the fly - plain, VXLAN always,
VXLAN cross-subnet, plain again - beside an IPv6 pool that stays plain. The tests share
the fabric and run in file order; each leaves the pool as the next expects it. Nothing is
restarted between modes (the daemons' pids are checked at the end).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from calicoctl.checksystem import tunnel_support
from libcalico import keyspace as ks
from libcalico.client import CalicoClient
from libcalico.model.tunnel import tunnel_handle
from netsim.fabric import OUTSIDE_IP, RoutedFabric
from netsim.netns import Namespace
from netsim.topology import Host
from netsim.wait import wait_for
from tests.support.workloads import Workload

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

POOL = "198.19.0.0/16"
POOL2 = "198.20.0.0/16"  # a second pool, for "never NATed to other pools"
POOL6 = "fd00:198:19::/64"
PROFILE = "fab"
PORT = 8081
CONVERGE_S = 30.0
NAT_TOGGLE_S = 2.0


@dataclass
class Fabric:
    fab: RoutedFabric
    client: CalicoClient
    workloads: list[Workload]  # one per host, in host order
    created: list[Workload] = field(default_factory=list)  # every workload, for cleanup
    namespaces: list[Namespace] = field(default_factory=list)
    pids: dict[str, set[int]] = field(default_factory=dict)

    def wl(self, host: int) -> Workload:
        return self.workloads[host - 1]

    def host(self, n: int) -> Host:
        return self.fab.hosts[n - 1]

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.fab.calicoctl(self.fab.hosts[0], *args, check=check)

    def add_workload(self, host: Host, *requests: str) -> Workload:
        ns = Namespace("fab-wl")
        self.namespaces.append(ns)
        self.fab.calicoctl(host, "container", "add", ns.name, requests[0])
        for request in requests[1:]:
            self.fab.calicoctl(host, "container", ns.name, "ip", "add", request)
        self.fab.calicoctl(host, "container", ns.name, "profile", "set", PROFILE)
        (ep,) = self.client.list_workload_endpoints(host.name, "netns", ns.name)
        v6 = ep.ipv6_nets[0].split("/")[0] if ep.ipv6_nets else None
        wl = Workload(host.ns, host.name, ns, ep.name, ep.ipv4_nets[0].split("/")[0], v6,
                      ep.mac or "", [PROFILE])
        self.created.append(wl)
        wl.listen(PORT)
        wl.listeners.append(subprocess.Popen(
            ["ip", "netns", "exec", ns.name, sys.executable, "-c", _WHOAMI, str(PORT + 1)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        return wl

    def remove_workload(self, wl: Workload) -> None:
        self.fab.calicoctl(next(h for h in self.fab.hosts if h.ns is wl.host_ns),
                           "container", "remove", wl.ns.name)


def daemon_pids(fab: RoutedFabric) -> dict[str, set[int]]:
    """host -> pids of the long-lived felix, confd and BIRD running in it."""
    out: dict[str, set[int]] = {}
    for host in fab.hosts:
        pids = set()
        for pid in subprocess.run(["ip", "netns", "pids", host.ns.name], capture_output=True,
                                  text=True, check=False).stdout.split():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                words = [a.decode(errors="replace") for a in argv if a]
                name = " ".join(words)
                daemon = ("calico-felix" in name or "felix.main" in name
                          or ("calico-confd" in name and "--onetime" not in name)
                          or (Path(words[0]).name == "bird" and "-p" not in words))
                if daemon:
                    pids.add(int(pid))
        out[host.name] = pids
    return out


@pytest.fixture(scope="module")
def fabric() -> Iterator[Fabric]:
    fab = RoutedFabric("fab", (2, 2), ipv6=True)
    f: Fabric | None = None
    store = None
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda h: fab.start_node(h, with_prefix=h.name in ("host1", "host2")),
                          fab.hosts))
        store = fab.datastore()
        f = Fabric(fab, CalicoClient(store), [])
        f.ctl("pool", "add", POOL, POOL6)
        f.ctl("profile", "add", PROFILE)
        with ThreadPoolExecutor(4) as pool:
            f.workloads = list(pool.map(lambda h: f.add_workload(h, "ipv4", "ipv6"),
                                        fab.hosts))
        f.pids = daemon_pids(fab)
        yield f
    finally:
        if f is not None:
            for wl in f.created:
                for proc in wl.listeners:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
        fab.close()
        if f is not None:
            for ns in f.namespaces:
                ns.delete()
        if store is not None:
            store.close()


def reaches(a: Workload, b: Workload, timeout: float = 0.5) -> bool:
    return a.ping(b.ipv4, timeout=timeout)


def matrix(f: Fabric) -> dict[tuple[int, int], bool]:
    return {(i, j): reaches(f.wl(i), f.wl(j)) for i in range(1, 5) for j in range(1, 5)
            if i != j}


SAME_SEGMENT = {(1, 2), (2, 1), (3, 4), (4, 3)}


def kernel_routes(host: Host, dest: str) -> list[str]:
    return [line for line in host.ns.ip("route", "show", dest).stdout.splitlines() if line]


def block_of(f: Fabric, host: Host) -> str:
    """The host's (first) block in POOL."""
    kvs, _ = f.client.store.list(ks.affinity_dir(host.name, 4))
    cidrs = sorted(p.cidr for kv in kvs if isinstance(p := ks.parse_key(kv.key), ks.AffinityKey))
    return next(c for c in cidrs if c.startswith("198.19."))


@dataclass
class Seen:
    vxlan: list[str]  # UDP 4789 packets
    icmp: list[str]  # plain (not encapsulated) ICMP packets

    def vxlan_between(self, a: Host, b: Host) -> bool:
        return any(f"{a.ip}." in line and f"{b.ip}.4789" in line for line in self.vxlan)

    def plain_icmp(self, src: Workload, dst: Workload) -> bool:
        return any(f"{src.ipv4} > {dst.ipv4}" in line for line in self.icmp)


def captured(f: Fabric, where: Namespace, iface: str, src: Workload, dst: Workload,
             count: int = 3) -> Seen:
    """What tcpdump on `iface` in `where` sees while `src` pings `dst`: VXLAN packets
    (outer UDP 4789) and plain ICMP packets, captured apart."""
    vxlan = f.fab.capture(where, iface, "udp port 4789")
    try:
        icmp = f.fab.capture(where, iface, "icmp")
        try:
            src.ping(dst.ipv4, count=count, timeout=1)
            return Seen(vxlan.lines(), icmp.lines())
        finally:
            icmp.remove()
    finally:
        vxlan.remove()


# --- the tests, in order ---------------------------------------------------------------------


def test_plain_pool_reaches_only_the_same_segment(fabric: Fabric) -> None:
    f = fabric
    wait_for(lambda: all(reaches(f.wl(a), f.wl(b)) for a, b in SAME_SEGMENT), CONVERGE_S,
             message="workloads on one segment reaching each other through BGP routes")
    result = matrix(f)
    assert {p for p, ok in result.items() if ok} == SAME_SEGMENT, result
    # BIRD announced the blocks; host1 learned host2's via host2, and the router, which
    # would have to carry host3's, has no pool route at all.
    assert any("proto bird" in r and f.host(2).ip in r
               for r in kernel_routes(f.host(1), block_of(f, f.host(2))))
    assert "198.19." not in f.fab.router.ip("route").stdout


def test_vxlan_always_reaches_everyone_and_encapsulates_every_packet(fabric: Fabric) -> None:
    f = fabric
    f.ctl("pool", "add", POOL, "--vxlan")
    wait_for(lambda: all(matrix(f).values()), CONVERGE_S,
             message="every workload reaching every other through VXLAN")
    h1, h2, h3 = f.host(1), f.host(2), f.host(3)
    # The tunnel endpoints are on the nodes, the addresses from the pool with affinity.
    node = f.client.get_node("host1")
    assert node is not None and node.vxlan_tunnel_addr and node.vxlan_tunnel_mac
    assert f.client.store.get(ks.bgp_host_key("host1", "network_v4")).value == "198.18.1.0/24"
    assert f.client.store.get(ks.bgp_host_key("host3", "network_v4")).value == "198.18.2.0/24"
    link = json.loads(h1.ns.ip("-d", "-j", "link", "show", "vxlan.calico").stdout)[0]
    assert link["mtu"] == 1450 and link["address"] == node.vxlan_tunnel_mac
    assert link["linkinfo"]["info_data"]["id"] == 4096
    assert link["linkinfo"]["info_data"]["port"] == 4789
    # Every packet between hosts is VXLAN: across the router and within a segment.
    seg1 = f.fab.segments[0]
    on_router = captured(f, f.fab.router, seg1.router_if, f.wl(1), f.wl(3))
    assert on_router.vxlan_between(h1, h3) and not on_router.plain_icmp(f.wl(1), f.wl(3))
    on_switch = captured(f, seg1.switch, "br0", f.wl(1), f.wl(2))
    assert on_switch.vxlan_between(h1, h2), on_switch
    assert not on_switch.plain_icmp(f.wl(1), f.wl(2)), on_switch
    # One owner per route: host2's route to host1's block is felix's alone.
    routes = kernel_routes(h2, block_of(f, h1))
    assert len(routes) == 1 and "proto 80" in routes[0] and "vxlan.calico" in routes[0], routes


def test_workload_in_vxlan_pool_gets_the_tunnel_mtu_and_1400_byte_df_pings_pass(
        fabric: Fabric) -> None:
    f = fabric
    wl = f.add_workload(f.host(1), POOL)
    link = json.loads(wl.ns.ip("-j", "link", "show", "eth1").stdout)[0]
    assert link["mtu"] == 1450
    target = f.wl(3)  # the other segment: through the tunnel
    wait_for(lambda: wl.ping(target.ipv4, timeout=0.5), CONVERGE_S, message="new workload")
    ping = wl.ns.exec("ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-M", "do", "-s",
                      "1400", target.ipv4, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    too_big = wl.ns.exec("ping", "-n", "-c", "1", "-W", "1", "-M", "do", "-s", "1423",
                         target.ipv4, check=False)
    assert too_big.returncode != 0  # 1451 bytes: above the workload's MTU


def test_vxlan_cross_subnet_encapsulates_only_between_segments(fabric: Fabric) -> None:
    f = fabric
    h1, h2, h3 = f.host(1), f.host(2), f.host(3)
    f.ctl("pool", "add", POOL, "--vxlan", "--vxlan-mode=cross-subnet")
    wait_for(lambda: any("proto 80" in r and "vxlan" not in r and h2.ip in r
                         for r in kernel_routes(h1, block_of(f, h2))), CONVERGE_S,
             message="host1 reaching host2's block by a plain route")
    wait_for(lambda: all(matrix(f).values()), CONVERGE_S, message="full reachability")
    seg1 = f.fab.segments[0]
    on_switch = captured(f, seg1.switch, "br0", f.wl(1), f.wl(2))
    assert on_switch.plain_icmp(f.wl(1), f.wl(2)) and not on_switch.vxlan, on_switch
    on_router = captured(f, f.fab.router, seg1.router_if, f.wl(1), f.wl(3))
    assert on_router.vxlan_between(h1, h3) and not on_router.plain_icmp(f.wl(1), f.wl(3))


def test_ipv6_pool_stays_native_beside_the_ipv4_vxlan_pool(fabric: Fabric) -> None:
    f = fabric
    a, b = f.wl(1), f.wl(2)
    assert a.ipv6 and b.ipv6
    wait_for(lambda: a.ping(b.ipv6, timeout=0.5), CONVERGE_S,  # type: ignore[arg-type]
             message="IPv6 within the segment")
    route = f.host(1).ns.ip("-6", "route", "show", "proto", "bird").stdout
    assert f.host(2).ip6 in route and "vxlan" not in route, route  # type: ignore[operator]
    tunnel6 = f.host(1).ns.ip("-6", "route", "show", "dev", "vxlan.calico").stdout
    assert not [r for r in tunnel6.splitlines() if not r.startswith("fe80::")], tunnel6


def test_nat_outgoing_hides_workloads_from_the_outside_only(fabric: Fabric) -> None:
    f = fabric
    f.ctl("pool", "add", POOL2, "--vxlan")  # another pool: never NATed to
    other = f.add_workload(f.host(3), POOL2)
    log = f.fab.dir / "outside-udp.log"
    assert f.fab.outside is not None
    server = subprocess.Popen(["ip", "netns", "exec", f.fab.outside.name, sys.executable,
                               "-c", _LOGGER, str(PORT), str(log)], start_new_session=True)
    try:
        src = f.wl(1)

        def logged(tag: str) -> str | None:
            lines = log.read_text().splitlines() if log.exists() else []
            return next((line.split()[1] for line in lines if line.split()[0] == tag), None)

        def source_seen(tag: str) -> str | None:
            """Send one datagram (a new flow) to the outside; the source it arrived with."""
            src.ns.exec(sys.executable, "-c", _SEND, OUTSIDE_IP, str(PORT), tag)
            try:
                return wait_for(lambda: logged(tag), 0.5, interval=0.02)
            except TimeoutError:
                return None

        wait_for(lambda: source_seen("plain") == src.ipv4, CONVERGE_S,
                 message="the outside seeing the workload's own address without NAT")
        f.ctl("pool", "add", POOL, "--vxlan", "--vxlan-mode=cross-subnet", "--nat-outgoing")
        start = time.monotonic()
        wait_for(lambda: source_seen(f"nat{time.monotonic()}") == f.host(1).ip,
                 NAT_TOGGLE_S + 1, interval=0.1, message="the outside seeing host1's address")
        assert time.monotonic() - start <= NAT_TOGGLE_S
        # Workloads, here and in other pools, see the workload's own address.
        for dst in (f.wl(2), f.wl(3), other):
            got = src.ns.exec(sys.executable, "-c", _ASK, dst.ipv4, str(PORT + 1),
                              check=False)
            assert got.stdout.strip() == src.ipv4, (dst.ipv4, got.stdout, got.stderr)
        f.ctl("pool", "add", POOL, "--vxlan", "--vxlan-mode=cross-subnet")
        start = time.monotonic()
        wait_for(lambda: source_seen(f"off{time.monotonic()}") == src.ipv4, NAT_TOGGLE_S + 1,
                 interval=0.1, message="NAT off again")
        assert time.monotonic() - start <= NAT_TOGGLE_S
    finally:
        server.kill()
        server.wait(5)
        f.remove_workload(other)


def test_disabled_pool_assigns_nothing_but_keeps_its_blocks_routed(fabric: Fabric,
                                                                   tmp_path: Path) -> None:
    f = fabric
    doc = tmp_path / "disabled.yaml"
    for cidr, extra in ((POOL, "vxlan: true, vxlan_mode: cross-subnet, "), (POOL6, ""),
                        (POOL2, "vxlan: true, ")):
        doc.write_text(f"apiVersion: v1\nkind: ipPool\nmetadata: {{cidr: '{cidr}'}}\n"
                       f"spec: {{{extra}disabled: true}}\n")
        f.ctl("apply", "-f", str(doc))
    try:
        ns = Namespace("fab-wl")
        f.namespaces.append(ns)
        refused = f.fab.calicoctl(f.host(2), "container", "add", ns.name, "ipv4", check=False)
        assert refused.returncode == 3 and "no enabled IPv4 pool" in refused.stderr, \
            refused.stderr
        wait_for(lambda: all(matrix(f).values()), CONVERGE_S,
                 message="existing workloads still reaching each other")
        # Blocks with addresses stay routed: felix's VXLAN routes and BIRD's IPv6 routes.
        assert any("vxlan.calico" in r for r in kernel_routes(f.host(1), block_of(f, f.host(3))))
        assert f.host(2).ip6 in f.host(1).ns.ip(  # type: ignore[operator]
            "-6", "route", "show", "proto", "bird").stdout
        assert f.wl(1).ping(str(f.wl(2).ipv6), timeout=1)
    finally:
        for cidr, flags in ((POOL, ("--vxlan", "--vxlan-mode=cross-subnet")), (POOL6, ()),
                            (POOL2, ("--vxlan",))):
            f.ctl("pool", "add", cidr, *flags)


def test_turning_vxlan_off_goes_back_to_plain_routes_and_releases_tunnels(
        fabric: Fabric) -> None:
    f = fabric
    f.ctl("pool", "remove", POOL2)  # holds only tunnel addresses now: they go with it
    f.ctl("pool", "add", POOL)
    for host in f.fab.hosts:
        wait_for(lambda h=host: not h.ns.ip("link", "show", "vxlan.calico",
                                            check=False).stdout, CONVERGE_S,
                 message=f"vxlan.calico gone from {host.name}")
    wait_for(lambda: all(reaches(f.wl(a), f.wl(b)) for a, b in SAME_SEGMENT), CONVERGE_S,
             message="same-segment reachability through BGP routes again")
    result = matrix(f)
    assert {p for p, ok in result.items() if ok} == SAME_SEGMENT, result
    for host in f.fab.hosts:
        node = f.client.get_node(host.name)
        assert node is not None and node.vxlan_tunnel_addr is None
        assert node.vxlan_tunnel_mac is None
        held, _ = f.client.store.list(ks.handle_key(tunnel_handle("vxlan", host.name)))
        assert not held
    assert any("proto bird" in r for r in kernel_routes(f.host(1), block_of(f, f.host(2))))
    assert daemon_pids(f.fab) == f.pids  # nothing was restarted


def test_ipip_end_to_end_where_the_kernel_has_it(fabric: Fabric) -> None:
    supported, detail = tunnel_support("ipip")
    if not supported:
        pytest.skip(f"this kernel cannot create IPIP devices ({detail})")
    f = fabric
    f.ctl("pool", "add", POOL, "--ipip")
    try:
        wait_for(lambda: all(matrix(f).values()), CONVERGE_S,
                 message="every workload reaching every other through IPIP")
        seg1 = f.fab.segments[0]
        cap = f.fab.capture(f.fab.router, seg1.router_if, "ip proto 4")
        try:
            f.wl(1).ping(f.wl(3).ipv4, count=3, timeout=1)
            lines = cap.lines()
        finally:
            cap.remove()
        assert any(f"{f.host(1).ip} > {f.host(3).ip}" in line for line in lines), lines
    finally:
        f.ctl("pool", "add", POOL)


_LOGGER = """
import socket, sys
port, path = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
while True:
    data, addr = s.recvfrom(100)
    with open(path, "a") as f:
        f.write(f"{data.decode()} {addr[0]}\\n")
"""

_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
"""

_WHOAMI = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    _, addr = s.recvfrom(100)
    s.sendto(addr[0].encode(), addr)
"""

_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b"who", (sys.argv[1], int(sys.argv[2])))
print(s.recv(100).decode())
"""
