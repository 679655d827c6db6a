"""`rtnl` against the real kernel, in namespaces this test creates: each message kind the
codec builds does to the kernel what iproute2 (`ip -j`) then shows, and each dump reads
back what iproute2 wrote; batches report the kernel's errno per request; link events
arrive; and the constants pyroute2 does not define (RT_TABLE_MAIN, SO_RCVBUFFORCE,
SO_SNDBUFFORCE, CLONE_NEWNET) are checked on the kernel itself."""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from netsim.netns import Namespace, namespace
from rtnl import codec, consts
from rtnl.codec import NetlinkError
from rtnl.netns import netns_path, run_in_netns
from rtnl.sock import NetlinkSocket

pytestmark = [pytest.mark.root]


@pytest.fixture
def ns() -> Iterator[Namespace]:
    with namespace("rtnl-a") as a:
        yield a


@pytest.fixture
def sock(ns: Namespace) -> Iterator[NetlinkSocket]:
    with NetlinkSocket(ns.name) as s:
        yield s


def ipj(ns: Namespace, *args: str) -> list[dict]:
    out = ns.ip("-j", *args).stdout
    return json.loads(out) if out.strip() else []


def iface(ns: Namespace, name: str) -> int:
    """An interface `name` that is up with carrier (a veth pair inside `ns`); its index."""
    ns.ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    ns.ip("link", "set", f"{name}p", "up")
    ns.ip("link", "set", name, "up")
    return int(ipj(ns, "link", "show", name)[0]["ifindex"])


def test_veth_pair_with_peer_born_in_another_namespace(ns: Namespace,
                                                       sock: NetlinkSocket) -> None:
    with namespace("rtnl-b") as other:
        fd = os.open(netns_path(other.name), os.O_RDONLY)
        try:
            sock.request(codec.veth_request("cali0001", "eth0", mtu=1410, peer_netns_fd=fd))
        finally:
            os.close(fd)
        with pytest.raises(NetlinkError) as info:
            sock.request(codec.veth_request("cali0001", "tmp0001"))
        assert info.value.code == errno.EEXIST
        host = ipj(ns, "link", "show", "cali0001")[0]
        peer = ipj(other, "link", "show", "eth0")[0]
        assert host["mtu"] == peer["mtu"] == 1410
        link = sock.link("cali0001")
        assert link is not None
        assert (link.ifindex, link.mac, link.mtu, link.admin_up) == (
            host["ifindex"], host["address"], 1410, False)
        assert sock.link_by_index(link.ifindex) == link
        with NetlinkSocket(other.name) as inside:
            eth0 = inside.link("eth0")
            assert eth0 is not None and eth0.mac == peer["address"]
            # rename, MTU and up in one request (the kernel renames first)
            inside.request(codec.set_link_request(eth0.ifindex, name="eth1", mtu=1400, up=True))
        sock.request(codec.set_link_request(link.ifindex, up=True))
        moved = ipj(other, "link", "show", "eth1")[0]
        assert moved["mtu"] == 1400 and "UP" in moved["flags"]
        now = sock.link("cali0001")
        assert now is not None and now.admin_up and now.up  # both ends up: carrier
        sock.request(codec.del_link_request(link.ifindex))
        assert sock.link("cali0001") is None
        assert ipj(other, "link", "show", "type", "veth") == []  # the peer went with it


def test_move_into_a_namespace(ns: Namespace, sock: NetlinkSocket) -> None:
    with namespace("rtnl-b") as other:
        sock.request(codec.veth_request("cali0002", "tmp0002"))
        peer = sock.link("tmp0002")
        assert peer is not None
        fd = os.open(netns_path(other.name), os.O_RDONLY)
        try:
            sock.request(codec.set_link_request(peer.ifindex, netns_fd=fd))
        finally:
            os.close(fd)
        assert sock.link("tmp0002") is None
        assert [link["ifname"] for link in ipj(other, "link", "show", "type", "veth")] == [
            "tmp0002"]


def test_addresses(ns: Namespace, sock: NetlinkSocket) -> None:
    index = iface(ns, "dum0")
    sock.request(codec.address_request(index, "198.18.3.4", 32))
    sock.request(codec.address_request(index, "fd00::3:4", 128, nodad=True))
    with pytest.raises(NetlinkError) as info:
        sock.request(codec.address_request(index, "198.18.3.4", 32))
    assert info.value.code == errno.EEXIST
    shown = {(a["local"], a["prefixlen"]): a for a in ipj(ns, "addr", "show", "dum0")[0][
        "addr_info"]}
    assert ("198.18.3.4", 32) in shown and ("fd00::3:4", 128) in shown
    assert shown[("fd00::3:4", 128)].get("nodad") is True
    mine = {(a.address, a.prefixlen, a.scope) for a in sock.dump_addresses() if a.ifindex == index}
    assert {("198.18.3.4", 32, 0), ("fd00::3:4", 128, 0)} <= mine
    assert {a.address for a in sock.dump_addresses(socket.AF_INET)} == {"127.0.0.1",
                                                                        "198.18.3.4"}
    sock.request(codec.address_request(index, "198.18.3.4", 32, delete=True))
    with pytest.raises(NetlinkError) as info:
        sock.request(codec.address_request(index, "198.18.3.4", 32, delete=True))
    assert info.value.code == errno.EADDRNOTAVAIL
    assert "198.18.3.4" not in ns.ip("addr", "show", "dum0").stdout


def test_routes_of_every_kind_and_the_main_table(ns: Namespace, sock: NetlinkSocket) -> None:
    index = iface(ns, "dum0")
    ns.ip("addr", "add", "198.18.9.1/24", "dev", "dum0")
    requests = [
        codec.route_request("198.18.5.1/32", proto=80, oif=index),
        codec.route_request("fd00::5:1/128", proto=80, oif=index),
        codec.route_request("198.18.6.0/26", proto=80, oif=index, gateway="198.19.0.2",
                            onlink=True),
        codec.route_request("198.18.7.0/26", proto=80, gateway="198.18.9.2"),
        codec.route_request("198.18.8.0/26", proto=80, blackhole=True),
        codec.route_request("0.0.0.0/0", proto=consts.RTPROT_BOOT, oif=index,
                            gateway="169.254.1.1", onlink=True),
    ]
    assert [code for code, _ in sock.request_batch(requests)] == [0] * len(requests)
    shown = {r["dst"]: r for r in ipj(ns, "route", "show", "table", "main")}
    assert shown["198.18.5.1"]["dev"] == "dum0" and shown["198.18.5.1"]["scope"] == "link"
    assert shown["198.18.5.1"]["protocol"] == "80"
    assert shown["198.18.6.0/26"]["gateway"] == "198.19.0.2"
    assert "onlink" in shown["198.18.6.0/26"]["flags"]
    assert shown["198.18.7.0/26"]["dev"] == "dum0"  # where the kernel found the gateway
    assert shown["198.18.8.0/26"]["type"] == "blackhole"
    assert shown["default"]["gateway"] == "169.254.1.1"
    assert [r["dst"] for r in ipj(ns, "route", "show", "proto", "boot")] == ["default"]
    assert ipj(ns, "-6", "route", "show", "fd00::5:1")[0]["dev"] == "dum0"
    # RT_TABLE_MAIN is what `ip route ... table main` means, both ways
    ns.ip("route", "add", "198.18.10.0/24", "via", "198.18.9.3", "table", "main")
    ns.ip("route", "add", "198.18.11.0/24", "via", "198.18.9.3", "table", "100")
    mine = {r.dst: r for r in sock.dump_routes(socket.AF_INET)}
    assert mine["198.18.10.0/24"].table == consts.RT_TABLE_MAIN
    assert mine["198.18.11.0/24"].table == 100
    assert mine["198.18.5.1/32"].oif == index and mine["198.18.5.1/32"].proto == 80
    assert mine["198.18.6.0/26"].onlink and mine["198.18.6.0/26"].gateway == "198.19.0.2"
    assert mine["198.18.8.0/26"].blackhole
    assert mine["0.0.0.0/0"].proto == consts.RTPROT_BOOT
    assert {r.dst for r in sock.dump_routes(socket.AF_INET6)} >= {"fd00::5:1/128"}
    # a delete matches the protocol: a protocol-80 delete leaves `ip`'s route alone
    results = sock.request_batch([
        codec.route_request("198.18.10.0/24", proto=80, delete=True),
        codec.route_request("198.18.5.1/32", proto=80, oif=index, delete=True),
        codec.route_request("::/0", proto=consts.RTPROT_UNSPEC, oif=index, delete=True)])
    assert [code for code, _ in results] == [errno.ESRCH, 0, errno.ESRCH]
    left = {r["dst"] for r in ipj(ns, "route", "show", "table", "main")}
    assert "198.18.10.0/24" in left and "198.18.5.1" not in left


def test_neighbours_proxies_and_fdb(ns: Namespace, sock: NetlinkSocket) -> None:
    index = iface(ns, "dum0")
    ns.ip("link", "add", "vx0", "type", "vxlan", "id", "4096", "dstport", "4789", "nolearning")
    vx = sock.link("vx0")
    assert vx is not None
    results = sock.request_batch([
        codec.neighbour_request("198.18.2.2", "ee:ee:ee:ee:ee:02", index),
        codec.neighbour_request("fd00::2:2", "ee:ee:ee:ee:ee:03", index),
        codec.neighbour_request("fd00::2:9", None, index, proxy=True),
        codec.fdb_request("66:cc:00:00:00:02", "198.19.0.2", vx.ifindex),
    ])
    assert [code for code, _ in results] == [0, 0, 0, 0]
    shown = {n["dst"]: n for n in ipj(ns, "neigh", "show", "dev", "dum0")}
    assert shown["198.18.2.2"]["lladdr"] == "ee:ee:ee:ee:ee:02"
    assert "PERMANENT" in shown["198.18.2.2"]["state"]
    assert shown["fd00::2:2"]["lladdr"] == "ee:ee:ee:ee:ee:03"
    assert [p["dst"] for p in ipj(ns, "-6", "neigh", "show", "proxy")] == ["fd00::2:9"]
    fdb = json.loads(ns.exec("bridge", "-j", "fdb", "show", "dev", "vx0").stdout)
    assert any(e["mac"] == "66:cc:00:00:00:02" and e.get("dst") == "198.19.0.2" for e in fdb)
    mine = {(n.dst, n.lladdr, n.permanent) for n in sock.dump_neighbours()
            if n.ifindex == index and n.permanent}
    assert mine == {("198.18.2.2", "ee:ee:ee:ee:ee:02", True),
                    ("fd00::2:2", "ee:ee:ee:ee:ee:03", True)}
    assert {n.dst for n in sock.dump_neighbours(socket.AF_INET6)} >= {"fd00::2:2"}
    assert "198.18.2.2" not in {n.dst for n in sock.dump_neighbours(socket.AF_INET6)}
    assert [n.dst for n in sock.dump_neighbours(proxy=True)] == ["fd00::2:9"]
    entries = [(e.mac, e.dst) for e in sock.dump_fdb(vx.ifindex)
               if e.state & consts.NUD_PERMANENT]
    assert ("66:cc:00:00:00:02", "198.19.0.2") in entries
    results = sock.request_batch([
        codec.neighbour_request("198.18.2.2", None, index, delete=True),
        codec.neighbour_request("fd00::2:9", None, index, delete=True, proxy=True),
        codec.fdb_request("66:cc:00:00:00:02", "198.19.0.2", vx.ifindex, delete=True),
        codec.neighbour_request("198.18.2.2", None, index, delete=True)])
    assert [code for code, _ in results] == [0, 0, 0, errno.ENOENT]
    assert "198.18.2.2" not in ns.ip("neigh", "show", "dev", "dum0").stdout
    assert ipj(ns, "-6", "neigh", "show", "proxy") == []


def test_link_events(ns: Namespace) -> None:
    with NetlinkSocket(ns.name, groups=consts.RTMGRP_LINK) as events:
        ns.ip("link", "add", "dum7", "type", "veth", "peer", "name", "dum7p")
        ns.ip("link", "del", "dum7")
        seen: list[tuple[int, str]] = []
        sel = selectors.DefaultSelector()
        sel.register(events.fileno(), selectors.EVENT_READ)
        try:
            while (consts.RTM_DELLINK, "dum7") not in seen:
                assert sel.select(timeout=10), f"no link event within 10 s; saw {seen}"
                seen += [(t, link.name) for t, link in events.recv_link_events()]
        finally:
            sel.close()
        assert seen.index((consts.RTM_NEWLINK, "dum7")) < seen.index((consts.RTM_DELLINK,
                                                                      "dum7"))


def test_a_socket_is_bound_to_its_namespace_and_forces_its_buffers(ns: Namespace) -> None:
    """CLONE_NEWNET: the socket opened on the joined thread sees that namespace's links
    (the caller's thread stays where it was). SO_RCVBUFFORCE / SO_SNDBUFFORCE: buffers
    beyond the sysctl maxima (the kernel doubles what it is given)."""
    iface(ns, "dum3")
    here = os.readlink("/proc/thread-self/ns/net")
    big = max(int(Path(f"/proc/sys/net/core/{m}").read_text()) for m in ("rmem_max", "wmem_max"))
    big += 65536
    raw = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        for force, plain in ((consts.SO_RCVBUFFORCE, socket.SO_RCVBUF),
                             (consts.SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            raw.setsockopt(socket.SOL_SOCKET, plain, big)
            assert raw.getsockopt(socket.SOL_SOCKET, plain) < 2 * big  # capped at the max
            raw.setsockopt(socket.SOL_SOCKET, force, big)
            assert raw.getsockopt(socket.SOL_SOCKET, plain) == 2 * big
    finally:
        raw.close()
    with NetlinkSocket(ns.name, rcvbuf=big) as s:
        assert {link.name for link in s.dump_links()} == {"lo", "dum3", "dum3p"}
        dup = socket.socket(fileno=os.dup(s.fileno()))
        try:
            assert dup.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * big
        finally:
            dup.close()
    assert os.readlink("/proc/thread-self/ns/net") == here
    inside = run_in_netns(ns.name, lambda: os.readlink("/proc/thread-self/ns/net"))
    assert inside != here and inside == run_in_netns(
        netns_path(ns.name), lambda: os.readlink("/proc/thread-self/ns/net"))
    assert threading.current_thread() is threading.main_thread()
    with pytest.raises(FileNotFoundError):
        run_in_netns("rtnl-no-such-namespace", lambda: None)
