"""calicoctl pool, bgp, node and config commands against a real etcd."""

from __future__ import annotations

import json

import pytest

from libcalico import keyspace as ks
from tests.support.ctl import Ctl, golden

pytestmark = pytest.mark.etcd


@pytest.fixture
def ctl(datastore, etcd_server):
    return Ctl(etcd_server.env())


def test_pool_add_show_remove(ctl, datastore, monkeypatch):
    monkeypatch.setattr("calicoctl.checksystem.tunnel_support",
                        lambda kind: (True, "pretend: a kernel with ipip"))
    ctl("pool", "add", "198.18.0.0/16", "--ipip", "--nat-outgoing")
    ctl("pool", "add", "fd00:1::/64", "--block-size", "120")
    assert json.loads(datastore.get_value(ks.pool_key("198.18.0.0/16"))) == {
        "cidr": "198.18.0.0/16", "ipip": "tunl0", "masquerade": True}
    assert json.loads(datastore.get_value(ks.pool_key("fd00:1::/64")))["block_size"] == 120
    golden("pool_show.txt", ctl("pool", "show").out)
    golden("pool_show_wide.txt", ctl("pool", "show", "-o", "wide").out)
    v6 = ctl("pool", "show", "--ipv6").out
    assert "fd00:1::/64" in v6 and "198.18" not in v6
    docs = json.loads(ctl("pool", "show", "-o", "json").out)
    assert [d["metadata"]["cidr"] for d in docs] == ["198.18.0.0/16", "fd00:1::/64"]
    # Re-adding updates options in place.
    ctl("pool", "add", "198.18.0.0/16")
    assert json.loads(datastore.get_value(ks.pool_key("198.18.0.0/16"))) == {
        "cidr": "198.18.0.0/16"}
    ctl("pool", "remove", "198.18.0.0/16", "fd00:1::/64")
    assert datastore.list(ks.POOL_DIR)[0] == []
    res = ctl("pool", "remove", "198.18.0.0/16", code=3)
    assert "198.18.0.0/16" in res.err


def test_pool_bad_input_writes_nothing(ctl, datastore):
    ctl("pool", "add", "198.18.0.0/16")
    res = ctl("pool", "add", "198.19.0.0/16", "198.18.1.0/24", code=2)
    assert "198.18.1.0/24" in res.err and "overlaps" in res.err
    assert datastore.get(ks.pool_key("198.19.0.0/16")) is None  # nothing written
    res = ctl("pool", "add", "198.19.0.0/33", code=2)
    assert "cidr" in res.err and "198.19.0.0/33" in res.err
    res = ctl("pool", "add", "fd00:2::/64", "--ipip", code=2)
    assert "ipip" in res.err
    res = ctl("pool", "add", "198.19.0.1/16", code=2)
    assert "host bits" in res.err
    res = ctl("pool", "add", "198.19.0.0/16", "--block-size", "8", code=2)
    assert "block_size" in res.err
    assert len(datastore.list(ks.POOL_DIR)[0]) == 1
    assert len(res.err.strip().splitlines()) == 1 and "Traceback" not in res.err


def test_pool_range_add(ctl, datastore):
    res = ctl("pool", "range", "add", "198.18.0.0", "198.18.2.255", "--nat-outgoing")
    assert "198.18.0.0/23" in res.out and "198.18.2.0/24" in res.out
    pools = {json.loads(kv.value)["cidr"] for kv in datastore.list(ks.POOL_DIR)[0]}
    assert pools == {"198.18.0.0/23", "198.18.2.0/24"}
    ctl("pool", "range", "add", "198.18.9.0", "198.18.8.0", code=2)
    ctl("pool", "range", "add", "198.18.9.0", "fd00::1", code=2)


def test_bgp_peers_mesh_and_as(ctl, datastore):
    ctl("bgp", "peer", "add", "198.18.0.10", "as", "64513")
    ctl("bgp", "peer", "add", "fd00::10", "as", "1.10")
    assert json.loads(datastore.get_value(ks.bgp_peer_key("198.18.0.10"))) == {
        "ip": "198.18.0.10", "as_num": "64513"}
    assert json.loads(datastore.get_value(ks.bgp_peer_key("fd00::10")))["as_num"] == "65546"
    golden("bgp_peer_show.txt", ctl("bgp", "peer", "show").out)
    assert "fd00::10" not in ctl("bgp", "peer", "show", "--ipv4").out
    ctl("bgp", "peer", "remove", "198.18.0.10")
    assert datastore.get(ks.bgp_peer_key("198.18.0.10")) is None
    ctl("bgp", "peer", "remove", "198.18.0.10", code=3)
    res = ctl("bgp", "peer", "add", "198.18.0.11", "as", "4294967296", code=2)
    assert "as_num" in res.err and "4294967296" in res.err
    ctl("bgp", "peer", "add", "198.18.0.300", "as", "1", code=2)

    assert ctl("bgp", "node-mesh").out.strip() == "on"
    ctl("bgp", "node-mesh", "off")
    assert json.loads(datastore.get_value(ks.BGP_GLOBAL_MESH_KEY)) == {"enabled": False}
    assert ctl("bgp", "node-mesh").out.strip() == "off"
    ctl("bgp", "node-mesh", "maybe", code=2)

    assert ctl("bgp", "default-node-as").out.strip() == "64512"
    ctl("bgp", "default-node-as", "65000")
    assert datastore.get_value(ks.BGP_GLOBAL_AS_KEY) == "65000"
    assert ctl("bgp", "default-node-as").out.strip() == "65000"
    ctl("bgp", "default-node-as", "-1", code=2)


def test_node_show_remove_and_node_peers(ctl, datastore):
    datastore.put(ks.bgp_host_key("node-a", "ip_addr_v4"), "198.18.0.2")
    datastore.put(ks.bgp_host_key("node-a", "as_num"), "64600")
    datastore.put(ks.bgp_host_key("node-b", "ip_addr_v4"), "198.18.0.3")
    datastore.put(ks.bgp_host_key("node-b", "ip_addr_v6"), "fd00::3")
    golden("node_show.txt", ctl("node", "show").out)
    ctl("node", "bgp", "--hostname", "node-a", "peer", "add", "198.18.0.99", "as", "65001")
    assert json.loads(datastore.get_value(ks.bgp_peer_key("198.18.0.99", "node-a"))) == {
        "ip": "198.18.0.99", "as_num": "65001"}
    out = ctl("node", "bgp", "--hostname", "node-a", "peer", "show").out
    assert "198.18.0.99" in out and "node specific" in out
    assert "198.18.0.99" not in ctl("bgp", "peer", "show").out
    ctl("node", "bgp", "--hostname", "node-a", "peer", "remove", "198.18.0.99")
    assert datastore.get(ks.bgp_peer_key("198.18.0.99", "node-a")) is None
    # HOSTNAME (ctl-host) is the default node.
    ctl("node", "bgp", "peer", "add", "198.18.0.98", "as", "65001")
    assert datastore.get(ks.bgp_peer_key("198.18.0.98", "ctl-host")) is not None

    # A node with endpoints is only removed with --remove-endpoints; its addresses and
    # blocks go back to IPAM.
    from libcalico.ipam import IPAMClient

    ctl("pool", "add", "198.18.40.0/24")
    ipam = IPAMClient(datastore)
    ip = ipam.auto_assign(1, 0, "w1", host="node-b").ipv4s[0]
    wep = ks.workload_endpoint_key("node-b", "netns", "w1", "e1")
    datastore.put(wep, json.dumps({"state": "active", "name": "cali1", "profile_ids": [],
                                   "ipv4_nets": [f"{ip}/32"], "ipv6_nets": []}))
    res = ctl("node", "remove", "--hostname", "node-b", code=3)
    assert "--remove-endpoints" in res.err
    ctl("node", "remove", "--hostname", "node-b", "--remove-endpoints")
    assert datastore.list(ks.bgp_host_dir("node-b"))[0] == []
    assert datastore.get(wep) is None
    assert ipam.get_assignment_attributes(ip) is None
    assert ipam.host_blocks("node-b") == []
    assert datastore.list(ks.affinity_dir("node-b"))[0] == []
    ctl("node", "remove", "--hostname", "node-b", code=3)
    assert "node-a" in ctl("node", "show").out


def test_config_felix_and_bgp(ctl, datastore):
    res = ctl("config", "felix", "loglevel", code=3)
    assert "not set" in res.err
    ctl("config", "felix", "loglevel", "debug")
    assert datastore.get_value(ks.global_config_key("LogSeverityScreen")) == "debug"
    assert ctl("config", "felix", "loglevel").out.strip() == "debug"
    ctl("config", "felix", "loglevel", "loud", code=2)
    ctl("config", "felix", "loglevel", "info", "--hostname", "h1")
    assert datastore.get_value(ks.host_config_key("h1", "LogSeverityScreen")) == "info"
    ctl("config", "felix", "loglevel", "--remove")
    assert datastore.get(ks.global_config_key("LogSeverityScreen")) is None
    res = ctl("config", "felix", "IptablesRefreshInterval", "30", code=2)
    assert "--force" in res.err
    ctl("config", "felix", "IptablesRefreshInterval", "30", "--force")
    assert datastore.get_value(ks.global_config_key("IptablesRefreshInterval")) == "30"

    assert ctl("config", "bgp", "loglevel").out.strip() == "info"
    ctl("config", "bgp", "loglevel", "debug")
    assert datastore.get_value(ks.BGP_GLOBAL_LOGLEVEL_KEY) == "debug"
    ctl("config", "bgp", "loglevel", "warning", code=2)
    ctl("config", "bgp", "colour", "red", code=2)
    ctl("config", "node", "bgp", "loglevel", "none", "--hostname", "n1")
    assert datastore.get_value(ks.bgp_host_key("n1", "loglevel")) == "none"
    assert ctl("config", "node", "bgp", "loglevel", "--hostname", "n1").out.strip() == "none"
    ctl("config", "node", "bgp", "loglevel", "--remove", "--hostname", "n1")
    assert datastore.get(ks.bgp_host_key("n1", "loglevel")) is None


def test_config_node_route_reflector(ctl, datastore):
    ctl("config", "node", "bgp", "rr_cluster_id", "1.0.0.1", "--hostname", "n1", code=3)
    datastore.put(ks.bgp_host_key("n1", "ip_addr_v4"), "198.18.0.1")
    res = ctl("config", "node", "bgp", "rr_cluster_id", "--hostname", "n1", code=3)
    assert "not a route reflector" in res.err
    res = ctl("config", "node", "bgp", "rr_cluster_id", "1.0.0.300", "--hostname", "n1", code=2)
    assert "rr_cluster_id" in res.err and "1.0.0.300" in res.err
    assert datastore.get(ks.bgp_host_key("n1", "rr_cluster_id")) is None
    ctl("config", "node", "bgp", "rr_cluster_id", "1.0.0.1", "--hostname", "n1")
    assert datastore.get_value(ks.bgp_host_key("n1", "rr_cluster_id")) == "1.0.0.1"
    assert datastore.get_value(ks.bgp_host_key("n1", "ip_addr_v4")) == "198.18.0.1"
    assert ctl("config", "node", "bgp", "rr_cluster_id", "--hostname", "n1").out.strip() == \
        "1.0.0.1"
    ctl("config", "node", "bgp", "rr_cluster_id", "--remove", "--hostname", "n1")
    assert datastore.get(ks.bgp_host_key("n1", "rr_cluster_id")) is None
    ctl("config", "bgp", "rr_cluster_id", "1.0.0.1", code=2)  # a node setting only


def test_unreachable_datastore_exit_code(etcd_server):
    from netsim.etcd import free_port

    ctl = Ctl({"ETCD_ENDPOINTS": f"http://127.0.0.1:{free_port()}"})
    res = ctl("pool", "show", code=4)
    assert "unavailable" in res.err.lower() and "Traceback" not in res.err


def test_usage_errors_exit_2(ctl):
    assert ctl("pool", "frobnicate", code=2).code == 2
    assert ctl("bgp", "peer", "add", "198.18.0.1", "has", "1", code=2).code == 2
    assert ctl("--no-such-option", code=2).code == 2
