"""felix's tunnel owner and its gateway routes against the real kernel, in namespaces:
`vxlan.calico` created with its settings, repaired and recreated, FDB entries written,
replaced and removed; routes via a gateway (onlink or plain) and blackholes written once
and left alone on resync; a BIRD route to the same prefix (protocol bird, metric 32)
never touched; IPIP refused by this kernel with a plain reason (created where it can)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from calicoctl.checksystem import tunnel_support
from felix.dataplane.cmd import DataplaneError
from felix.dataplane.routes import Routes
from felix.dataplane.tunnels import Tunnels
from felix.dataplane.types import FDBState, NeighbourState, RouteState, TunnelDevice
from netsim.netns import Namespace, namespace, veth
from tests.support.netlink import CountingNetlink

pytestmark = [pytest.mark.root]

VXLAN = TunnelDevice("vxlan.calico", "vxlan", "198.19.1.0", 1450, "66:00:00:00:00:01", 4096,
                     4789, "198.18.1.1")



@pytest.fixture
def host() -> Iterator[Namespace]:
    with namespace("flxt-h") as ns:
        veth(ns, "eth0", None, "eth0peer")
        ns.ip("addr", "add", "198.18.1.1/24", "dev", "eth0")
        yield ns


def link(ns: Namespace, name: str) -> dict:
    return json.loads(ns.ip("-d", "-j", "link", "show", name).stdout)[0]


def fdb(ns: Namespace) -> set[tuple[str, str]]:
    if not ns.ip("link", "show", "vxlan.calico", check=False).stdout:
        return set()
    rows = json.loads(ns.exec("bridge", "-j", "fdb", "show", "dev", "vxlan.calico").stdout)
    return {(r["mac"], r["dst"]) for r in rows if "permanent" in r.get("state", "")
            and r.get("dst")}


def test_vxlan_device_created_repaired_and_removed(host: Namespace) -> None:
    tunnels = Tunnels(host.name)
    try:
        tunnels.set_device(VXLAN)
        assert tunnels.apply() == {"vxlan.calico"}
        dev = link(host, "vxlan.calico")
        data = dev["linkinfo"]["info_data"]
        assert (data["id"], data["port"], data["local"]) == (4096, 4789, "198.18.1.1")
        assert not data.get("learning") and dev["mtu"] == 1450
        assert dev["address"] == "66:00:00:00:00:01" and "UP" in dev["flags"]
        assert "inet 198.19.1.0/32" in host.ip("addr", "show", "vxlan.calico").stdout
        assert tunnels.apply() == set() and tunnels.in_sync
        # Tampering (MTU, an extra address, down) is repaired in place at a resync.
        host.ip("link", "set", "vxlan.calico", "mtu", "1300", "down")
        host.ip("addr", "add", "198.19.9.9/32", "dev", "vxlan.calico")
        tunnels.mark_resync()
        assert tunnels.apply() == set()
        dev = link(host, "vxlan.calico")
        assert dev["mtu"] == 1450 and "UP" in dev["flags"]
        assert "198.19.9.9" not in host.ip("addr", "show", "vxlan.calico").stdout
        index = dev["ifindex"]
        # What cannot change in place (the VNI) recreates the device.
        tunnels.set_device(TunnelDevice(**{**VXLAN.__dict__, "vni": 4097}))
        assert tunnels.apply() == {"vxlan.calico"} == tunnels.last_created
        assert link(host, "vxlan.calico")["linkinfo"]["info_data"]["id"] == 4097
        assert link(host, "vxlan.calico")["ifindex"] != index
        # Deleted behind felix's back: back after the interface event.
        host.ip("link", "del", "vxlan.calico")
        tunnels.on_interface_update("vxlan.calico")
        assert tunnels.apply() == {"vxlan.calico"}
        tunnels.remove_device("vxlan.calico")
        tunnels.apply()
        assert not host.ip("link", "show", "vxlan.calico", check=False).stdout
    finally:
        tunnels.close()


def test_a_leftover_device_is_removed_at_the_first_resync(host: Namespace) -> None:
    host.ip("link", "add", "vxlan.calico", "type", "vxlan", "id", "4096", "dstport", "4789")
    tunnels = Tunnels(host.name)
    try:
        tunnels.apply()
        assert not host.ip("link", "show", "vxlan.calico", check=False).stdout
    finally:
        tunnels.close()


def test_without_encapsulation_the_resync_looks_through_rtnl_only(host: Namespace) -> None:
    """No device desired and none of felix's in the kernel (no encapsulated pool, the usual
    case): the resync finds that with one rtnl lookup and never imports pyroute2 (its
    import is a quarter of a felix start's CPU). A leftover device still goes."""
    code = ("import sys\n"
            "from felix.dataplane.tunnels import Tunnels\n"
            f"t = Tunnels({host.name!r})\n"
            "assert t.apply() == set() and t.in_sync\n"
            "t.mark_resync(); assert t.apply() == set() and t.in_sync\n"
            "print('pyroute2' in sys.modules)\n")
    out = host.exec(sys.executable, "-c", code).stdout
    assert out.strip() == "False"
    host.ip("link", "add", "vxlan.calico", "type", "vxlan", "id", "4096", "dstport", "4789")
    tunnels = Tunnels(host.name)
    try:
        tunnels.apply()
        assert not host.ip("link", "show", "vxlan.calico", check=False).stdout
        assert tunnels.in_sync
    finally:
        tunnels.close()


def test_fdb_entries_written_replaced_removed_and_resynced(host: Namespace) -> None:
    nl = CountingNetlink(host.name)
    tunnels = Tunnels(host.name, nl=nl)
    a = FDBState("66:00:00:00:00:02", "198.18.1.2", "vxlan.calico")
    b = FDBState("66:00:00:00:00:03", "198.18.2.1", "vxlan.calico")
    try:
        tunnels.set_fdb([a, b])  # before the device exists: they wait for it
        tunnels.apply()
        assert fdb(host) == set()
        tunnels.set_device(VXLAN)
        tunnels.apply()
        assert fdb(host) == {(a.mac, a.dst), (b.mac, b.dst)}
        sent = nl.requests
        tunnels.mark_resync()
        tunnels.apply()
        assert nl.requests == sent  # read back, nothing to write
        tunnels.set_fdb([a, FDBState(b.mac, "198.18.2.9", "vxlan.calico")])
        tunnels.apply()
        assert fdb(host) == {(a.mac, a.dst), (b.mac, "198.18.2.9")}
        host.exec("bridge", "fdb", "del", a.mac, "dev", "vxlan.calico", "dst", a.dst)
        tunnels.mark_resync()
        tunnels.apply()
        assert (a.mac, a.dst) in fdb(host)
        tunnels.set_fdb([])
        tunnels.apply()
        assert fdb(host) == set()
    finally:
        tunnels.close()


def test_gateway_onlink_plain_and_blackhole_routes_beside_birds(host: Namespace) -> None:
    tunnels = Tunnels(host.name)
    tunnels.set_device(VXLAN)
    tunnels.apply()
    # BIRD's route to a block felix is about to route too: protocol bird, metric 32.
    host.ip("route", "add", "198.19.2.0/26", "via", "198.18.1.2", "proto", "bird", "metric",
            "32")
    nl = CountingNetlink(host.name)
    routes = Routes(host.name, iface_prefixes=("cali", "vxlan.calico"), nl=nl)
    wanted = [RouteState("198.19.2.0/26", "vxlan.calico", "198.19.2.0", onlink=True),
              RouteState("198.19.3.0/26", None, "198.18.1.3"),
              RouteState("198.19.1.0/26", None, blackhole=True)]
    try:
        routes.set_routes(wanted)
        routes.set_neighbours([NeighbourState("198.19.2.0", "66:00:00:00:00:02",
                                              "vxlan.calico")])
        routes.apply()
        text = host.ip("route", "show").stdout
        assert ("198.19.2.0/26 via 198.19.2.0 dev vxlan.calico proto 80 onlink" in text)
        assert "198.19.3.0/26 via 198.18.1.3 dev eth0 proto 80" in text
        assert "blackhole 198.19.1.0/26 proto 80" in text
        assert "198.19.2.0/26 via 198.18.1.2 dev eth0 proto bird metric 32" in text
        assert "66:00:00:00:00:02 PERMANENT" in host.ip("neigh", "show", "dev",
                                                        "vxlan.calico").stdout
        # Read back at a resync: every route already right, nothing written.
        fresh = Routes(host.name, iface_prefixes=("cali", "vxlan.calico"), nl=nl)
        fresh.set_routes(wanted)
        fresh.set_neighbours([NeighbourState("198.19.2.0", "66:00:00:00:00:02",
                                             "vxlan.calico")])
        sent = nl.requests
        assert fresh.apply() is False and nl.requests == sent
        # Felix's routes change and go; BIRD's stays as it was.
        routes.set_routes([RouteState("198.19.2.0/26", None, "198.18.1.2")])
        routes.apply()
        text = host.ip("route", "show").stdout
        assert "198.19.2.0/26 via 198.18.1.2 dev eth0 proto 80" in text
        assert "198.19.3.0/26" not in text and "blackhole" not in text
        routes.set_routes([])
        routes.apply()
        text = host.ip("route", "show").stdout
        assert "proto 80" not in text
        assert "198.19.2.0/26 via 198.18.1.2 dev eth0 proto bird metric 32" in text
    finally:
        routes.close()
        tunnels.close()


def test_ipip_device_where_the_kernel_can_and_a_plain_reason_where_it_cannot(
        host: Namespace) -> None:
    tunnels = Tunnels(host.name)
    tunnels.set_device(TunnelDevice("tunl0", "ipip", "198.19.1.0", 1480))
    try:
        supported, _ = tunnel_support("ipip")
        if supported:
            tunnels.apply()
            dev = link(host, "tunl0")
            assert dev["mtu"] == 1480 and "UP" in dev["flags"]
        else:
            with pytest.raises(DataplaneError) as info:
                tunnels.apply()
            assert str(info.value) == (
                "tunl0: this kernel cannot create ipip devices (Operation not supported); "
                "IPIP pools cannot work on this host")
            assert "tunl0" in tunnels.failures
            # Other devices still work beside the failing one.
            tunnels.set_device(VXLAN)
            with pytest.raises(DataplaneError):
                tunnels.apply()
            assert link(host, "vxlan.calico")["mtu"] == 1450
    finally:
        tunnels.close()
