"""confd with real BIRD in three simulated hosts (network namespaces) and a real etcd.

Each host runs `calico-confd` and BIRD 2 (started after confd wrote its first
configuration, so confd also waits for BIRD). The tests write the datastore the way
calicoctl and IPAM do and look at the hosts' kernel tables and BIRD's protocols.
The hosts share one topology per module; each test starts from the same baseline
datastore (full mesh, pool 198.19.0.0/16, no blocks).
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from libcalico import keyspace as ks
from libcalico.datastore import Datastore
from libcalico.model.network import BGPPeer
from netsim.topology import Host, Topology
from netsim.wait import wait_for

# BIRD 2 comes with the README's install: without it these tests fail, never skip.
pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

POOL = "198.19.0.0/16"
CONFD = str(Path(sys.executable).with_name("calico-confd"))
CONVERGE = 60.0


def converge(condition, timeout: float = CONVERGE, message: str = "convergence"):
    """Poll (gently: birdc is a process per call) until `condition` holds."""
    return wait_for(condition, timeout, interval=0.2, message=message)


def birdc(host: Host, *cmd: str) -> str:
    return host.ns.exec("birdc", "-s", str(host.dir / "bird.ctl"), *cmd, check=False).stdout


def protocols(host: Host) -> dict[str, tuple[str, str, str]]:
    """name -> (state, since, info) from `birdc show protocols`."""
    out = {}
    for line in birdc(host, "show", "protocols").splitlines():
        m = re.match(r"^(\S+)\s+BGP\s+\S+\s+(\S+)\s+(\d{4}-\d\d-\d\d \S+|\S+)\s*(.*)$", line)
        if m:
            out[m[1]] = (m[2], m[3], m[4].strip())
    return out


def established(host: Host, *names: str) -> bool:
    protos = protocols(host)
    return all(protos.get(n, ("", "", ""))[2] == "Established" for n in names)


def kernel_route(host: Host, prefix: str) -> str:
    return host.ns.ip("route", "show", "exact", prefix).stdout.strip()


def mesh_name(host: Host) -> str:
    return "Mesh_" + host.ip.replace(".", "_")


def add_workload(host: Host, address: str, iface: str) -> None:
    """A workload route as felix programs it: /32 via a cali veth, protocol 80."""
    host.ns.ip("link", "add", iface, "type", "veth", "peer", "name", f"wl{iface[4:]}")
    host.ns.ip("link", "set", iface, "up")
    host.ns.ip("route", "add", address, "dev", iface, "proto", "80")


def claim_block(store: Datastore, host: Host, cidr: str, ordinals: list[int]) -> None:
    """The keys IPAM writes when `host` claims `cidr` and allocates the ordinals."""
    allocations: list[int | None] = [None] * 64
    attributes = []
    for o in ordinals:
        allocations[o] = len(attributes)
        attributes.append({"handle_id": f"wl-{o}", "secondary": {"host": host.name}})
    store.put(ks.affinity_key(host.name, cidr), "")
    store.put(ks.block_key(cidr), json.dumps({
        "cidr": cidr, "affinity": f"host:{host.name}", "strict_affinity": False,
        "allocations": allocations,
        "unallocated": [i for i in range(64) if allocations[i] is None],
        "attributes": attributes}))


def write_baseline(store: Datastore, topo: Topology) -> None:
    store.delete_prefix(ks.ROOT + "/")
    store.put(ks.BGP_GLOBAL_AS_KEY, "64512")
    store.put(ks.BGP_GLOBAL_MESH_KEY, json.dumps({"enabled": True}))
    store.put(ks.pool_key(POOL), json.dumps({"cidr": POOL}))
    for h in topo.hosts:
        store.put(ks.bgp_host_key(h.name, "ip_addr_v4"), h.ip)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Topology]:
    with Topology("cfd", hosts=3) as topo:
        store = topo.datastore()
        try:
            write_baseline(store, topo)
        finally:
            store.close()
        for h in topo.hosts:
            topo.spawn(h, [CONFD, "--hostname", h.name, "--config-file", str(h.dir / "bird.cfg"),
                           "--socket", str(h.dir / "bird.ctl"),
                           "--include-dir", str(h.dir / "bird.d")], name="confd")
        for h in topo.hosts:
            converge(lambda h=h: (h.dir / "bird.cfg").exists(), 20,
                     message=f"confd's first config on {h.name}")
            topo.spawn(h, ["bird", "-f", "-R", "-c", str(h.dir / "bird.cfg"),
                           "-s", str(h.dir / "bird.ctl"), "-P", str(h.dir / "bird.pid")],
                       name="bird")
        yield topo


@pytest.fixture
def store(cluster: Topology) -> Iterator[Datastore]:
    client = cluster.datastore()
    write_baseline(client, cluster)
    a, b, c = cluster.hosts
    try:
        converge(lambda: established(a, mesh_name(b), mesh_name(c))
                 and established(b, mesh_name(a), mesh_name(c)),
                 message="the full mesh")
        yield client
    except BaseException:
        for h in cluster.hosts:
            print(f"--- {h.name} confd\n{cluster.log_tail(h, 'confd')}\n"
                  f"--- {h.name} bird\n{cluster.log_tail(h, 'bird')}\n"
                  f"{birdc(h, 'show', 'protocols')}")
        raise
    finally:
        client.close()


def test_workload_route_reaches_the_other_hosts_as_a_block(cluster: Topology,
                                                           store: Datastore) -> None:
    a, b, c = cluster.hosts
    claim_block(store, a, "198.19.0.0/26", [2])
    add_workload(a, "198.19.0.2/32", "cali0001")
    try:
        for other in (b, c):
            converge(lambda o=other: f"via {a.ip}" in kernel_route(o, "198.19.0.0/26"),
                     message=f"A's block in {other.name}'s kernel")
            assert "proto bird" in kernel_route(other, "198.19.0.0/26")
            assert kernel_route(other, "198.19.0.2/32") == ""  # the block, not the /32
        assert kernel_route(a, "198.19.0.0/26").startswith("blackhole")
        assert "proto 80" in kernel_route(a, "198.19.0.2/32")  # felix's route untouched
    finally:
        a.ns.ip("link", "del", "cali0001", check=False)


def test_changing_one_peer_leaves_the_other_sessions_alone(cluster: Topology,
                                                           store: Datastore) -> None:
    a, b, c = cluster.hosts
    before = protocols(a)
    store.put(ks.bgp_peer_key("198.18.0.50", a.name),
              json.dumps(BGPPeer("198.18.0.50", 65050, a.name).to_json()))
    converge(lambda: "Node_198_18_0_50" in protocols(a),
             message="the new peer in A's BIRD")
    store.put(ks.bgp_peer_key("198.18.0.50", a.name),
              json.dumps(BGPPeer("198.18.0.50", 65051, a.name).to_json()))
    converge(lambda: re.search(r"Neighbor AS:\s+65051",
                               birdc(a, "show", "protocols", "all", "Node_198_18_0_50")),
             message="the changed peer in A's BIRD")
    after = protocols(a)
    for name in (mesh_name(b), mesh_name(c)):
        assert after[name] == before[name], (name, before[name], after[name])


def write_tor_config(tor: Host, nodes: list[Host]) -> Path:
    lines = [f"router id {tor.ip};",
             "protocol device {}",
             "protocol kernel { ipv4 { import none; export all; }; }",
             # One pool route and one route outside the pools offered to the nodes.
             "protocol static tor_routes { ipv4; route 198.19.200.0/24 blackhole;"
             " route 198.21.0.0/24 blackhole; }"]
    for n in nodes:
        lines.append(f"protocol bgp node_{n.name} {{ local {tor.ip} as 65000; "
                     f"neighbor {n.ip} as 64512; ipv4 {{ import all; export all; }}; }}")
    path = tor.dir / "tor.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tor_learns_the_pool_routes_and_nothing_else(cluster: Topology,
                                                     store: Datastore) -> None:
    a, b, c = cluster.hosts
    tor = cluster.add_host("tor", "198.18.0.200")
    conf = write_tor_config(tor, [a, b, c])
    cluster.spawn(tor, ["bird", "-f", "-c", str(conf), "-s", str(tor.dir / "bird.ctl")],
                  name="bird")
    claim_block(store, a, "198.19.0.0/26", [2])
    add_workload(a, "198.19.0.2/32", "cali0002")
    add_workload(a, "198.20.5.0/24", "cali0003")  # a route outside every pool
    try:
        # What `calicoctl bgp peer add 198.18.0.200 as 65000` writes.
        store.put(ks.bgp_peer_key(tor.ip), json.dumps(BGPPeer(tor.ip, 65000).to_json()))
        converge(lambda: all(established(tor, f"node_{n.name}") for n in (a, b, c)),
                 message="the ToR's sessions")
        converge(lambda: f"via {a.ip}" in kernel_route(tor, "198.19.0.0/26"),
                 message="A's block at the ToR")
        pool = ipaddress.ip_network(POOL)
        for n in (a, b, c):
            exported = re.findall(r"^(\d+\.\d+\.\d+\.\d+/\d+)",
                                  birdc(n, "show", "route", "export", "Global_198_18_0_200"),
                                  re.MULTILINE)
            assert all(ipaddress.ip_network(p).subnet_of(pool) for p in exported), exported
        learned = re.findall(r"^(\d+\.\d+\.\d+\.\d+/\d+)", birdc(tor, "show", "route"),
                             re.MULTILINE)
        assert "198.19.0.0/26" in learned
        assert "198.20.5.0/24" not in learned and "198.19.0.2/32" not in learned
        # From the ToR the nodes take the pool route only.
        converge(lambda: f"via {tor.ip}" in kernel_route(b, "198.19.200.0/24"),
                 message="the ToR's pool route at B")
        assert kernel_route(b, "198.21.0.0/24") == ""
    finally:
        a.ns.ip("link", "del", "cali0002", check=False)
        a.ns.ip("link", "del", "cali0003", check=False)
        store.delete(ks.bgp_peer_key(tor.ip))
        cluster.remove_host(tor)


def test_mesh_off_with_a_route_reflector_converges(cluster: Topology,
                                                   store: Datastore) -> None:
    a, b, c = cluster.hosts
    claim_block(store, a, "198.19.0.0/26", [2])
    converge(lambda: f"via {a.ip}" in kernel_route(b, "198.19.0.0/26"),
             message="A's block at B over the mesh")
    # First name the reflector (its sessions to A and B restart with `rr client`) ...
    store.put(ks.bgp_host_key(c.name, "rr_cluster_id"), "1.0.0.1")
    converge(lambda: "rr client" in (c.dir / "bird.cfg").read_text()
             and established(c, mesh_name(a), mesh_name(b)),
             message="the reflector's sessions to its clients")
    to_reflector = protocols(a)[mesh_name(c)]
    # ... then turn the mesh off: the client-reflector sessions stay up.
    store.put(ks.BGP_GLOBAL_MESH_KEY, json.dumps({"enabled": False}))
    converge(lambda: set(protocols(a)) == {mesh_name(c)} and set(protocols(b)) == {mesh_name(c)}
             and established(a, mesh_name(c)) and established(b, mesh_name(c)),
             message="clients peering only with the reflector")
    assert protocols(a)[mesh_name(c)] == to_reflector
    claim_block(store, a, "198.19.0.64/26", [1])
    converge(lambda: f"via {a.ip}" in kernel_route(b, "198.19.0.64/26"),
             message="A's new block at B through the reflector")
    detail = birdc(b, "show", "route", "for", "198.19.0.64/26", "all")
    assert "BGP.cluster_list" in detail and "1.0.0.1" in detail
    assert f"via {a.ip}" in kernel_route(b, "198.19.0.0/26")


def test_ipv6_sessions_carry_ipv6_blocks(cluster: Topology, store: Datastore) -> None:
    a, b, c = cluster.hosts
    pool6 = "fd00:198:19::/48"
    for i, h in enumerate((a, b, c), start=1):
        h.ns.ip("-6", "addr", "add", f"fd00:198:18::{i}/64", "dev", "eth0", "nodad")
    try:
        store.put(ks.pool_key(pool6), json.dumps({"cidr": pool6}))
        for i, h in enumerate((a, b, c), start=1):
            store.put(ks.bgp_host_key(h.name, "ip_addr_v6"), f"fd00:198:18::{i}")
        store.put(ks.affinity_key(a.name, "fd00:198:19::/122"), "")
        for other in (b, c):
            converge(lambda o=other: "via fd00:198:18::1" in o.ns.ip(
                "-6", "route", "show", "exact", "fd00:198:19::/122").stdout,
                message=f"A's IPv6 block in {other.name}'s kernel")
        assert established(a, "Mesh_fd00_198_18__2", "Mesh_fd00_198_18__3", mesh_name(b))
    finally:
        for i, h in enumerate((a, b, c), start=1):
            h.ns.ip("-6", "addr", "del", f"fd00:198:18::{i}/64", "dev", "eth0", check=False)
