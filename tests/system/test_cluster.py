"""A three-host cluster running the real stack, end to end.

Three simulated hosts on one fabric, each running `calicoctl node --runtime=none`
(felix, confd and BIRD under supervisord in its namespace), two workloads per host made
with `calicoctl container add`, one profile. The tests share the cluster and run in file
order; each one leaves the cluster as complete as it found it (the last one stops and
restarts a node).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from libcalico import keyspace as ks
from libcalico.client import CalicoClient
from netsim.netns import Namespace
from netsim.topology import Host, Topology
from netsim.wait import wait_for
from tests.support.workloads import Workload

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

POOL4 = "198.19.0.0/16"
POOL6 = "fd00:198:19::/64"
PROFILE = "sys"
OPEN_PORT, DENIED_PORT = 8081, 8080
CONVERGE_S = 30.0


@dataclass
class Cluster:
    topo: Topology
    client: CalicoClient
    workloads: list[Workload]

    def host_of(self, wl: Workload) -> Host:
        return next(h for h in self.topo.hosts if h.ns is wl.host_ns)


def add_workload(topo: Topology, client: CalicoClient, host: Host, ipv4: str = "ipv4",
                 ns: Namespace | None = None) -> Workload:
    """A workload namespace on `host` with an IPv4 and an IPv6 address from the pools."""
    ns = ns or Namespace("sys-wl")
    topo.calicoctl(host, "container", "add", ns.name, ipv4)
    topo.calicoctl(host, "container", ns.name, "ip", "add", "ipv6")
    topo.calicoctl(host, "container", ns.name, "profile", "set", PROFILE)
    (ep,) = client.list_workload_endpoints(host.name, "netns", ns.name)
    wl = Workload(host.ns, host.name, ns, ep.name, ep.ipv4_nets[0].split("/")[0],
                  ep.ipv6_nets[0].split("/")[0], ep.mac or "", [PROFILE])
    wl.listen(OPEN_PORT, DENIED_PORT)
    return wl


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    topo = Topology("sys", hosts=3, ipv6=True)
    namespaces: list[Namespace] = []
    workloads: list[Workload] = []
    store = None
    try:
        with ThreadPoolExecutor(3) as pool:  # nodes start together, as on real hosts
            list(pool.map(topo.start_node, topo.hosts))
        store = topo.datastore()
        client = CalicoClient(store)
        h1 = topo.hosts[0]
        topo.calicoctl(h1, "pool", "add", POOL4, POOL6)
        topo.calicoctl(h1, "profile", "add", PROFILE)
        for host in topo.hosts:
            for _ in range(2):
                wl = add_workload(topo, client, host)
                namespaces.append(wl.ns)
                workloads.append(wl)
        cluster = Cluster(topo, client, workloads)
        wait_for(lambda: full_matrix(cluster.workloads, 4) and full_matrix(cluster.workloads, 6),
                 CONVERGE_S, message="every workload reaching every other")
        yield cluster
    finally:
        for wl in workloads:
            for proc in wl.listeners:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        topo.close()
        for ns in namespaces:
            ns.delete()
        if store is not None:
            store.close()


def pairs(workloads: list[Workload]) -> Iterator[tuple[Workload, Workload]]:
    return ((a, b) for a in workloads for b in workloads if a is not b)


def addr(wl: Workload, version: int) -> str:
    return wl.ipv4 if version == 4 else str(wl.ipv6)


def full_matrix(workloads: list[Workload], version: int) -> bool:
    return all(a.ping(addr(b, version), timeout=0.5) for a, b in pairs(workloads))


def birdcl(topo: Topology, host: Host, *args: str) -> str:
    sock = host.dir / "run" / "bird.ctl"
    return host.ns.exec("birdcl", "-s", str(sock), *args, check=False).stdout


def kernel_routes(host: Host, version: int) -> str:
    return host.ns.ip(f"-{version}", "route", "show", "proto", "bird").stdout


def blocks_of(client: CalicoClient, host: Host) -> list[str]:
    kvs, _ = client.store.list(ks.affinity_dir(host.name))
    return [p.cidr for p in (ks.parse_key(kv.key) for kv in kvs)
            if isinstance(p, ks.AffinityKey)]


# --- the tests, in order ---------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 6])
def test_every_workload_reaches_every_other_by_icmp_and_tcp(cluster: Cluster,
                                                            version: int) -> None:
    failed = [(a.ns.name, addr(b, version)) for a, b in pairs(cluster.workloads)
              if not a.ping(addr(b, version))]
    assert not failed
    failed = [(a.ns.name, addr(b, version)) for a, b in pairs(cluster.workloads)
              if not a.connect(addr(b, version), OPEN_PORT)]
    assert not failed


def test_node_status_and_bgp_tables_hold_the_other_hosts_blocks(cluster: Cluster) -> None:
    topo = cluster.topo
    for host in topo.hosts:
        status = topo.calicoctl(host, "node", "status").stdout
        for program in ("bird", "confd", "felix"):
            assert re.search(rf"\| {program} +\| RUNNING", status), status
        others = [h for h in topo.hosts if h is not host]
        for other in others:
            assert re.search(rf"{re.escape(other.ip)} +\| node-to-node mesh \| up .*"
                             r"Established", status), status
            assert str(other.ip6) in status
            table = birdcl(topo, host, "show", "route")
            for block in blocks_of(cluster.client, other):
                assert block in table, (host.name, block, table)
                version = 6 if ":" in block else 4
                via = other.ip if version == 4 else str(other.ip6)
                assert re.search(rf"^{re.escape(block)} via {re.escape(via)} ",
                                 kernel_routes(host, version), re.MULTILINE), block


def test_a_deny_rule_blocks_that_port_only_and_removing_it_restores(cluster: Cluster) -> None:
    topo, h1 = cluster.topo, cluster.topo.hosts[0]
    src, dst = cluster.workloads[0], cluster.workloads[-1]  # on host1 and host3
    rule = ["inbound", "--at=0", "deny", "tcp", "to", "ports", str(DENIED_PORT)]
    topo.calicoctl(h1, "profile", PROFILE, "rule", "add", *rule)
    try:
        for version in (4, 6):
            wait_for(lambda v=version: not src.connect(addr(dst, v), DENIED_PORT),
                     CONVERGE_S, message=f"IPv{version} TCP {DENIED_PORT} blocked")
            assert src.connect(addr(dst, version), OPEN_PORT)
            assert src.ping(addr(dst, version))
            assert src.connect(addr(dst, version), DENIED_PORT, udp=True)
    finally:
        topo.calicoctl(h1, "profile", PROFILE, "rule", "remove", "inbound", "--at=0")
    for version in (4, 6):
        wait_for(lambda v=version: src.connect(addr(dst, v), DENIED_PORT), CONVERGE_S,
                 message=f"IPv{version} TCP {DENIED_PORT} allowed again")


def test_a_workload_moved_to_another_host_keeps_its_address(cluster: Cluster) -> None:
    topo = cluster.topo
    h1, h2, h3 = topo.hosts
    moving = cluster.workloads[1]  # the second workload of host1
    watcher = cluster.workloads[2]  # on host2
    ipv4 = moving.ipv4
    topo.calicoctl(h1, "container", "remove", moving.ns.name)
    wait_for(lambda: not watcher.ping(ipv4, timeout=0.3), CONVERGE_S,
             message="the removed workload unreachable")
    for proc in moving.listeners:
        proc.kill()
    moved = add_workload(topo, cluster.client, h3, ipv4=ipv4, ns=moving.ns)
    added = time.monotonic()
    wait_for(lambda: watcher.ping(ipv4, timeout=0.3), 5.0,
             message=f"{ipv4} reachable on host3 within 5 s")
    reached_s = time.monotonic() - added
    cluster.workloads[1] = moved
    assert moved.ipv4 == ipv4 and reached_s <= 5.0
    # Host3 announces the borrowed address on its own; host1 still owns the block.
    wait_for(lambda: re.search(rf"^{re.escape(ipv4)} via {re.escape(h3.ip)} ",
                               kernel_routes(h1, 4), re.MULTILINE) is not None, CONVERGE_S,
             message="host1 routes the moved address to host3")
    assert all(moved.connect(addr(b, 4), OPEN_PORT) for b in cluster.workloads if b is not moved)


def test_mesh_off_with_a_route_reflector_keeps_connectivity(cluster: Cluster) -> None:
    topo = cluster.topo
    h1, h2, h3 = topo.hosts
    topo.calicoctl(h1, "config", "node", "bgp", "rr_cluster_id", "1.0.0.1", "--hostname",
                   h1.name)
    topo.calicoctl(h1, "bgp", "node-mesh", "off")
    try:
        def only_via_reflector() -> bool:
            s2 = topo.calicoctl(h2, "node", "status").stdout
            s3 = topo.calicoctl(h3, "node", "status").stdout
            return (h3.ip not in s2 and h2.ip not in s3 and
                    all(re.search(rf"{re.escape(h1.ip)} .*Established", s) for s in (s2, s3)))

        wait_for(only_via_reflector, CONVERGE_S, message="clients peering only with host1")
        for version in (4, 6):
            wait_for(lambda v=version: full_matrix(cluster.workloads, v), CONVERGE_S,
                     message=f"full IPv{version} connectivity through the reflector")
        detail = birdcl(topo, h2, "show", "route", "all")
        assert "BGP.cluster_list" in detail and "1.0.0.1" in detail
    finally:
        topo.calicoctl(h1, "bgp", "node-mesh", "on")
        topo.calicoctl(h1, "config", "node", "bgp", "rr_cluster_id", "--remove", "--hostname",
                       h1.name)
    wait_for(lambda: h3.ip in topo.calicoctl(h2, "node", "status").stdout, CONVERGE_S,
             message="the mesh back")


def test_an_external_router_learns_the_pool_routes(cluster: Cluster) -> None:
    topo = cluster.topo
    tor = topo.add_host("tor", "198.18.0.200")
    try:
        lines = [f"router id {tor.ip};", "protocol device {}",
                 "protocol kernel { ipv4 { import none; export all; }; }"]
        for n in cluster.topo.hosts[:3]:
            lines.append(f"protocol bgp {n.name} {{ local {tor.ip} as 65000; neighbor {n.ip} "
                         "as 64512; ipv4 { import all; export none; }; }")
        conf = tor.dir / "tor.conf"
        conf.write_text("\n".join(lines) + "\n")
        topo.spawn(tor, ["bird", "-f", "-c", str(conf), "-s", str(tor.dir / "bird.ctl")],
                   name="bird")
        topo.calicoctl(topo.hosts[0], "bgp", "peer", "add", tor.ip, "as", "65000")
        blocks = [b for h in topo.hosts[:3] for b in blocks_of(cluster.client, h)
                  if ":" not in b]
        node_ips = "|".join(re.escape(h.ip) for h in topo.hosts[:3])

        def learned() -> bool:  # each block via one of the nodes (eBGP picks one path)
            routes = tor.ns.ip("route", "show").stdout
            return all(re.search(rf"^{re.escape(b)} via ({node_ips}) ", routes, re.MULTILINE)
                       for b in blocks)

        try:
            wait_for(learned, CONVERGE_S, message="the ToR learning every block")
        except TimeoutError:
            raise AssertionError(
                f"blocks {blocks}; ToR protocols:\n" + tor.ns.exec(
                    "birdcl", "-s", str(tor.dir / "bird.ctl"), "show", "protocols", "all",
                    check=False).stdout + "\nToR kernel:\n" + tor.ns.ip("route").stdout
                + "\nhost1 protocols:\n" + birdcl(topo, topo.hosts[0], "show", "protocols")
            ) from None
        table = tor.ns.exec("birdcl", "-s", str(tor.dir / "bird.ctl"), "show", "route").stdout
        assert "198.18.0.0/24" not in table  # only pool routes are exported
    finally:
        topo.calicoctl(topo.hosts[0], "bgp", "peer", "remove", tor.ip, check=False)
        topo.remove_host(tor)


def test_node_stop_withdraws_its_routes_and_run_brings_them_back(cluster: Cluster) -> None:
    topo = cluster.topo
    h1, h2, h3 = topo.hosts
    refused = topo.calicoctl(h3, "node", "stop", check=False)
    assert refused.returncode == 3 and "endpoint" in refused.stderr
    topo.calicoctl(h3, "node", "stop", "--force")
    assert topo.calicoctl(h3, "node", "status", check=False).returncode == 1
    for other in (h1, h2):
        wait_for(lambda o=other: f"via {h3.ip}" not in kernel_routes(o, 4), CONVERGE_S,
                 message=f"host3's routes withdrawn from {other.name}")
    on_h3 = [w for w in cluster.workloads if w.host_ns is h3.ns]
    assert not cluster.workloads[0].ping(on_h3[0].ipv4, timeout=0.5)
    topo.start_node(h3)
    wait_for(lambda: full_matrix(cluster.workloads, 4), CONVERGE_S,
             message="connectivity back after the node restarted")
