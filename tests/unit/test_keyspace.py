"""Unit tests for libcalico.keyspace: every builder round-trips through parse_key, and
bad segments are refused with a ValidationError naming the field. No etcd needed."""

from __future__ import annotations

import pytest

from libcalico import keyspace as ks
from libcalico.errors import ValidationError

# (built key, what parse_key must return)
ROUND_TRIPS = [
    (ks.READY_KEY, ks.ReadyKey()),
    (ks.global_config_key("LogSeverityScreen"), ks.GlobalConfigKey("LogSeverityScreen")),
    (ks.host_config_key("host-1", "InterfacePrefix"),
     ks.HostConfigKey("host-1", "InterfacePrefix")),
    (ks.host_bird_ip_key("host-1"), ks.HostBirdIPKey("host-1")),
    (ks.workload_endpoint_key("host-1", "docker", "c0ffee", "eth0"),
     ks.WorkloadEndpointKey("host-1", "docker", "c0ffee", "eth0")),
    (ks.workload_endpoint_key("h", "k8s", "ns.pod-1", "endpoint"),
     ks.WorkloadEndpointKey("h", "k8s", "ns.pod-1", "endpoint")),
    (ks.host_endpoint_key("host-1", "eth1"), ks.HostEndpointKey("host-1", "eth1")),
    (ks.profile_key("prof-a", "rules"), ks.ProfileKey("prof-a", "rules")),
    (ks.profile_key("prof-a", "tags"), ks.ProfileKey("prof-a", "tags")),
    (ks.profile_key("prof-a", "labels"), ks.ProfileKey("prof-a", "labels")),
    (ks.tier_metadata_key("default"), ks.TierKey("default")),
    (ks.tier_metadata_key("policy"), ks.TierKey("policy")),
    (ks.policy_key("default", "allow-dns"), ks.PolicyKey("default", "allow-dns")),
    (ks.policy_key("t1", "metadata"), ks.PolicyKey("t1", "metadata")),
    (ks.pool_key("198.18.0.0/16"), ks.PoolKey("198.18.0.0/16")),
    (ks.pool_key("198.18.4.7/24"), ks.PoolKey("198.18.4.0/24")),  # canonicalised
    (ks.pool_key("fd00:1::/64"), ks.PoolKey("fd00:1::/64")),
    (ks.BGP_GLOBAL_AS_KEY, ks.BGPGlobalKey("as_num")),
    (ks.BGP_GLOBAL_MESH_KEY, ks.BGPGlobalKey("node_mesh")),
    (ks.BGP_GLOBAL_LOGLEVEL_KEY, ks.BGPGlobalKey("loglevel")),
    *[(ks.bgp_global_key(n), ks.BGPGlobalKey(n)) for n in ("as_num", "node_mesh", "loglevel")],
    *[(ks.bgp_host_key("host-1", f), ks.BGPHostKey("host-1", f)) for f in ks.BGP_HOST_FIELDS],
    (ks.bgp_peer_key("198.18.0.1"), ks.BGPPeerKey(None, "198.18.0.1")),
    (ks.bgp_peer_key("fd00::1"), ks.BGPPeerKey(None, "fd00::1")),
    (ks.bgp_peer_key("FD00:0::2"), ks.BGPPeerKey(None, "fd00::2")),  # canonicalised
    (ks.bgp_peer_key("198.18.0.2", "host-1"), ks.BGPPeerKey("host-1", "198.18.0.2")),
    (ks.bgp_peer_key("fd00::3", hostname="host-1"), ks.BGPPeerKey("host-1", "fd00::3")),
    (ks.custom_filter_key(4, "f1"), ks.CustomFilterKey(4, "f1")),
    (ks.custom_filter_key(6, "f2"), ks.CustomFilterKey(6, "f2")),
    (ks.IPAM_CONFIG_KEY, ks.IPAMConfigKey()),
    (ks.block_key("198.18.1.64/26"), ks.BlockKey("198.18.1.64/26")),
    (ks.block_key("fd00:2::/122"), ks.BlockKey("fd00:2::/122")),
    (ks.handle_key("docker.c0ffee"), ks.HandleKey("docker.c0ffee")),
    (ks.affinity_key("host-1", "198.18.1.64/26"), ks.AffinityKey("host-1", "198.18.1.64/26")),
    (ks.affinity_key("host-1", "fd00:2::/122"), ks.AffinityKey("host-1", "fd00:2::/122")),
    (ks.felix_status_key("host-1"), ks.FelixStatusKey("host-1", False)),
    (ks.felix_last_status_key("host-1"), ks.FelixStatusKey("host-1", True)),
    (ks.endpoint_status_key("host-1", "docker", "c0ffee", "eth0"),
     ks.EndpointStatusKey("host-1", "docker", "c0ffee", "eth0")),
    (ks.libnetwork_network_key("net123"), ks.LibnetworkNetworkKey("net123")),
    (ks.libnetwork_endpoint_key("h1", "ep1"), ks.LibnetworkEndpointKey("h1", "ep1")),
    (ks.libnetwork_profile_key("net1"), ks.LibnetworkProfileKey("net1")),
]


@pytest.mark.parametrize(("key", "expected"), ROUND_TRIPS, ids=[k for k, _ in ROUND_TRIPS])
def test_builder_round_trips_through_parse_key(key: str, expected: object) -> None:
    assert key.startswith(ks.ROOT + "/")
    assert ks.parse_key(key) == expected


def test_every_parsed_key_type_is_covered() -> None:
    """A new key type added to parse_key must get a round-trip case above."""
    covered = {type(parsed) for _, parsed in ROUND_TRIPS}
    assert covered == set(ks.ParsedKey.__args__)  # type: ignore[attr-defined]


def test_keys_land_in_their_directories() -> None:
    """Directory builders (used as syncer/list prefixes) contain their keys."""
    pairs = [
        (ks.host_config_dir("h"), ks.host_config_key("h", "x")),
        (ks.host_dir("h"), ks.host_bird_ip_key("h")),
        (ks.host_workload_dir("h"), ks.workload_endpoint_key("h", "o", "w", "e")),
        (ks.workload_dir("h", "o", "w"), ks.workload_endpoint_key("h", "o", "w", "e")),
        (ks.profile_dir("p"), ks.profile_key("p", "rules")),
        (ks.tier_dir("t"), ks.policy_key("t", "p")),
        (ks.tier_dir("t"), ks.tier_metadata_key("t")),
        (ks.pool_dir(4), ks.pool_key("198.18.0.0/16")),
        (ks.pool_dir(6), ks.pool_key("fd00::/64")),
        (ks.bgp_host_dir("h"), ks.bgp_host_key("h", "as_num")),
        (ks.bgp_peer_dir(4), ks.bgp_peer_key("198.18.0.1")),
        (ks.bgp_peer_dir(6, "h"), ks.bgp_peer_key("fd00::1", "h")),
        (ks.block_dir(4), ks.block_key("198.18.0.0/26")),
        (ks.block_dir(6), ks.block_key("fd00::/122")),
        (ks.affinity_dir("h"), ks.affinity_key("h", "198.18.0.0/26")),
        (ks.affinity_dir("h", 4), ks.affinity_key("h", "198.18.0.0/26")),
        (ks.affinity_dir("h", 6), ks.affinity_key("h", "fd00::/122")),
        (ks.felix_status_dir("h"), ks.felix_status_key("h")),
        (ks.felix_status_dir("h"), ks.endpoint_status_key("h", "o", "w", "e")),
        (ks.CONFIG_DIR, ks.global_config_key("x")),
        (ks.POLICY_DIR, ks.policy_key("t", "p")),
        (ks.PROFILE_DIR, ks.profile_key("p", "tags")),
        (ks.BGP_GLOBAL_DIR, ks.BGP_GLOBAL_AS_KEY),
        (ks.BGP_DIR, ks.bgp_host_key("h", "as_num")),
        (ks.IPAM_DIR, ks.IPAM_CONFIG_KEY),
        (ks.HANDLE_DIR, ks.handle_key("x")),
    ]
    for directory, key in pairs:
        assert directory.endswith("/"), directory
        assert key.startswith(directory), (directory, key)
        assert ks.parse_key(directory) is None, directory


def test_cidr_segment_round_trip() -> None:
    for cidr in ("198.18.0.0/15", "198.18.7.0/24", "fd00::/8", "fd00:1:2::/64"):
        seg = ks.cidr_to_segment(cidr)
        assert "/" not in seg
        assert ks.segment_to_cidr(seg) == cidr


@pytest.mark.parametrize("key", [
    "",
    "/",
    "/calico",
    "/calico/v1/Ready/extra",
    "/calico/v1/host/h1",
    "/calico/v1/host/h1/workload/o/w/endpoint",
    "/calico/v1/host/h1/workload/o/w/endpoint/e/extra",
    "/calico/v1/policy/profile/p/other",
    "/calico/v1/ipam/v4/pool/not-a-cidr",
    "/calico/v1/ipam/v4/pool/198.18.0.0-99",
    "/calico/ipam/v2/assignment/ipv4/block/198.18.0.0-33",
    "/calico/bgp/v1/host/h1/unknown_field",
    "/somewhere/else/entirely",
    "calico/v1/Ready",
])
def test_parse_key_returns_none_outside_the_layout(key: str) -> None:
    assert ks.parse_key(key) is None


# (callable building a key with one bad argument, field the error must name)
BAD_SEGMENT_CASES = [
    (lambda bad: ks.global_config_key(bad), "config name"),
    (lambda bad: ks.host_config_key(bad, "x"), "hostname"),
    (lambda bad: ks.host_config_key("h", bad), "config name"),
    (lambda bad: ks.host_bird_ip_key(bad), "hostname"),
    (lambda bad: ks.workload_endpoint_key(bad, "o", "w", "e"), "hostname"),
    (lambda bad: ks.workload_endpoint_key("h", bad, "w", "e"), "orchestrator"),
    (lambda bad: ks.workload_endpoint_key("h", "o", bad, "e"), "workload"),
    (lambda bad: ks.workload_endpoint_key("h", "o", "w", bad), "endpoint id"),
    (lambda bad: ks.host_endpoint_key("h", bad), "endpoint id"),
    (lambda bad: ks.profile_key(bad, "rules"), "profile"),
    (lambda bad: ks.tier_metadata_key(bad), "tier"),
    (lambda bad: ks.policy_key(bad, "p"), "tier"),
    (lambda bad: ks.policy_key("t", bad), "policy"),
    (lambda bad: ks.bgp_global_key(bad), "bgp setting"),
    (lambda bad: ks.bgp_host_key(bad, "as_num"), "hostname"),
    (lambda bad: ks.bgp_host_key("h", bad), "bgp setting"),
    (lambda bad: ks.bgp_peer_key("198.18.0.1", bad), "hostname"),
    (lambda bad: ks.custom_filter_key(4, bad), "filter name"),
    (lambda bad: ks.handle_key(bad), "handle"),
    (lambda bad: ks.affinity_key(bad, "198.18.0.0/26"), "hostname"),
    (lambda bad: ks.felix_status_key(bad), "hostname"),
    (lambda bad: ks.endpoint_status_key("h", "o", "w", bad), "endpoint id"),
    (lambda bad: ks.libnetwork_network_key(bad), "network id"),
]
BAD_SEGMENTS = ["", "a/b", "with space", "tab\there", "..", ".", "/lead", "trail/"]


@pytest.mark.parametrize("build,field", BAD_SEGMENT_CASES)
@pytest.mark.parametrize("bad", BAD_SEGMENTS)
def test_bad_segment_names_the_field(build, field: str, bad: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as info:
        build(bad)
    assert info.value.field == field
    assert info.value.value == bad
    assert field in str(info.value) and repr(bad) in str(info.value)


def test_non_string_segment_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        ks.host_dir(None)  # type: ignore[arg-type]
    assert info.value.field == "hostname"


def test_bad_profile_part_names_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        ks.profile_key("p", "metadata")
    assert info.value.field == "profile part"
    assert info.value.value == "metadata"


@pytest.mark.parametrize("version", [0, 5, "4", "ipv4"])
def test_bad_ip_version_names_the_field(version: object) -> None:
    for build in (ks.pool_dir, ks.block_dir, ks.bgp_peer_dir,
                  lambda v: ks.affinity_dir("h", v), lambda v: ks.custom_filter_key(v, "f")):
        with pytest.raises(ValidationError) as info:
            build(version)
        assert info.value.field == "ip version"


@pytest.mark.parametrize("build,field", [
    (ks.pool_key, "cidr"),
    (ks.block_key, "cidr"),
    (lambda bad: ks.affinity_key("h", bad), "cidr"),
    (ks.cidr_to_segment, "cidr"),
    (ks.bgp_peer_key, "ip"),
])
@pytest.mark.parametrize("bad", ["", "not-a-cidr", "198.18.0.0/33", "300.1.2.3", "fd00::/129"])
def test_bad_address_names_the_field(build, field: str, bad: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as info:
        build(bad)
    assert info.value.field == field
    assert info.value.value == bad
