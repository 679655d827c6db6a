"""workload.veth's separate steps in real namespaces, composed the way each way in will:
the Docker driver (pair created in the host namespace, the peer left for Docker to move,
rename and address) and the CNI plugin / calicoctl (the whole interface, then changes).
Everything is created inside namespaces the test makes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from libcalico.errors import AlreadyExists, NotFound
from netsim.netns import Namespace
from workload import veth
from workload.gateway import gateway_routes

pytestmark = [pytest.mark.root]


@pytest.fixture
def hosts() -> Iterator[tuple[Namespace, Namespace]]:
    host = Namespace("wlv-h")
    try:
        wl = Namespace("wlv-w")
    except BaseException:
        host.delete()
        raise
    try:
        yield host, wl
    finally:
        wl.delete()
        host.delete()


def _link(ns: Namespace, ifname: str) -> dict:
    return json.loads(ns.ip("-j", "link", "show", ifname).stdout)[0]


def _names(ns: Namespace) -> list[str]:
    return [link["ifname"] for link in json.loads(ns.ip("-j", "link").stdout)]


def test_docker_style_pair_in_the_host_namespace(hosts: tuple[Namespace, Namespace]) -> None:
    host, wl = hosts
    name = veth.host_interface_name("0123456789abcdef")
    assert name == "cali0123456789a"
    peer = veth.temp_peer_name(name)
    pair = veth.create_veth(name, peer, netns=host.name, mtu=1450)
    host_link, peer_link = _link(host, name), _link(host, peer)
    assert (pair.host_mac, pair.peer_mac) == (host_link["address"], peer_link["address"])
    assert host_link["mtu"] == peer_link["mtu"] == 1450
    assert "UP" in host_link["flags"] and "UP" not in peer_link["flags"]
    with pytest.raises(AlreadyExists):
        veth.create_veth(name, "tmpother", netns=host.name)
    assert "tmpother" not in _names(host)
    # What Docker does itself: move the peer in, rename it, set the address; the driver
    # answers Join with the gateway route, and may add the gateway's neighbour entry.
    host.ip("link", "set", peer, "netns", wl.name)
    wl.ip("link", "set", peer, "name", "eth0")
    wl.ip("link", "set", "eth0", "up")
    wl.ip("addr", "add", "198.18.73.5/32", "dev", "eth0")
    (route,) = gateway_routes(["198.18.73.5"])
    assert (route.gateway, route.default, route.gateway_net, route.onlink) == \
        ("169.254.1.1", "0.0.0.0/0", "169.254.1.1/32", True)
    veth.add_gateway_neighbours("eth0", [4], pair.host_mac, netns=wl.name)
    veth.add_gateway_routes("eth0", [4], netns=wl.name)
    neigh = json.loads(wl.ip("-j", "neigh", "show", "169.254.1.1").stdout)[0]
    assert neigh["lladdr"] == pair.host_mac and "PERMANENT" in neigh["state"]
    (default,) = json.loads(wl.ip("-j", "route").stdout)
    assert (default["dst"], default["gateway"], default["dev"]) == \
        ("default", "169.254.1.1", "eth0") and "onlink" in default["flags"]
    assert veth.delete_veth(name, netns=host.name)
    assert name not in _names(host) and "eth0" not in _names(wl)
    assert not veth.delete_veth(name, netns=host.name)


def test_cni_style_whole_interface_then_changes(hosts: tuple[Namespace, Namespace]) -> None:
    host, wl = hosts
    iface = veth.create_workload_interface(wl.name, "caliwlv1", "eth0",
                                           ["198.18.73.6", "fd00:73::6"],
                                           host_netns=host.name, mtu=1400)
    assert iface.mac == _link(wl, "eth0")["address"] == veth.link_mac("eth0", netns=wl.name)
    assert iface.host_mac == _link(host, "caliwlv1")["address"]
    assert _link(wl, "eth0")["mtu"] == _link(host, "caliwlv1")["mtu"] == 1400
    assert veth.interface_addresses("eth0", netns=wl.name) == ["198.18.73.6", "fd00:73::6"]
    assert "default via fe80::1 dev eth0" in wl.ip("-6", "route").stdout
    # Configuring again changes nothing and is no error; so is a second IPv4 address.
    veth.configure_interface("eth0", ["198.18.73.6", "198.18.73.7"], iface.host_mac,
                             netns=wl.name)
    assert veth.interface_addresses("eth0", netns=wl.name) == \
        ["198.18.73.6", "198.18.73.7", "fd00:73::6"]
    veth.set_mtu("eth0", 1300, netns=wl.name)
    assert _link(wl, "eth0")["mtu"] == 1300
    # The last IPv6 address takes IPv6's default route and gateway neighbour with it.
    assert veth.remove_addresses("eth0", ["fd00:73::6"], netns=wl.name) == ["fd00:73::6"]
    assert "default" not in wl.ip("-6", "route").stdout
    assert "fe80::1" not in wl.ip("-6", "neigh").stdout
    assert veth.remove_addresses("eth0", ["fd00:73::6"], netns=wl.name) == []
    assert veth.remove_addresses("eth0", ["198.18.73.7"], netns=wl.name) == ["198.18.73.7"]
    assert "default via 169.254.1.1" in wl.ip("route").stdout  # IPv4 still has one
    assert veth.remove_addresses("eth9", ["198.18.73.6"], netns=wl.name) == []
    assert veth.remove_addresses("eth0", ["198.18.73.6"], netns="no-such-wlv-ns") == []


def test_failures_name_what_failed_and_leave_nothing(hosts: tuple[Namespace, Namespace]
                                                    ) -> None:
    host, wl = hosts
    wl.ip("link", "add", "eth0", "type", "veth", "peer", "name", "wlv-taken")
    with pytest.raises(AlreadyExists, match="eth0"):
        veth.create_workload_interface(wl.name, "caliwlv2", "eth0", ["198.18.73.8"],
                                       host_netns=host.name)
    assert [n for n in _names(host) if n != "lo"] == []
    with pytest.raises(NotFound, match="no-such-wlv-ns"):
        veth.create_workload_interface("no-such-wlv-ns", "caliwlv2", "eth1", [],
                                       host_netns=host.name)
    with pytest.raises(NotFound, match="eth7"):
        veth.add_addresses("eth7", ["198.18.73.8"], netns=wl.name)
    # A move refused because the target has the name already changes nothing.
    veth.create_veth("caliwlv3", "tmpwlv3", netns=host.name)
    with pytest.raises(AlreadyExists, match="eth0"):
        veth.move_into_namespace("tmpwlv3", wl.name, "eth0", netns=host.name)
    assert "tmpwlv3" in _names(host)
    assert veth.move_into_namespace("tmpwlv3", wl.name, "eth3", netns=host.name) == \
        _link(wl, "eth3")["address"]
