"""felix.calc.tunnels through the whole graph: pools, blocks and nodes in etcd -> tunnel
devices, routes to remote blocks, VXLAN neighbour and FDB entries, the all-hosts set and
the filter rules that let the encapsulations through between cluster hosts; independent
of update order and batching. IPIP is covered here on the routes and devices it would program (the
kernel of these machines cannot create them; see test_felix_tunnels_dataplane)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from felix.calc.graph import CalcGraph, CalcSettings, DesiredState
from felix.dataplane.types import (
    FDBState,
    IPSetState,
    NeighbourState,
    RouteState,
    Rule,
    TunnelDevice,
)
from libcalico import keyspace as ks

ME = "h1"
POOL = "198.19.0.0/16"
POOL2 = "198.20.0.0/16"
MAC = {"h1": "66:00:00:00:00:01", "h2": "66:00:00:00:00:02", "h3": "66:00:00:00:00:03"}
HOST_IP = {"h1": "198.18.1.1", "h2": "198.18.1.2", "h3": "198.18.2.1"}
TUNNEL = {"h1": "198.19.1.0", "h2": "198.19.2.0", "h3": "198.19.3.0"}
BLOCK = {"h1": "198.19.1.0/26", "h2": "198.19.2.0/26", "h3": "198.19.3.0/26"}

Update = tuple[str, str | None]


def pool(encap: str | None = "vxlan", mode: str = "always", **extra: Any) -> Update:
    value: dict[str, Any] = {"cidr": POOL, **extra}
    if encap == "vxlan":
        value["vxlan"] = "vxlan.calico"
    elif encap == "ipip":
        value["ipip"] = "tunl0"
    if encap and mode != "always":
        value[f"{encap}_mode"] = mode
    return ks.pool_key(POOL), json.dumps(value)


def node(host: str, network: bool = True, vxlan: bool = True,
         ipip: bool = False) -> list[Update]:
    out = [(ks.bgp_host_key(host, "ip_addr_v4"), HOST_IP[host])]
    if network:
        out.append((ks.bgp_host_key(host, "network_v4"), HOST_IP[host].rsplit(".", 1)[0]
                    + ".0/24"))
    if vxlan:
        out += [(ks.bgp_host_key(host, "vxlan_tunnel_addr_v4"), TUNNEL[host]),
                (ks.bgp_host_key(host, "vxlan_tunnel_mac"), MAC[host])]
    if ipip:
        out.append((ks.bgp_host_key(host, "ipip_tunnel_addr_v4"), TUNNEL[host]))
    return out


def block(cidr: str, owner: str | None, holders: dict[int, str]) -> Update:
    """A /26 whose ordinals in `holders` are allocated for the named hosts."""
    allocations: list[int | None] = [None] * 64
    attributes = []
    for ordinal, host in sorted(holders.items()):
        allocations[ordinal] = len(attributes)
        attributes.append({"handle_id": f"h{ordinal}", "secondary": {"host": host}})
    return ks.block_key(cidr), json.dumps({
        "cidr": cidr, "affinity": f"host:{owner}" if owner else None, "strict_affinity": False,
        "allocations": allocations, "attributes": attributes,
        "unallocated": [i for i in range(64) if allocations[i] is None]})


def cluster(encap: str = "vxlan", mode: str = "always", **node_args: Any) -> list[Update]:
    """Three nodes (h1, h2 on 198.18.1.0/24, h3 on 198.18.2.0/24), a block each, h3
    holding one address in h2's block."""
    return [pool(encap, mode), *node("h1", **node_args), *node("h2", **node_args),
            *node("h3", **node_args),
            block(BLOCK["h1"], "h1", {0: "h1", 1: "h1"}),
            block(BLOCK["h2"], "h2", {0: "h2", 5: "h3"}),
            block(BLOCK["h3"], "h3", {0: "h3"})]


def state(updates: list[Update], batches: int = 1, seed: int = 0) -> DesiredState:
    graph = CalcGraph(CalcSettings(ME, ipv6=False))
    chunks = [updates[i::batches] for i in range(batches)]
    for chunk in chunks:
        rng = random.Random(seed)
        chunk = list(chunk)
        rng.shuffle(chunk)
        graph.on_updates(chunk)
        graph.flush()
    return graph.desired_state()


def routes(s: DesiredState) -> dict[str, RouteState]:
    return {d: r for d, r in s.routes.items() if r.ifname is None or not
            r.ifname.startswith("cali")}


def test_vxlan_always_routes_every_remote_block_through_the_tunnel() -> None:
    s = state(cluster())
    assert s.devices == {"vxlan.calico": TunnelDevice(
        "vxlan.calico", "vxlan", TUNNEL["h1"], 1450, MAC["h1"], 4096, 4789, HOST_IP["h1"])}
    assert routes(s) == {
        BLOCK["h1"]: RouteState(BLOCK["h1"], None, blackhole=True),
        BLOCK["h2"]: RouteState(BLOCK["h2"], "vxlan.calico", TUNNEL["h2"], onlink=True),
        BLOCK["h3"]: RouteState(BLOCK["h3"], "vxlan.calico", TUNNEL["h3"], onlink=True),
        # h3's address in h2's block goes to h3 directly
        "198.19.2.5/32": RouteState("198.19.2.5/32", "vxlan.calico", TUNNEL["h3"], onlink=True),
    }
    assert s.neighbours == {NeighbourState(TUNNEL[h], MAC[h], "vxlan.calico")
                            for h in ("h2", "h3")}
    assert s.fdb == {FDBState(MAC[h], HOST_IP[h], "vxlan.calico") for h in ("h2", "h3")}


def test_vxlan_cross_subnet_routes_the_same_subnet_plainly() -> None:
    s = state(cluster(mode="cross-subnet"))
    assert routes(s)[BLOCK["h2"]] == RouteState(BLOCK["h2"], None, HOST_IP["h2"])
    assert routes(s)[BLOCK["h3"]] == RouteState(BLOCK["h3"], "vxlan.calico", TUNNEL["h3"],
                                                onlink=True)
    assert routes(s)["198.19.2.5/32"].ifname == "vxlan.calico"  # held by h3: other subnet


def test_cross_subnet_without_a_known_subnet_encapsulates() -> None:
    s = state(cluster(mode="cross-subnet", network=False))
    assert routes(s)[BLOCK["h2"]].ifname == "vxlan.calico"


def test_ipip_routes_via_the_host_address_on_tunl0() -> None:
    s = state(cluster("ipip", vxlan=False, ipip=True))
    assert s.devices == {"tunl0": TunnelDevice("tunl0", "ipip", TUNNEL["h1"], 1480)}
    assert routes(s)[BLOCK["h2"]] == RouteState(BLOCK["h2"], "tunl0", HOST_IP["h2"],
                                                onlink=True)
    assert routes(s)[BLOCK["h3"]] == RouteState(BLOCK["h3"], "tunl0", HOST_IP["h3"],
                                                onlink=True)
    assert not s.fdb and not s.neighbours
    cross = state(cluster("ipip", "cross-subnet", vxlan=False, ipip=True))
    assert routes(cross)[BLOCK["h2"]] == RouteState(BLOCK["h2"], None, HOST_IP["h2"])
    assert routes(cross)[BLOCK["h3"]].ifname == "tunl0"


def test_plain_pool_leaves_everything_to_bird() -> None:
    s = state(cluster(encap=None))  # type: ignore[arg-type]
    assert not routes(s) and not s.devices and not s.fdb and not s.neighbours


def test_nothing_through_the_tunnel_until_this_node_has_its_endpoint() -> None:
    updates = [u for u in cluster(mode="cross-subnet")
               if u[0] not in (ks.bgp_host_key(ME, "vxlan_tunnel_addr_v4"),
                               ks.bgp_host_key(ME, "vxlan_tunnel_mac"))]
    s = state(updates)
    assert not s.devices and not s.fdb
    # The same-subnet node is still reached plainly; the other subnet waits.
    assert set(routes(s)) == {BLOCK["h1"], BLOCK["h2"]}


def test_a_remote_node_without_its_endpoint_gets_no_tunnel_route() -> None:
    updates = [u for u in cluster() if u[0] != ks.bgp_host_key("h3", "vxlan_tunnel_mac")]
    s = state(updates)
    assert BLOCK["h3"] not in routes(s) and "198.19.2.5/32" not in routes(s)
    assert FDBState(MAC["h3"], HOST_IP["h3"], "vxlan.calico") not in s.fdb


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("batches", [1, 3, 7])
def test_result_depends_only_on_the_data_not_the_order(seed: int, batches: int) -> None:
    updates = cluster(mode="cross-subnet")
    assert state(updates, batches, seed) == state(updates)


def test_changes_remove_what_went_away() -> None:
    graph = CalcGraph(CalcSettings(ME, ipv6=False))
    graph.on_updates(cluster())
    graph.flush()
    # h3 goes (node removed, its block released), then the pool stops encapsulating.
    graph.on_updates([(k, None) for k, _ in node("h3")] + [(ks.block_key(BLOCK["h3"]), None)])
    changes = graph.flush()
    assert changes.routes == {BLOCK["h3"]: None, "198.19.2.5/32": None}
    assert changes.fdb == {FDBState(MAC["h2"], HOST_IP["h2"], "vxlan.calico")}
    graph.on_updates([pool(encap=None)])  # type: ignore[arg-type]
    changes = graph.flush()
    assert changes.devices == {"vxlan.calico": None}
    assert set(changes.routes) == {BLOCK["h1"], BLOCK["h2"]}
    assert all(r is None for r in changes.routes.values())
    assert changes.fdb == frozenset() and changes.neighbours == frozenset()
    assert graph.desired_state() == state([pool(encap=None), *node("h1"), *node("h2"),  # type: ignore[arg-type]
                                           block(BLOCK["h1"], "h1", {0: "h1", 1: "h1"}),
                                           block(BLOCK["h2"], "h2", {0: "h2", 5: "h3"})])


def test_mode_switch_between_always_and_cross_subnet_rewrites_only_what_differs() -> None:
    graph = CalcGraph(CalcSettings(ME, ipv6=False))
    graph.on_updates(cluster())
    graph.flush()
    graph.on_updates([pool(mode="cross-subnet")])
    changes = graph.flush()
    assert changes.routes == {BLOCK["h2"]: RouteState(BLOCK["h2"], None, HOST_IP["h2"])}
    assert not changes.devices and changes.fdb is None


def test_a_local_workload_route_wins_over_a_remote_route_to_the_same_address() -> None:
    # A workload moved here while the block still records h3 as the holder.
    ep = (ks.workload_endpoint_key(ME, "k8s", "moved", "eth0"),
          json.dumps({"state": "active", "name": "cali1", "ipv4_nets": ["198.19.2.5/32"],
                      "ipv6_nets": [], "profile_ids": []}))
    s = state([*cluster(), ep])
    assert s.routes["198.19.2.5/32"] == RouteState("198.19.2.5/32", "cali1")
    graph = CalcGraph(CalcSettings(ME, ipv6=False))
    graph.on_updates([*cluster(), ep])
    graph.flush()
    graph.on_updates([(ep[0], None)])
    changes = graph.flush()
    assert changes.routes["198.19.2.5/32"] == RouteState("198.19.2.5/32", "vxlan.calico",
                                                         TUNNEL["h3"], onlink=True)


def test_settings_reach_the_device() -> None:
    graph = CalcGraph(CalcSettings(ME, ipv6=False, vxlan_mtu=1400, vxlan_vni=77,
                                   vxlan_port=8472))
    graph.on_updates(cluster())
    graph.flush()
    device = graph.desired_state().devices["vxlan.calico"]
    assert (device.mtu, device.vni, device.port) == (1400, 77, 8472)


ALL_HOSTS = "felix-all-hosts"


def encap_rules(s: DesiredState) -> dict[str, list[Rule]]:
    """The rules of felix-INPUT / felix-OUTPUT that use the all-hosts set (v4, v6)."""
    return {f"v{v} {name}": [r for r in s.chains[(v, "filter")][name].rules
                             if ALL_HOSTS in r.match]
            for v in (4, 6) if (v, "filter") in s.chains
            for name in ("felix-INPUT", "felix-OUTPUT")}


def test_encapsulated_pools_let_cluster_hosts_through_before_host_endpoints() -> None:
    """The all-hosts set holds every node's BGP IPv4 address (this one's too, also a
    node without tunnel fields yet); the rules follow the pools' encapsulations."""
    lone = [(ks.bgp_host_key("h4", "ip_addr_v4"), "198.18.3.1")]
    s = state([*cluster(), *lone])
    assert s.ipsets[ALL_HOSTS] == IPSetState(ALL_HOSTS, 4, "hash:ip",
                                             frozenset({*HOST_IP.values(), "198.18.3.1"}))
    assert encap_rules(s) == {
        "v4 felix-INPUT": [Rule("-p udp -m udp --dport 4789 -m set --match-set "
                                "felix-all-hosts src", "-j ACCEPT", "VXLAN from a cluster host")],
        "v4 felix-OUTPUT": [Rule("-p udp -m udp --dport 4789 -m set --match-set "
                                 "felix-all-hosts dst", "-j ACCEPT", "VXLAN to a cluster host")]}
    ipip = state(cluster("ipip", vxlan=False, ipip=True))
    assert [r.match for r in encap_rules(ipip)["v4 felix-INPUT"]] == [
        "-p 4 -m set --match-set felix-all-hosts src"]
    both = state([*cluster(), (ks.pool_key(POOL2), json.dumps(
        {"cidr": POOL2, "ipip": "tunl0", "disabled": True}))])  # disabled: still routed
    assert [r.comment for r in encap_rules(both)["v4 felix-OUTPUT"]] == [
        "VXLAN to a cluster host", "IP-in-IP to a cluster host"]
    # VXLANPort is the port the rules open
    graph = CalcGraph(CalcSettings(ME, ipv6=True, vxlan_port=8472))
    graph.on_updates(cluster())
    graph.flush()
    rules = encap_rules(graph.desired_state())
    assert "--dport 8472" in rules["v4 felix-INPUT"][0].match
    assert rules["v6 felix-INPUT"] == rules["v6 felix-OUTPUT"] == []


def test_no_encapsulated_pool_no_all_hosts_set_and_no_rules() -> None:
    for updates in (cluster(encap=None),  # type: ignore[arg-type]
                    [u for u in cluster() if u[0] != ks.pool_key(POOL)]):
        s = state(updates)
        assert ALL_HOSTS not in s.ipsets
        assert not any(encap_rules(s).values())
        # the static chains are those of a graph that never saw a pool or a node
        empty = state([])
        assert s.chains[(4, "filter")]["felix-INPUT"] == \
            empty.chains[(4, "filter")]["felix-INPUT"]


def test_all_hosts_follows_nodes_and_pools() -> None:
    graph = CalcGraph(CalcSettings(ME, ipv6=False))
    graph.on_updates(cluster())
    graph.flush()
    # a node's address changes, another goes: only the set changes
    graph.on_updates([(ks.bgp_host_key("h2", "ip_addr_v4"), "198.18.1.22"),
                      *((k, None) for k, _ in node("h3"))])
    changes = graph.flush()
    assert changes.ipsets[4][ALL_HOSTS] == IPSetState(
        ALL_HOSTS, 4, "hash:ip", frozenset({HOST_IP["h1"], "198.18.1.22"}))
    assert not changes.chains
    # the pool stops encapsulating: the rules go and the set with them
    graph.on_updates([pool(encap=None)])  # type: ignore[arg-type]
    changes = graph.flush()
    assert changes.ipsets[4][ALL_HOSTS] is None
    assert set(changes.chains[(4, "filter")]) == {"felix-INPUT", "felix-OUTPUT"}
    assert not any(encap_rules(graph.desired_state()).values())
    # and back
    graph.on_updates([pool()])
    changes = graph.flush()
    assert changes.ipsets[4][ALL_HOSTS] is not None
    assert encap_rules(graph.desired_state())["v4 felix-INPUT"]


def test_invalid_node_fields_and_blocks_are_ignored() -> None:
    bad = [(ks.bgp_host_key("h2", "vxlan_tunnel_mac"), "not-a-mac"),
           (ks.block_key("198.19.9.0/26"), "{not json")]
    s = state([u for u in cluster() if u[0] != ks.bgp_host_key("h2", "vxlan_tunnel_mac")]
              + bad)
    assert BLOCK["h2"] not in routes(s) and "198.19.9.0/26" not in routes(s)
    assert BLOCK["h3"] in routes(s)
