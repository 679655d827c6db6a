"""The overlay values: pool encapsulation and modes, a node's subnet and tunnel fields,
the pure helpers (MAC, subnet test, tunnel handles, which tunnel address to keep, which
MTU a workload gets, a node's subnet from `ip -j addr`) and felix's parsing of node
fields and blocks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from calicoctl.nodestart import find_network
from felix.calc.parse import parse_update
from felix.calc.types import BlockInfo
from felix.config import ConfigError, load_config
from libcalico import keyspace as ks
from libcalico.errors import ValidationError
from libcalico.model import IPPool, Node
from libcalico.model.network import NODE_KEYS
from libcalico.model.tunnel import (
    same_subnet,
    tunnel_handle,
    tunnel_handle_owner,
    vxlan_mac_for,
)
from libcalico.tunnel import choose_address
from workload.mtu import choose_mtu


def test_pool_encapsulation_json_and_resource_round_trip() -> None:
    vx = IPPool("198.19.0.0/16", vxlan=True, vxlan_mode="cross-subnet", nat_outgoing=True)
    assert vx.encapsulation == "vxlan" and vx.encap_mode == "cross-subnet"
    assert vx.to_json() == {"cidr": "198.19.0.0/16", "vxlan": "vxlan.calico",
                            "vxlan_mode": "cross-subnet", "masquerade": True}
    assert IPPool.from_json(vx.to_json()) == vx
    assert IPPool.from_resource(vx.to_resource()) == vx
    assert vx.to_resource()["spec"] == {"vxlan": True, "vxlan_mode": "cross-subnet",
                                        "nat_outgoing": True}
    always = IPPool("198.19.0.0/16", vxlan=True)
    assert always.to_json() == {"cidr": "198.19.0.0/16", "vxlan": "vxlan.calico"}
    ipip = IPPool("198.19.0.0/16", ipip=True, ipip_mode="cross-subnet")
    assert ipip.to_json() == {"cidr": "198.19.0.0/16", "ipip": "tunl0",
                              "ipip_mode": "cross-subnet"}
    assert IPPool.from_json(ipip.to_json()) == ipip
    assert IPPool("198.19.0.0/16").encapsulation is None


@pytest.mark.parametrize(("build", "field", "value"), [
    (lambda: IPPool("198.19.0.0/16", ipip=True, vxlan=True), "vxlan", True),
    (lambda: IPPool("fd00::/64", vxlan=True), "vxlan", True),
    (lambda: IPPool("198.19.0.0/16", vxlan_mode="cross-subnet"), "vxlan_mode", "cross-subnet"),
    (lambda: IPPool("198.19.0.0/16", vxlan=True, vxlan_mode="sometimes"), "vxlan_mode",
     "sometimes"),
    (lambda: IPPool.from_json({"cidr": "198.19.0.0/16", "vxlan": 3}), "vxlan", 3),
    (lambda: Node("h", ipv4="198.18.1.0/24"), "ipv4", "198.18.1.0/24"),
    (lambda: Node("h", ipv4="198.18.1.1/24", ipv4_network="198.18.2.0/24"), "ipv4_network",
     "198.18.2.0/24"),
    (lambda: Node("h", vxlan_tunnel_mac="66:00"), "vxlan_tunnel_mac", "66:00"),
    (lambda: Node("h", vxlan_tunnel_addr="fd00::1"), "vxlan_tunnel_addr", "fd00::1"),
    (lambda: Node.from_resource({"apiVersion": "v1", "kind": "node",
                                 "metadata": {"hostname": "h"},
                                 "spec": {"ipv4": "198.18.1.1", "ipv4_network": "198.18.2.0/24"}}),
     "ipv4_network", "198.18.2.0/24"),
])
def test_invalid_overlay_values_name_field_and_value(build: Any, field: str,
                                                     value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        build()
    assert info.value.field == field and info.value.value == value


def test_node_address_with_prefix_sets_its_subnet_and_tunnel_fields_are_canonical() -> None:
    n = Node("h", ipv4="198.18.1.7/24", vxlan_tunnel_mac="66-AA-00-00-00-01",
             vxlan_tunnel_addr="198.19.1.0")
    assert (n.ipv4, n.ipv4_network, n.vxlan_tunnel_mac) == ("198.18.1.7", "198.18.1.0/24",
                                                            "66:aa:00:00:00:01")
    assert n.to_json() == {"ip_addr_v4": "198.18.1.7", "network_v4": "198.18.1.0/24",
                           "vxlan_tunnel_addr_v4": "198.19.1.0",
                           "vxlan_tunnel_mac": "66:aa:00:00:00:01"}
    assert Node.from_json("h", n.to_json()) == n
    assert set(NODE_KEYS.values()) == set(ks.BGP_HOST_FIELDS)
    for key in NODE_KEYS.values():
        assert ks.parse_key(ks.bgp_host_key("h", key)) == ks.BGPHostKey("h", key)


def test_helpers() -> None:
    mac = vxlan_mac_for("host1")
    assert mac == vxlan_mac_for("host1") != vxlan_mac_for("host2")
    first = int(mac.split(":")[0], 16)
    assert first & 2 and not first & 1  # locally administered, unicast
    assert same_subnet("198.18.1.0/24", "198.18.1.9")
    assert not same_subnet("198.18.1.0/24", "198.18.2.9")
    assert not same_subnet(None, "198.18.1.9") and not same_subnet("198.18.1.0/24", None)
    assert tunnel_handle("vxlan", "h-1") == "vxlan-tunnel-addr-h-1"
    assert tunnel_handle_owner("vxlan-tunnel-addr-h-1") == ("vxlan", "h-1")
    assert tunnel_handle_owner("ipip-tunnel-addr-x") == ("ipip", "x")
    assert tunnel_handle_owner("ctr-1") is None and tunnel_handle_owner(None) is None


def test_choose_address_keeps_what_is_recorded_and_held_in_an_encapsulated_pool() -> None:
    pools = [IPPool("198.19.0.0/16", vxlan=True)]
    assert choose_address("198.19.0.1", ["198.19.0.1"], pools) == "198.19.0.1"
    # recorded but no longer held (released by someone): take what is held, else none
    assert choose_address("198.19.0.1", ["198.19.0.9"], pools) == "198.19.0.9"
    assert choose_address("198.19.0.1", [], pools) is None
    # held but not recorded (the writer died in between): record it rather than replace
    assert choose_address(None, ["198.19.0.9"], pools) == "198.19.0.9"
    # outside every pool with this encapsulation (mode turned off, pool removed): none
    assert choose_address("198.19.0.1", ["198.19.0.1"], []) is None
    assert choose_address("198.20.0.1", ["198.20.0.1"], pools) is None


def test_choose_mtu_is_the_smallest_tunnel_mtu_of_the_pools_used() -> None:
    pools = [IPPool("198.19.0.0/16", vxlan=True), IPPool("198.20.0.0/16", ipip=True),
             IPPool("198.21.0.0/16")]
    mtus = {"vxlan": 1450, "ipip": 1480}
    assert choose_mtu(pools, ["198.19.0.1"], mtus) == 1450
    assert choose_mtu(pools, ["198.20.0.1", "fd00::1"], mtus) == 1480
    assert choose_mtu(pools, ["198.20.0.1", "198.19.0.1"], mtus) == 1450
    assert choose_mtu(pools, ["198.21.0.1"], mtus) is None


def test_find_network_from_ip_addr_json() -> None:
    text = json.dumps([
        {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1",
                                        "prefixlen": 8}]},
        {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "198.18.2.1",
                                          "prefixlen": 24},
                                         {"family": "inet", "local": "198.18.9.9",
                                          "prefixlen": 32}]}])
    assert find_network(text, "198.18.2.1") == "198.18.2.0/24"
    assert find_network(text, "198.18.9.9") is None  # a /32 says nothing about the subnet
    assert find_network(text, "198.18.3.3") is None


def test_felix_parses_node_fields_and_blocks() -> None:
    parsed = parse_update(ks.bgp_host_key("h2", "network_v4"), "198.18.1.5/24")
    assert parsed is not None and parsed.value == "198.18.1.0/24"
    cleared = parse_update(ks.bgp_host_key("h2", "vxlan_tunnel_mac"), "")
    assert cleared is not None and cleared.value is None
    bad = parse_update(ks.bgp_host_key("h2", "vxlan_tunnel_mac"), "nope")
    assert bad is not None and bad.value is None and "vxlan_tunnel_mac" in str(bad.error)
    allocations: list[int | None] = [None] * 64
    allocations[0], allocations[1], allocations[2] = 0, 1, 2
    data = {"cidr": "198.19.2.0/26", "affinity": "host:h2", "strict_affinity": False,
            "allocations": allocations,
            "attributes": [{"handle_id": "a", "secondary": {"host": "h2"}},
                           {"handle_id": "b", "secondary": {"node": "h3"}},
                           {"handle_id": "c", "secondary": {"repaired": "true"}}],
            "unallocated": list(range(3, 64))}
    parsed = parse_update(ks.block_key("198.19.2.0/26"), json.dumps(data))
    assert parsed is not None
    assert parsed.value == BlockInfo("h2", (("198.19.2.1/32", "h3"),))


def test_felix_tunnel_parameters() -> None:
    config = load_config(env={})
    assert (config.VXLANMTU, config.VXLANVNI, config.VXLANPort, config.IpInIpMtu) == (
        1450, 4096, 4789, 1480)
    assert load_config(env={"FELIX_VXLANMTU": "1400"}).VXLANMTU == 1400
    with pytest.raises(ConfigError) as info:
        load_config(env={"FELIX_VXLANVNI": "16777216"})
    assert info.value.field == "VXLANVNI" and "environment" in str(info.value)
