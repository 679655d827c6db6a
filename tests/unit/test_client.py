"""libcalico.client: typed CRUD over a real etcd, CAS retries, invalid stored values."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest

from libcalico import keyspace as ks
from libcalico.client import CalicoClient, PartialApply
from libcalico.errors import AlreadyExists, Conflict, NotFound, ValidationError
from libcalico.model import (
    BGPGlobalConfig,
    BGPPeer,
    FelixConfig,
    HostEndpoint,
    IPAMConfig,
    IPPool,
    Node,
    Policy,
    Profile,
    Rule,
    Rules,
    Tier,
    WorkloadEndpoint,
)

pytestmark = pytest.mark.etcd


@pytest.fixture
def client(datastore):
    return CalicoClient(datastore)


def test_pools(client, datastore):
    client.add_pool(IPPool("198.18.0.0/16", ipip=True))
    client.add_pool(IPPool("fd00:1::/64"))
    with pytest.raises(AlreadyExists):
        client.add_pool(IPPool("198.18.0.0/16"))
    with pytest.raises(ValidationError) as err:
        client.add_pool(IPPool("198.18.4.0/24"))
    assert err.value.field == "cidr" and err.value.value == "198.18.4.0/24"
    client.add_pool(IPPool("198.18.0.0/16", nat_outgoing=True), replace=True)
    assert client.get_pool("198.18.0.0/16") == IPPool("198.18.0.0/16", nat_outgoing=True)
    assert [p.cidr for p in client.list_pools()] == ["198.18.0.0/16", "fd00:1::/64"]
    assert [p.cidr for p in client.list_pools(6)] == ["fd00:1::/64"]
    client.remove_pool_key("fd00:1::/64")
    with pytest.raises(NotFound):
        client.remove_pool_key("fd00:1::/64")


def test_invalid_stored_values_are_absent_and_logged_once(client, datastore, caplog):
    datastore.put(ks.pool_key("198.18.0.0/24"), "{broken")
    datastore.put(ks.pool_key("198.18.1.0/24"), json.dumps({"cidr": "198.18.1.0/24"}))
    datastore.put(ks.bgp_peer_key("198.18.0.1"), json.dumps({"ip": "198.18.0.1",
                                                             "as_num": "-5"}))
    with caplog.at_level(logging.WARNING, logger="libcalico.client._base"):
        assert [p.cidr for p in client.list_pools()] == ["198.18.1.0/24"]
        assert client.list_pools() and client.get_pool("198.18.0.0/24") is None
        assert client.list_bgp_peers() == []
    warnings = [r.getMessage() for r in caplog.records]
    assert sum(ks.pool_key("198.18.0.0/24") in w for w in warnings) == 1
    assert any(ks.bgp_peer_key("198.18.0.1") in w for w in warnings)


def test_profiles_atomic_update_retries_on_conflict(client, datastore):
    client.create_profile(Profile("p", Rules(), ("p",)))
    with pytest.raises(AlreadyExists):
        client.create_profile(Profile("p"))
    calls = []

    def change(p):
        calls.append(p)
        if len(calls) == 1:  # another writer sneaks in between our read and write
            datastore.put(ks.profile_key("p", "tags"), json.dumps(["other", "p"]))
        return replace(p, tags=(*p.tags, "mine"))

    result = client.update_profile("p", change)
    assert len(calls) == 2 and result.tags == ("mine", "other", "p")
    assert json.loads(datastore.get_value(ks.profile_key("p", "tags"))) == ["mine", "other", "p"]

    def always_conflict(p):
        datastore.put(ks.profile_key("p", "labels"), json.dumps({"n": str(len(calls))}))
        calls.append(p)
        return replace(p, tags=())

    with pytest.raises(Conflict):
        client.update_profile("p", always_conflict)
    with pytest.raises(NotFound):
        client.update_profile("ghost", lambda p: p)
    assert client.list_profile_names() == ["p"]
    client.delete_profile("p")
    assert client.list_profiles() == []


def test_profile_update_writes_only_the_parts_that_change(client, datastore):
    """Every felix watches profiles: a rule change is one etcd event each, not three."""
    client.create_profile(Profile("web", Rules(), ("web",), {"tier": "front"}))
    before = {p: datastore.get(ks.profile_key("web", p)) for p in ks.PROFILE_PARTS}
    rule = Rule(action="allow", protocol="tcp")
    client.update_profile("web", lambda p: replace(p, rules=Rules((rule,), ())))
    after = {p: datastore.get(ks.profile_key("web", p)) for p in ks.PROFILE_PARTS}
    assert after["rules"].mod_revision > before["rules"].mod_revision
    assert after["tags"] == before["tags"] and after["labels"] == before["labels"]
    assert client.get_profile("web").rules.inbound == (rule,)
    client.update_profile("web", lambda p: p)  # no change: nothing written
    assert datastore.get(ks.profile_key("web", "rules")) == after["rules"]


def test_tiers_policies_endpoints_nodes_peers_config(client, datastore):
    pol = Policy("t1", "p1", 2, "role == 'x'", (Rule(action="deny", protocol="tcp"),))
    client.put_policy(pol)
    assert client.get_tier("t1") == Tier("t1")  # created with the policy
    client.put_tier(Tier("t1", 5))
    assert client.list_tiers() == [Tier("t1", 5)]
    assert client.list_policies() == [pol] and client.get_policy("t1", "p1") == pol
    client.delete_policy("t1", "p1")
    client.delete_tier("t1")
    assert client.list_tiers() == []

    ep = WorkloadEndpoint("h1", "netns", "w1", "e1", "calie1", ipv4_nets=("198.18.0.1/32",))
    client.create_workload_endpoint(ep)
    with pytest.raises(AlreadyExists):
        client.create_workload_endpoint(ep)
    assert client.find_workload_endpoint("e1") == ep
    new = client.update_workload_endpoint(ep.ident, lambda e: replace(e, state="inactive"))
    assert client.get_workload_endpoint(ep.ident) == new
    hep = HostEndpoint("h1", "eth0", "eth0")
    client.put_host_endpoint(hep)
    assert client.list_host_endpoints("h1") == [hep]

    client.put_node(Node("h1", "198.18.0.2", as_num=64600))
    assert datastore.get_value(ks.host_bird_ip_key("h1")) == "198.18.0.2"
    client.put_node(Node("h1", "198.18.0.2"))  # as_num unset: its key goes
    assert datastore.get(ks.bgp_host_key("h1", "as_num")) is None
    assert client.get_node("h1") == Node("h1", "198.18.0.2")
    assert client.list_node_names() == ["h1"]
    with pytest.raises(Conflict):
        client.remove_node("h1")
    client.remove_node("h1", remove_endpoints=True)
    assert client.list_node_names() == [] and client.list_workload_endpoints() == []

    client.add_bgp_peer(BGPPeer("198.18.0.9", 65000))
    client.add_bgp_peer(BGPPeer("fd00::9", 65001, "h2"))
    assert client.list_bgp_peers() == [BGPPeer("198.18.0.9", 65000)]
    assert client.list_bgp_peers("h2", 6) == [BGPPeer("fd00::9", 65001, "h2")]
    assert client.get_bgp_config() == BGPGlobalConfig()
    client.set_bgp_config(BGPGlobalConfig(65010, False, "debug"))
    assert client.get_bgp_config() == BGPGlobalConfig(65010, False, "debug")
    client.set_felix_value("LogSeverityScreen", "debug")
    client.set_felix_value("LogSeverityScreen", "info", "h2")
    assert client.get_felix_config().values == {"LogSeverityScreen": "debug"}
    assert client.get_felix_config("h2") == FelixConfig("h2", {"LogSeverityScreen": "info"})
    client.set_ipam_config(IPAMConfig(strict_affinity=True))
    assert client.get_ipam_config() == IPAMConfig(strict_affinity=True)


def test_apply_batch_all_or_nothing_and_partial_report(client, datastore):
    docs = [Profile(f"p{i}") for i in range(5)] + [IPPool("198.18.0.0/24"),
                                                   IPPool("198.18.0.128/25")]
    with pytest.raises(ValidationError):
        client.apply_resources(docs)
    assert datastore.list("/calico/")[0] == []

    # A batch bigger than one etcd transaction (MAX_TXN_OPS operations, etcd's default
    # --max-txn-ops) is committed in document-aligned chunks. Here the second chunk fails
    # for real: one profile carries ~1.8 MB of tags, over etcd's 1.5 MiB
    # --max-request-bytes, so etcd refuses that transaction. The error names exactly the
    # documents already written, and the datastore holds exactly those.
    from libcalico.client.resources import MAX_TXN_OPS

    per_chunk = MAX_TXN_OPS // len(client.profile_ops(Profile("x")))
    small = [Profile(f"q{i:03d}", tags=(f"t{i}",)) for i in range(per_chunk + 2)]
    huge = Profile("q-huge", tags=tuple(f"t{i:04d}-{'x' * 245}" for i in range(7000)))
    with pytest.raises(PartialApply) as err:
        client.apply_resources([*small, huge])
    assert err.value.applied == list(range(per_chunk))
    assert "request is too large" in str(err.value)
    assert str(err.value).endswith("(documents already written: "
                                   f"{', '.join(str(i + 1) for i in range(per_chunk))})")
    assert client.list_profile_names() == [p.name for p in small[:per_chunk]]
    assert [client.get_profile(p.name) for p in small[:per_chunk]] == small[:per_chunk]
    for missing in (*small[per_chunk:], huge):
        with pytest.raises(NotFound):
            client.get_profile(missing.name)
    kvs, _ = datastore.list(ks.PROFILE_DIR)
    assert len(kvs) == 3 * per_chunk
