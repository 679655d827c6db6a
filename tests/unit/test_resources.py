"""Resources: JSON and document round trips, canonical forms and validation errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from libcalico.errors import ValidationError
from libcalico.model import (
    RESOURCE_KINDS,
    BGPGlobalConfig,
    BGPPeer,
    FelixConfig,
    HostEndpoint,
    HostEndpointId,
    IPAMConfig,
    IPPool,
    Node,
    Policy,
    PortRange,
    Profile,
    Resource,
    Rule,
    Rules,
    Tier,
    WorkloadEndpoint,
    WorkloadEndpointId,
    parse_as_num,
    parse_resource,
    policy_sort_key,
    resource_class,
)

WEP_ID = WorkloadEndpointId("host1", "docker", "c0ffee", "eth0")
HEP_ID = HostEndpointId("host1", "eth1")

EXAMPLES: list[Resource] = [
    IPPool("10.0.0.0/16"),
    IPPool("192.168.0.0/16", ipip=True, nat_outgoing=True, disabled=True, ipam=False,
           block_size=24),
    IPPool("fd00:1::/48", block_size=120),
    Profile("web"),
    Profile("db", Rules((Rule(protocol="tcp", dst_ports=(PortRange(5432, 5432),)),),
                        (Rule(action="deny", dst_net="10.0.0.0/8"),)),
            ("db", "backend"), {"tier": "data", "k8s.io/ns": "prod"}),
    Tier("default"),
    Tier("security", 10),
    Tier("frac", 2.5),
    Policy("security", "allow-dns", 1, "role == 'dns'",
           (Rule(protocol="udp", dst_ports=(PortRange(53, 53),)),),
           (Rule(action="next-tier"),)),
    Policy("default", "catch-all"),
    WorkloadEndpoint("host1", "docker", "c0ffee", "eth0", "cali1234567890a"),
    WorkloadEndpoint("host1", "k8s", "ns.pod", "eth0", "cali0", state="inactive",
                     mac="02:42:ac:11:00:02", ipv4_nets=("10.0.0.5/32", "10.0.0.4/32"),
                     ipv6_nets=("fd00::5/128",), ipv4_gateway="10.0.0.1",
                     ipv6_gateway="fd00::1", profile_ids=("web", "db"), labels={"role": "web"}),
    HostEndpoint("host1", "eth1", name="eth1"),
    HostEndpoint("host1", "data", expected_ipv4_addrs=("10.1.0.2",),
                 expected_ipv6_addrs=("fd00::2",), profile_ids=("hosts",),
                 labels={"role": "gateway"}),
    Node("host1"),
    Node("host2", ipv4="10.0.0.2", ipv6="fd00::2", as_num=65001, rr_cluster_id="1.0.0.1",
         loglevel="debug"),
    BGPPeer("10.0.0.254", 64513),
    BGPPeer("fd00::fe", 4200000000, hostname="host1"),
    BGPGlobalConfig(),
    BGPGlobalConfig(as_num=65000, node_mesh=False, loglevel="none"),
    FelixConfig(),
    FelixConfig(None, {"LogSeverityScreen": "info", "IpInIpEnabled": "true"}),
    FelixConfig("host1", {"InterfacePrefix": "cali,tap"}),
    IPAMConfig(),
    IPAMConfig(strict_affinity=True, auto_allocate_blocks=False),
]


def _ident(r: Resource) -> str:
    return f"{r.KIND}-{EXAMPLES.index(r)}"


def _from_json(r: Resource, data: Any) -> Resource:
    """Call each class's from_json with the identity its key would supply."""
    if isinstance(r, Profile):
        return Profile.from_json(r.name, data)
    if isinstance(r, Tier):
        return Tier.from_json(r.name, data)
    if isinstance(r, Policy):
        return Policy.from_json(r.tier, r.name, data)
    if isinstance(r, WorkloadEndpoint):
        return WorkloadEndpoint.from_json(r.ident, data)
    if isinstance(r, HostEndpoint):
        return HostEndpoint.from_json(r.ident, data)
    if isinstance(r, Node):
        return Node.from_json(r.hostname, data)
    if isinstance(r, BGPPeer):
        return BGPPeer.from_json(data, r.hostname)
    if isinstance(r, FelixConfig):
        return FelixConfig.from_json(r.scope_host, data)
    assert isinstance(r, IPPool | BGPGlobalConfig | IPAMConfig)
    return type(r).from_json(data)


def test_every_kind_has_an_example() -> None:
    assert {r.KIND for r in EXAMPLES} == set(RESOURCE_KINDS)
    assert set(RESOURCE_KINDS) == {"ipPool", "profile", "tier", "policy", "workloadEndpoint",
                                   "hostEndpoint", "node", "bgpPeer", "bgpConfig",
                                   "felixConfig", "ipamConfig"}


@pytest.mark.parametrize("resource", EXAMPLES, ids=_ident)
def test_json_round_trip(resource: Resource) -> None:
    data = json.loads(json.dumps(resource.to_json()))  # type: ignore[attr-defined]
    assert _from_json(resource, data) == resource


@pytest.mark.parametrize("resource", EXAMPLES, ids=_ident)
def test_resource_round_trip(resource: Resource) -> None:
    doc = json.loads(json.dumps(resource.to_resource()))
    assert doc["apiVersion"] == "v1"
    assert doc["kind"] == resource.KIND
    assert parse_resource(doc) == resource
    assert type(resource).from_resource(doc) == resource


@pytest.mark.parametrize("resource", EXAMPLES, ids=_ident)
def test_resources_are_hashable_values(resource: Resource) -> None:
    assert hash(resource) == hash(parse_resource(resource.to_resource()))
    with pytest.raises(AttributeError):
        resource.KIND_x = 1  # type: ignore[attr-defined]


def test_yaml_document() -> None:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load("""
apiVersion: v1
kind: IPPool
metadata:
  cidr: 10.20.0.0/16
spec:
  ipip: true
  nat_outgoing: true
""")
    assert parse_resource(doc) == IPPool("10.20.0.0/16", ipip=True, nat_outgoing=True)


# --- JSON shapes ---------------------------------------------------------------------------

@pytest.mark.parametrize(("pool", "data"), [
    (IPPool("10.0.0.0/16"), {"cidr": "10.0.0.0/16"}),
    (IPPool("10.0.0.0/16", ipip=True), {"cidr": "10.0.0.0/16", "ipip": "tunl0"}),
    (IPPool("10.0.0.0/16", nat_outgoing=True), {"cidr": "10.0.0.0/16", "masquerade": True}),
    (IPPool("10.0.0.0/16", ipam=False), {"cidr": "10.0.0.0/16", "ipam": False}),
    (IPPool("10.0.0.0/16", disabled=True), {"cidr": "10.0.0.0/16", "disabled": True}),
    (IPPool("10.0.0.0/16", block_size=26), {"cidr": "10.0.0.0/16"}),
    (IPPool("10.0.0.0/16", block_size=28), {"cidr": "10.0.0.0/16", "block_size": 28}),
    (IPPool("fd00::/64", block_size=122), {"cidr": "fd00::/64"}),
    (IPPool("fd00::/64", block_size=128), {"cidr": "fd00::/64", "block_size": 128}),
])
def test_pool_json(pool: IPPool, data: dict[str, Any]) -> None:
    assert pool.to_json() == data
    assert IPPool.from_json(data) == pool


@pytest.mark.parametrize(("cidr", "canonical", "version", "block"), [
    ("10.0.0.0/8", "10.0.0.0/8", 4, 26),
    ("192.168.1.0/24", "192.168.1.0/24", 4, 26),
    ("FD00:0:0:0::/64", "fd00::/64", 6, 122),
    ("10.0.0.0/26", "10.0.0.0/26", 4, 26),
])
def test_pool_canonical(cidr: str, canonical: str, version: int, block: int) -> None:
    pool = IPPool(cidr)
    assert (pool.cidr, pool.version, pool.block_size) == (canonical, version, block)


def test_pool_ipip_from_json_interface_name() -> None:
    assert IPPool.from_json({"cidr": "10.0.0.0/8", "ipip": "tunl0"}).ipip is True
    assert IPPool.from_json({"cidr": "10.0.0.0/8", "ipip": ""}).ipip is False


def test_profile_parts() -> None:
    profile = Profile("p", Rules.from_dict({"inbound_rules": [{"src_tag": "p"}]}),
                      ("p", "extra", "p"), {"b": "2", "a": "1"})
    assert profile.tags == ("extra", "p")
    assert profile.rules_json() == {"inbound_rules": [{"src_tag": "p"}], "outbound_rules": []}
    assert profile.tags_json() == ["extra", "p"]
    assert list(profile.labels_json()) == ["a", "b"]
    assert Profile.from_parts("p", profile.rules_json(), profile.tags_json(),
                              profile.labels_json()) == profile
    # Absent parts are empty.
    assert Profile.from_parts("p") == Profile("p")
    assert Profile.from_parts("p", tags=["t"]) == Profile("p", tags=("t",))


def test_tier_and_policy_json() -> None:
    assert Tier("t").to_json() == {"order": "default"}
    assert Tier("t", 5).to_json() == {"order": 5}
    assert Tier.from_json("t", {}) == Tier("t")
    assert Tier.from_json("t", {"order": "default"}) == Tier("t")
    policy = Policy.from_json("t", "p", {"selector": "", "inbound_rules": [{"action": "deny"}]})
    assert policy.to_json() == {"selector": "all()", "order": "default",
                                "inbound_rules": [{"action": "deny"}], "outbound_rules": []}
    assert Policy.from_json("t", "p", {}) == Policy("t", "p")
    assert policy.rules == Rules((Rule(action="deny"),), ())
    assert policy.parsed_selector.evaluate({})


def test_policy_selector_canonical() -> None:
    assert Policy("t", "p", selector="a=='b'  ").selector == 'a == "b"'
    with pytest.raises(ValidationError) as info:
        Policy("t", "p", selector="a ==")
    assert info.value.field == "selector"
    assert "at column 5" in str(info.value)


def test_policy_sort_key() -> None:
    policies = [Policy("t", "z"), Policy("t", "b", 10), Policy("t", "a", 10),
                Policy("t", "c", -1.5), Policy("t", "a"), Policy("t", "m", 2)]
    ordered = sorted(policies, key=policy_sort_key)
    assert [(p.order, p.name) for p in ordered] == [
        (-1.5, "c"), (2.0, "m"), (10.0, "a"), (10.0, "b"), (None, "a"), (None, "z")]
    tiers = sorted([Tier("b"), Tier("a", 100), Tier("c", 1)], key=policy_sort_key)
    assert [t.name for t in tiers] == ["c", "a", "b"]


def test_workload_endpoint_json_and_canonical() -> None:
    wep = WorkloadEndpoint.from_json(WEP_ID, {
        "state": "active", "name": "cali1", "mac": "02-42-AC-11-00-02",
        "ipv4_nets": ["10.0.0.10", "10.0.0.9/32", "10.0.0.10/32"],
        "ipv6_nets": ["FD00::1"], "profile_ids": ["a", "b"], "labels": {"z": "1", "a": "2"},
    })
    assert wep.mac == "02:42:ac:11:00:02"
    assert wep.ipv4_nets == ("10.0.0.9/32", "10.0.0.10/32")
    assert wep.ipv6_nets == ("fd00::1/128",)
    assert wep.ident == WEP_ID
    assert wep.to_json() == {
        "state": "active", "name": "cali1", "mac": "02:42:ac:11:00:02",
        "profile_ids": ["a", "b"], "labels": {"a": "2", "z": "1"},
        "ipv4_nets": ["10.0.0.9/32", "10.0.0.10/32"], "ipv6_nets": ["fd00::1/128"],
    }
    assert list(wep.to_json()["labels"]) == ["a", "z"]


@pytest.mark.parametrize(("mac", "canonical"), [
    ("02:42:AC:11:00:02", "02:42:ac:11:00:02"),
    ("02-42-ac-11-00-02", "02:42:ac:11:00:02"),
    ("0242.ac11.0002", "02:42:ac:11:00:02"),
    ("0242AC110002", "02:42:ac:11:00:02"),
])
def test_mac_canonical(mac: str, canonical: str) -> None:
    assert WorkloadEndpoint("h", "o", "w", "e", "cali1", mac=mac).mac == canonical


@pytest.mark.parametrize(("data", "profiles"), [
    ({"name": "cali1", "profile_id": "legacy"}, ("legacy",)),
    ({"name": "cali1", "profile_id": None}, ()),
    ({"name": "cali1"}, ()),
    ({"name": "cali1", "profile_ids": ["new"], "profile_id": "old"}, ("new",)),
])
def test_workload_endpoint_legacy_profile_id(data: dict[str, Any],
                                             profiles: tuple[str, ...]) -> None:
    wep = WorkloadEndpoint.from_json(WEP_ID, data)
    assert wep.profile_ids == profiles
    assert "profile_id" not in wep.to_json()
    assert wep.to_json()["profile_ids"] == list(profiles)


def test_host_endpoint_json() -> None:
    hep = HostEndpoint.from_json(HEP_ID, {"expected_ipv4_addrs": ["10.0.0.2", "10.0.0.1"]})
    assert hep.to_json() == {"expected_ipv4_addrs": ["10.0.0.1", "10.0.0.2"],
                             "profile_ids": [], "labels": {}}
    assert hep.ident == HEP_ID


def test_node_json() -> None:
    node = Node("h", ipv4="10.0.0.1", as_num="1.10",  # type: ignore[arg-type]
                rr_cluster_id="224.0.0.1")
    assert node.as_num == 65546
    assert node.to_json() == {"ip_addr_v4": "10.0.0.1", "as_num": "65546",
                              "rr_cluster_id": "224.0.0.1"}
    # calicoctl wrote "" for an unset IPv6 address.
    assert Node.from_json("h", {"ip_addr_v4": "10.0.0.1", "ip_addr_v6": "", "as_num": ""}) == \
        Node("h", ipv4="10.0.0.1")


def test_bgp_json() -> None:
    assert BGPPeer("10.0.0.1", 64512).to_json() == {"ip": "10.0.0.1", "as_num": "64512"}
    assert BGPPeer.from_json({"ip": "10.0.0.1", "as_num": 64512}) == BGPPeer("10.0.0.1", 64512)
    assert BGPPeer("fd00::1", 1).version == 6
    assert BGPGlobalConfig().to_json() == {"as_num": "64512", "node_mesh": {"enabled": True},
                                           "loglevel": "info"}
    assert BGPGlobalConfig.from_json({}) == BGPGlobalConfig()
    assert BGPGlobalConfig.from_json({"node_mesh": {"enabled": False}, "as_num": "65000"}) == \
        BGPGlobalConfig(65000, False)
    assert BGPGlobalConfig.from_json({"node_mesh": False}).node_mesh is False
    assert BGPGlobalConfig.from_json({"as_num": 0}).as_num == 0


def test_ipam_and_felix_json() -> None:
    assert IPAMConfig().to_json() == {"strict_affinity": False, "auto_allocate_blocks": True}
    assert IPAMConfig.from_json({"strict_affinity": True}) == IPAMConfig(True, True)
    felix = FelixConfig.from_json("h", {"b": "2", "a": "1"})
    assert list(felix.to_json()) == ["a", "b"]


def test_felix_config_document_coerces_scalars() -> None:
    doc = {"apiVersion": "v1", "kind": "felixConfig", "metadata": {},
           "spec": {"IpInIpEnabled": True, "IpInIpMtu": 1440, "LogSeverityScreen": "info"}}
    assert parse_resource(doc) == FelixConfig(None, {"IpInIpEnabled": "true",
                                                     "IpInIpMtu": "1440",
                                                     "LogSeverityScreen": "info"})


@pytest.mark.parametrize(("value", "expected"), [
    (0, 0), (64512, 64512), ("64512", 64512), (4294967295, 4294967295),
    ("1.10", 65546), ("0.0", 0), ("65535.65535", 4294967295),
])
def test_parse_as_num(value: Any, expected: int) -> None:
    assert parse_as_num("as_num", value) == expected


@pytest.mark.parametrize("value", [-1, 4294967296, "abc", "1.65536", "65536.0", "1.", ".1",
                                   "1.2.3", True, 1.5, None, "-5"])
def test_parse_as_num_errors(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        parse_as_num("as_num", value)
    assert (info.value.field, info.value.value) == ("as_num", value)


# --- validation errors ----------------------------------------------------------------------

def _wep(**kw: Any) -> WorkloadEndpoint:
    return WorkloadEndpoint("h", "o", "w", "e", **{"name": "cali1", **kw})


@pytest.mark.parametrize(("build", "field", "value"), [
    # pools
    (lambda: IPPool("10.0.0.1/16"), "cidr", "10.0.0.1/16"),
    (lambda: IPPool("10.0.0.0/33"), "cidr", "10.0.0.0/33"),
    (lambda: IPPool("nonsense"), "cidr", "nonsense"),
    (lambda: IPPool("fd00::/64", ipip=True), "ipip", True),
    (lambda: IPPool("10.0.0.0/16", block_size=8), "block_size", 8),
    (lambda: IPPool("10.0.0.0/16", block_size=33), "block_size", 33),
    (lambda: IPPool("fd00::/64", block_size=129), "block_size", 129),
    (lambda: IPPool("10.0.0.0/16", nat_outgoing="yes"),  # type: ignore[arg-type]
     "nat_outgoing", "yes"),
    (lambda: IPPool.from_json({"cidr": "10.0.0.0/8", "nat": True}), "nat", True),
    (lambda: IPPool.from_json({"ipip": "tunl0"}), "cidr", ""),
    (lambda: IPPool.from_json({"cidr": "10.0.0.0/8", "ipip": 1}), "ipip", 1),
    (lambda: IPPool.from_json(["10.0.0.0/8"]), "ip pool", ["10.0.0.0/8"]),
    # profiles, tiers, policies
    (lambda: Profile("bad name"), "profile", "bad name"),
    (lambda: Profile("x" * 129), "profile", "x" * 129),
    (lambda: Profile("p", tags=("ok", "not ok")), "tags", "not ok"),
    (lambda: Profile("p", labels={"bad key!": "v"}), "labels key", "bad key!"),
    (lambda: Profile("p", labels={"k": 1}), "labels[k]", 1),  # type: ignore[dict-item]
    (lambda: Profile.from_json("p", {"rules": {}, "extra": 1}), "extra", 1),
    (lambda: Profile.from_parts("p", tags="t"), "tags", "t"),
    (lambda: Tier("a/b"), "tier", "a/b"),
    (lambda: Tier("t", "first"), "order", "first"),  # type: ignore[arg-type]
    (lambda: Tier("t", float("nan")), "order", pytest.approx),
    (lambda: Tier.from_json("t", {"order": True}), "order", True),
    (lambda: Tier.from_json("t", {"priority": 1}), "priority", 1),
    (lambda: Policy("t", "p p"), "policy", "p p"),
    (lambda: Policy.from_json("t", "p", {"selector": 5}), "selector", 5),
    (lambda: Policy.from_json("t", "p", {"types": []}), "types", []),
    (lambda: Policy.from_json("t", "p", {"inbound_rules": [{"action": "x"}]}),
     "inbound_rules[0].action", "x"),
    # workload endpoints
    (lambda: _wep(state="up"), "state", "up"),
    (lambda: _wep(name="this-name-is-too-long"), "name", "this-name-is-too-long"),
    (lambda: _wep(name="a/b"), "name", "a/b"),
    (lambda: _wep(mac="02:42:ac:11:00"), "mac", "02:42:ac:11:00"),
    (lambda: _wep(mac="zz:42:ac:11:00:02"), "mac", "zz:42:ac:11:00:02"),
    (lambda: _wep(ipv4_nets=("10.0.0.0/24",)), "ipv4_nets", "10.0.0.0/24"),
    (lambda: _wep(ipv4_nets=("fd00::1/128",)), "ipv4_nets", "fd00::1/128"),
    (lambda: _wep(ipv6_nets=("fd00::/64",)), "ipv6_nets", "fd00::/64"),
    (lambda: _wep(ipv6_nets="fd00::1"), "ipv6_nets", "fd00::1"),
    (lambda: _wep(ipv4_gateway="fd00::1"), "ipv4_gateway", "fd00::1"),
    (lambda: _wep(ipv6_gateway="10.0.0.1"), "ipv6_gateway", "10.0.0.1"),
    (lambda: _wep(profile_ids=("a", "a")), "profile_ids", "a"),
    (lambda: _wep(profile_ids=("a b",)), "profile_ids", "a b"),
    (lambda: _wep(labels={"": "x"}), "labels key", ""),
    (lambda: WorkloadEndpoint("h/x", "o", "w", "e", "cali1"), "hostname", "h/x"),
    (lambda: WorkloadEndpointId("h", "", "w", "e"), "orchestrator", ""),
    (lambda: WorkloadEndpointId("h", "o", "w w", "e"), "workload", "w w"),
    (lambda: WorkloadEndpointId("h", "o", "w", ".."), "endpoint_id", ".."),
    (lambda: WorkloadEndpoint.from_json(WEP_ID, {"state": "active"}), "name", None),
    (lambda: WorkloadEndpoint.from_json(WEP_ID, {"name": "c", "ipv4_nat": []}), "ipv4_nat", []),
    (lambda: WorkloadEndpoint.from_json(WEP_ID, "x"), "workload endpoint", "x"),
    # host endpoints
    (lambda: HostEndpoint("h", "e"), "name", None),
    (lambda: HostEndpoint("h", "e", expected_ipv4_addrs=("10.0.0.0/24",)),
     "expected_ipv4_addrs", "10.0.0.0/24"),
    (lambda: HostEndpoint("h", "e", expected_ipv6_addrs=("10.0.0.1",)),
     "expected_ipv6_addrs", "10.0.0.1"),
    (lambda: HostEndpoint.from_json(HEP_ID, {"name": "eth0", "mac": "x"}), "mac", "x"),
    # nodes and BGP
    (lambda: Node("h", ipv4="fd00::1"), "ipv4", "fd00::1"),
    (lambda: Node("h", ipv6="10.0.0.1"), "ipv6", "10.0.0.1"),
    (lambda: Node("h", ipv4="10.0.0.0/24"), "ipv4", "10.0.0.0/24"),
    (lambda: Node("h", as_num=-1), "as_num", -1),
    (lambda: Node("h", rr_cluster_id="cluster-1"), "rr_cluster_id", "cluster-1"),
    (lambda: Node("h", loglevel="warning"), "loglevel", "warning"),
    (lambda: Node("", ipv4="10.0.0.1"), "hostname", ""),
    (lambda: Node.from_json("h", {"bird_ip": "10.0.0.1"}), "bird_ip", "10.0.0.1"),
    (lambda: BGPPeer("not-an-ip", 1), "ip", "not-an-ip"),
    (lambda: BGPPeer("10.0.0.1", 4294967296), "as_num", 4294967296),
    (lambda: BGPPeer("10.0.0.1", 1, hostname="a b"), "hostname", "a b"),
    (lambda: BGPPeer.from_json({"ip": "10.0.0.1"}), "as_num", None),
    (lambda: BGPGlobalConfig(loglevel="verbose"), "loglevel", "verbose"),
    (lambda: BGPGlobalConfig(node_mesh="on"), "node_mesh", "on"),  # type: ignore[arg-type]
    (lambda: BGPGlobalConfig.from_json({"node_mesh": {"on": True}}), "on", True),
    # felix and IPAM config
    (lambda: FelixConfig(None, {"Log-Level": "x"}), "felix config name", "Log-Level"),
    (lambda: FelixConfig(None, {"LogLevel": 3}), "LogLevel", 3),  # type: ignore[dict-item]
    (lambda: FelixConfig("a/b"), "hostname", "a/b"),
    (lambda: IPAMConfig(strict_affinity="no"), "strict_affinity", "no"),  # type: ignore[arg-type]
    (lambda: IPAMConfig.from_json({"strict": True}), "strict", True),
])
def test_validation_errors(build: Any, field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        build()
    assert info.value.field == field
    if value is not pytest.approx:
        assert info.value.value == value
        assert str(info.value).startswith(f"invalid {field} {value!r}: ")


# --- documents ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ipPool", "IPPOOL", "ippool", "IpPool"])
def test_resource_class_case_insensitive(kind: str) -> None:
    assert resource_class(kind) is IPPool


@pytest.mark.parametrize("kind", ["pool", "", None, 3])
def test_resource_class_unknown(kind: Any) -> None:
    with pytest.raises(ValidationError) as info:
        resource_class(kind)
    assert str(info.value) == f"invalid kind {kind!r}: unknown resource kind"


POOL_DOC = {"apiVersion": "v1", "kind": "ipPool", "metadata": {"cidr": "10.0.0.0/8"},
            "spec": {"ipip": True}}


@pytest.mark.parametrize(("change", "field", "value"), [
    ({"apiVersion": "v3"}, "apiVersion", "v3"),
    ({"apiVersion": None}, "apiVersion", None),
    ({"kind": "thing"}, "kind", "thing"),
    ({"status": {}}, "status", {}),
    ({"spec": {"ipip": True, "masquerade": True}}, "masquerade", True),
    ({"spec": {"ipip": "yes"}}, "ipip", "yes"),
    ({"spec": []}, "spec", []),
    ({"metadata": {"cidr": "10.0.0.0/8", "name": "x"}}, "name", "x"),
    ({"metadata": {}}, "cidr", ""),
])
def test_parse_resource_errors(change: dict[str, Any], field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        parse_resource({**POOL_DOC, **change})
    assert (info.value.field, info.value.value) == (field, value)


@pytest.mark.parametrize(("kind", "spec", "field"), [
    ("profile", {"rules": {}}, "rules"),
    ("tier", {"order": 1, "name": "x"}, "name"),
    ("policy", {"selector": "", "tier": "x"}, "tier"),
    ("workloadEndpoint", {"name": "cali1", "interface": "x"}, "interface"),
    ("hostEndpoint", {"name": "eth0", "ipv4": "x"}, "ipv4"),
    ("node", {"ip_addr_v4": "10.0.0.1"}, "ip_addr_v4"),
    ("bgpPeer", {"as_num": 1, "ip": "10.0.0.1"}, "ip"),
    ("bgpConfig", {"mesh": True}, "mesh"),
    ("ipamConfig", {"auto": True}, "auto"),
])
def test_unknown_spec_field_named(kind: str, spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_resource({"apiVersion": "v1", "kind": kind, "metadata": {}, "spec": spec})
    assert info.value.field == field
    assert "unknown field" in info.value.reason


def test_from_resource_checks_kind() -> None:
    with pytest.raises(ValidationError) as info:
        Tier.from_resource(POOL_DOC)
    assert (info.value.field, info.value.value) == ("kind", "ipPool")


def test_parse_resource_non_mapping() -> None:
    with pytest.raises(ValidationError, match="invalid resource"):
        parse_resource(["x"])  # type: ignore[arg-type]


def test_model_package_exports_every_lazy_name():
    """libcalico.model lists its names three times (typing imports, where each lives,
    __all__): every exported name resolves, from the submodule it names."""
    import importlib

    import libcalico.model as model

    assert sorted(model.__all__) == sorted(model._HOME_OF)
    for name in model.__all__:
        home = importlib.import_module(f"libcalico.model.{model._HOME_OF[name]}")
        assert getattr(model, name) is getattr(home, name)
    with pytest.raises(AttributeError):
        model.NoSuchThing  # noqa: B018


@pytest.mark.parametrize("check, value", [
    ("name", "web\n"), ("id", "host1\n"), ("interface", "eth0\n"), ("labels", {"role\n": "x"}),
    ("mac", "ee:ee:ee:ee:ee:01\n"), ("key", "web\n"),
])
def test_a_trailing_newline_is_refused_by_every_name_rule(check: str, value: Any) -> None:
    """A pattern ending in `$` matches before a final newline: the CNI fuzzer's
    CNI_CONTAINERID "0\\n" got through the plugin's pattern that way. Every name rule of
    the model and the keyspace anchors at the very end."""
    from libcalico import keyspace
    from libcalico.model import validate as v

    run = {"name": lambda: v.validate_name("name", value),
           "id": lambda: v.validate_id("hostname", value),
           "interface": lambda: v.validate_interface("name", value),
           "labels": lambda: v.validate_labels("labels", value),
           "mac": lambda: v.canonical_mac("mac", value),
           "key": lambda: keyspace.profile_key(value, "rules")}[check]
    with pytest.raises(ValidationError):
        run()
