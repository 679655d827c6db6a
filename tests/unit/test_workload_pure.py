"""The pure parts of the workload package: the address-request grammar every way in
shares, and the gateway scheme (values the Docker and CNI adapters will answer with)."""

from __future__ import annotations

import pytest

from libcalico.errors import ValidationError
from workload.addresses import AddressRequest, ipam_attributes, parse_request
from workload.gateway import GatewayRoute, gateway_routes, host_net, host_nets
from workload.provision import Workload, build_endpoint, validate_mtu
from workload.veth import host_interface_name, netns_path, temp_peer_name


@pytest.mark.parametrize("text, want", [
    ("ipv4", AddressRequest("ipv4", 4)),
    ("ipv6", AddressRequest("ipv6", 6)),
    ("198.18.64.0/24", AddressRequest("198.18.64.0/24", 4, pool="198.18.64.0/24")),
    ("FD00:64::/120", AddressRequest("FD00:64::/120", 6, pool="fd00:64::/120")),
    ("198.18.64.7", AddressRequest("198.18.64.7", 4, address="198.18.64.7")),
    ("fd00:0064::0007", AddressRequest("fd00:0064::0007", 6, address="fd00:64::7")),
])
def test_requests_parse_into_canonical_values(text: str, want: AddressRequest) -> None:
    assert parse_request(text) == want


@pytest.mark.parametrize("text", ["banana", "198.18.64.1/24", "ipv5", "", "1.2.3.4/33"])
def test_bad_requests_name_the_field_and_value(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_request(text, field="IP")
    assert info.value.field == "IP" and info.value.value == text


def test_gateway_routes_per_version_ipv4_first() -> None:
    assert gateway_routes(["fd00:1::5", "198.18.1.5", "198.18.1.6"]) == [
        GatewayRoute(4, "169.254.1.1", "0.0.0.0/0", "169.254.1.1/32", onlink=True),
        GatewayRoute(6, "fe80::1", "::/0", "fe80::1/128", onlink=False)]
    assert gateway_routes([]) == []
    assert host_net("FD00::0001") == "fd00::1/128"
    assert host_nets(["198.18.1.5", "fd00::1", "198.18.1.6"], 4) == \
        ("198.18.1.5/32", "198.18.1.6/32")


def test_names_and_the_endpoint_record() -> None:
    assert host_interface_name("abcdef0123456789") == "caliabcdef01234"
    assert temp_peer_name("caliabcdef01234") == "tmpabcdef01234"
    assert netns_path("x") == "/run/netns/x" and netns_path("/proc/1/ns/net") == "/proc/1/ns/net"
    with pytest.raises(ValueError):
        host_interface_name("abc", prefix="toolong")
    where = Workload("h1", "cni", "c1", "/run/netns/x")
    assert where.ipam_handle == "c1"
    assert Workload("h1", "cni", "c1", "x", handle="net1.c1").ipam_handle == "net1.c1"
    ep = build_endpoint(where, "eth0", "calieth0", "02:00:00:00:00:01",
                        ["fd00::2", "198.18.1.5"], ["p1"], {"app": "web"})
    assert (ep.ipv4_nets, ep.ipv6_nets) == (("198.18.1.5/32",), ("fd00::2/128",))
    assert (ep.ipv4_gateway, ep.ipv6_gateway) == ("169.254.1.1", "fe80::1")
    assert ep.profile_ids == ("p1",) and dict(ep.labels) == {"app": "web"}
    assert build_endpoint(where, "e", "calie", None, ["198.18.1.5"]).ipv6_gateway is None
    assert ipam_attributes("h1", "cni", "c1", "eth0") == {
        "host": "h1", "orchestrator": "cni", "workload": "c1", "endpoint_id": "eth0"}
    assert validate_mtu(None) is None and validate_mtu(1500) == 1500
    for bad in (67, 65536, True, "1500"):
        with pytest.raises(ValidationError):
            validate_mtu(bad)  # type: ignore[arg-type]
