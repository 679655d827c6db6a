"""Node start-up writes: cluster defaults created once, node identity clashes refused,
address auto-detection from `ip -j addr` output."""

from __future__ import annotations

import json

import pytest

from calicoctl.nodestart import (
    DEFAULT_AS,
    initialise_cluster,
    parse_ip_addr_json,
    register_node,
)
from libcalico import keyspace as ks
from libcalico.client import CalicoClient
from libcalico.datastore import Datastore
from libcalico.errors import Conflict, ValidationError
from libcalico.model import Node

IP_ADDR = json.dumps([
    {"ifname": "lo", "flags": ["LOOPBACK", "UP"], "addr_info": [
        {"family": "inet", "local": "127.0.0.1", "scope": "host"}]},
    {"ifname": "cali12345", "flags": ["UP"], "addr_info": [
        {"family": "inet", "local": "198.19.0.9", "scope": "global"}]},
    {"ifname": "eth1", "flags": ["BROADCAST"], "addr_info": [
        {"family": "inet", "local": "198.18.9.9", "scope": "global"}]},
    {"ifname": "eth0", "flags": ["BROADCAST", "UP", "LOWER_UP"], "addr_info": [
        {"family": "inet6", "local": "fe80::1", "scope": "link"},
        {"family": "inet", "local": "198.18.0.7", "scope": "global"},
        {"family": "inet6", "local": "fd00:18::7", "scope": "global"}]},
])


def test_detection_takes_the_first_global_address_of_an_up_host_interface() -> None:
    assert parse_ip_addr_json(IP_ADDR, 4) == ["198.18.0.7"]
    assert parse_ip_addr_json(IP_ADDR, 6) == ["fd00:18::7"]
    assert parse_ip_addr_json("[]", 4) == []



@pytest.mark.etcd
def test_cluster_defaults_are_created_once_and_never_overwritten(datastore: Datastore) -> None:
    client = CalicoClient(datastore)
    first = initialise_cluster(client, default_pools=True)
    assert "pool 192.168.0.0/16" in first.created
    config = client.get_bgp_config()
    assert config.as_num == DEFAULT_AS and config.node_mesh is True
    assert datastore.get_value(ks.READY_KEY) == "true"
    assert sorted(p.cidr for p in client.list_pools()) == ["192.168.0.0/16",
                                                           "fd80:24e2:f998:72d6::/64"]
    client.set_default_as(64600)
    client.set_node_mesh(False)
    again = initialise_cluster(client, default_pools=True)
    assert again.created == ()
    assert client.get_bgp_config().as_num == 64600
    assert client.get_bgp_config().node_mesh is False


@pytest.mark.etcd
def test_no_default_pools_when_asked_or_when_a_pool_of_that_version_exists(
        datastore: Datastore) -> None:
    client = CalicoClient(datastore)
    initialise_cluster(client, default_pools=False)
    assert client.list_pools() == []
    datastore.put(ks.pool_key("198.19.0.0/16"), json.dumps({"cidr": "198.19.0.0/16"}))
    initialise_cluster(client, default_pools=True)
    assert sorted(p.cidr for p in client.list_pools()) == ["198.19.0.0/16",
                                                           "fd80:24e2:f998:72d6::/64"]


@pytest.mark.etcd
def test_register_refuses_a_name_or_address_that_belongs_to_another_node(
        datastore: Datastore) -> None:
    client = CalicoClient(datastore)
    register_node(client, "node-a", "198.18.0.1", "fd00:18::1", None)
    register_node(client, "node-a", "198.18.0.1", "fd00:18::1", 64513)  # restart: fine
    assert client.get_node("node-a") == Node("node-a", "198.18.0.1", "fd00:18::1", 64513)
    with pytest.raises(Conflict, match="node name node-a is already registered with IPv4 "
                                       "198.18.0.1"):
        register_node(client, "node-a", "198.18.0.2", None, None)
    with pytest.raises(Conflict, match="IPv4 address 198.18.0.1 already belongs to node node-a"):
        register_node(client, "node-b", "198.18.0.1", None, None)
    with pytest.raises(Conflict, match="IPv6 address fd00:18::1 already belongs"):
        register_node(client, "node-b", "198.18.0.2", "fd00:18::1", None)
    with pytest.raises(ValidationError, match="as_num"):
        register_node(client, "node-b", "198.18.0.2", None, 4294967296)
    assert [n.hostname for n in client.list_nodes()] == ["node-a"]
