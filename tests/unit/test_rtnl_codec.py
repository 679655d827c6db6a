"""The rtnetlink codec (`rtnl.consts`, `rtnl.codec`) without a kernel: every constant is
pyroute2's value; every request it builds decodes with pyroute2 (an independent decoder)
to what was asked, and parses back with our own parsers; messages pyroute2 encodes parse
with ours. The kernel-side checks are in tests/integration/test_rtnl.py."""

from __future__ import annotations

import errno
import socket

import pyroute2.netlink as nl
import pyroute2.netlink.rtnl as rt
import pytest
from pyroute2.netlink.rtnl import ifaddrmsg as ifa_mod
from pyroute2.netlink.rtnl import ifinfmsg as ifi_mod
from pyroute2.netlink.rtnl import ndmsg as nd_mod
from pyroute2.netlink.rtnl import rtmsg as rt_mod
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from rtnl import codec, consts
from rtnl.codec import (
    Address,
    FdbEntry,
    Link,
    Neighbour,
    NetlinkError,
    Request,
    Route,
)

# ---- constants --------------------------------------------------------------------------


def _nla(table: tuple | list, name: str) -> int:
    """The type number of attribute `name` in a pyroute2 nla_map (positional or explicit)."""
    for index, entry in enumerate(table):
        if entry[0] == name:
            return index
        if isinstance(entry[0], int) and entry[1] == name:
            return entry[0]
    raise LookupError(name)


def pyroute2_value(name: str) -> int:
    """What pyroute2 says constant `name` is."""
    if name == "NLA_TYPE_MASK":
        return ~(nl.NLA_F_NESTED | nl.NLA_F_NET_BYTEORDER) & 0xFFFF
    if name.startswith(("NLMSG_", "NLM_F_")):
        return getattr(nl, name)
    if name.startswith(("RTM_", "RTMGRP_")):
        return getattr(rt, name)
    if name.startswith("RTN_"):
        return rt.rtypes[name]
    if name.startswith("RTPROT_"):
        return rt.rt_proto[name.removeprefix("RTPROT_").lower()]
    if name.startswith(("RT_SCOPE_", "RTNH_F_")):
        return getattr(rt_mod, name)
    if name.startswith("RTA_"):
        return _nla(rtmsg.nla_map, name)
    if name.startswith("IFLA_INFO_"):
        return _nla(ifinfmsg.ifinfo.nla_map, name)
    if name == "VETH_INFO_PEER":
        return _nla(ifinfmsg.ifinfo.veth_data.nla_map, name)
    if name.startswith("IFLA_"):
        return _nla(ifinfmsg.nla_map, name)
    if name.startswith("IFF_"):
        return getattr(ifi_mod, name)
    if name.startswith("IFA_F_"):
        return getattr(ifa_mod, name)
    if name.startswith("IFA_"):
        return _nla(ifaddrmsg.nla_map, name)
    if name.startswith("NDA_"):
        return _nla(ndmsg.nla_map, name)
    if name.startswith(("NUD_", "NTF_")):
        return getattr(nd_mod, name)
    raise LookupError(name)


# pyroute2 does not define these; tests/integration/test_rtnl.py checks them on the kernel.
KERNEL_CHECKED = {"RT_TABLE_MAIN", "SO_SNDBUFFORCE", "SO_RCVBUFFORCE", "CLONE_NEWNET"}
CONSTANTS = sorted(n for n in vars(consts) if n.isupper())


def test_every_constant_is_checked_somewhere() -> None:
    assert len(CONSTANTS) > 50
    unchecked = []
    for name in CONSTANTS:
        if name in KERNEL_CHECKED:
            continue
        try:
            pyroute2_value(name)
        except (LookupError, AttributeError, KeyError):
            unchecked.append(name)
    assert unchecked == []
    assert set(CONSTANTS) >= KERNEL_CHECKED


@pytest.mark.parametrize("name", [n for n in CONSTANTS if n not in KERNEL_CHECKED])
def test_constant_equals_pyroute2s(name: str) -> None:
    assert getattr(consts, name) == pyroute2_value(name), name


def test_the_kernel_checked_constants_are_unknown_to_pyroute2() -> None:
    """If pyroute2 ever names them, they move to the pyroute2 comparison."""
    for name in KERNEL_CHECKED:
        with pytest.raises((LookupError, AttributeError, KeyError)):
            pyroute2_value(name)


# ---- requests: decoded by pyroute2, parsed back by us -------------------------------------

def decode(cls: type, req: Request, seq: int = 7) -> nl.nlmsg:
    msg = cls(codec.encode(req, seq, consts.NLM_F_REQUEST | consts.NLM_F_ACK))
    msg.decode()
    return msg


def body(req: Request) -> tuple[bytes, int, int]:
    return req.body, 0, len(req.body)


def test_encode_header() -> None:
    req = codec.link_request(name="eth0")
    data = codec.encode(req, 42, consts.NLM_F_REQUEST | consts.NLM_F_ACK)
    assert list(codec.messages(data)) == [
        (consts.RTM_GETLINK, consts.NLM_F_REQUEST | consts.NLM_F_ACK, 42, 16, len(data))]
    msg = decode(ifinfmsg, req, 42)
    assert msg["header"]["sequence_number"] == 42
    assert msg["header"]["length"] == len(data)
    assert msg.get_attr("IFLA_IFNAME") == "eth0"


@pytest.mark.parametrize("kwargs, want", [
    (dict(dst="198.18.0.5/32", proto=80, oif=7),
     dict(family=2, dst_len=32, proto=80, scope=253, type=1, flags=0, oif=7, gw=None)),
    (dict(dst="fd00::5/128", proto=80, oif=7),
     dict(family=10, dst_len=128, proto=80, scope=253, type=1, flags=0, oif=7, gw=None)),
    (dict(dst="198.18.64.0/26", proto=80, oif=9, gateway="198.18.70.1", onlink=True),
     dict(family=2, dst_len=26, proto=80, scope=0, type=1, flags=4, oif=9, gw="198.18.70.1")),
    (dict(dst="198.18.64.0/26", proto=80, gateway="198.19.0.2"),
     dict(family=2, dst_len=26, proto=80, scope=0, type=1, flags=0, oif=None,
          gw="198.19.0.2")),
    (dict(dst="198.18.64.0/26", proto=80, oif=9, blackhole=True),
     dict(family=2, dst_len=26, proto=80, scope=0, type=6, flags=0, oif=None, gw=None)),
    (dict(dst="fd00:1::/122", proto=80, oif=9, delete=True),
     dict(family=10, dst_len=122, proto=80, scope=255, type=0, flags=0, oif=9, gw=None)),
    (dict(dst="0.0.0.0/0", proto=3, oif=4, gateway="169.254.1.1", onlink=True),
     dict(family=2, dst_len=0, proto=3, scope=0, type=1, flags=4, oif=4, gw="169.254.1.1")),
    (dict(dst="::/0", proto=0, oif=4, delete=True),
     dict(family=10, dst_len=0, proto=0, scope=255, type=0, flags=0, oif=4, gw=None)),
])
def test_route_request(kwargs: dict, want: dict) -> None:
    req = codec.route_request(**kwargs)
    delete = kwargs.get("delete", False)
    assert req.msg_type == (consts.RTM_DELROUTE if delete else consts.RTM_NEWROUTE)
    assert req.flags == (0 if delete else consts.NLM_F_CREATE | consts.NLM_F_REPLACE)
    msg = decode(rtmsg, req)
    assert {k: msg[k] for k in ("family", "dst_len", "proto", "scope", "type", "flags")} == \
        {k: want[k] for k in ("family", "dst_len", "proto", "scope", "type", "flags")}
    assert msg["table"] == consts.RT_TABLE_MAIN
    assert msg.get_attr("RTA_OIF") == want["oif"]
    assert msg.get_attr("RTA_GATEWAY") == want["gw"]
    assert msg.get_attr("RTA_DST") == (None if want["dst_len"] == 0
                                       else kwargs["dst"].split("/")[0])
    route = codec.parse_route(*body(req))
    assert route == Route(want["family"], kwargs["dst"], want["oif"] or 0, want["proto"],
                          consts.RT_TABLE_MAIN, want["scope"], want["gw"], want["type"],
                          want["flags"])
    assert route.onlink == bool(kwargs.get("onlink")) and route.blackhole == bool(
        kwargs.get("blackhole"))


@pytest.mark.parametrize("kwargs", [
    dict(ip="198.18.0.9", mac="EE:EE:EE:EE:EE:EE", ifindex=5),
    dict(ip="fd00::9", mac="ee:ee:ee:ee:ee:01", ifindex=5),
    dict(ip="fd00::9", mac=None, ifindex=5, proxy=True),
    dict(ip="198.18.0.9", mac=None, ifindex=5, delete=True),
    dict(ip="fd00::9", mac=None, ifindex=6, delete=True, proxy=True),
])
def test_neighbour_request(kwargs: dict) -> None:
    req = codec.neighbour_request(**kwargs)
    delete, proxy = kwargs.get("delete", False), kwargs.get("proxy", False)
    assert req.msg_type == (consts.RTM_DELNEIGH if delete else consts.RTM_NEWNEIGH)
    msg = decode(ndmsg, req)
    family = socket.AF_INET6 if ":" in kwargs["ip"] else socket.AF_INET
    mac = kwargs["mac"].lower() if kwargs["mac"] else None
    assert (msg["family"], msg["ifindex"], msg["state"], msg["flags"]) == (
        family, kwargs["ifindex"], consts.NUD_PERMANENT, consts.NTF_PROXY if proxy else 0)
    assert msg.get_attr("NDA_DST") == kwargs["ip"]
    assert msg.get_attr("NDA_LLADDR") == mac
    n = codec.parse_neighbour(*body(req))
    assert n == Neighbour(family, kwargs["ip"], mac, kwargs["ifindex"], consts.NUD_PERMANENT,
                          consts.NTF_PROXY if proxy else 0)
    assert n.permanent


@pytest.mark.parametrize("delete", [False, True])
def test_fdb_request(delete: bool) -> None:
    req = codec.fdb_request("66:cc:00:00:00:02", "198.19.0.2", 12, delete=delete)
    assert req.msg_type == (consts.RTM_DELNEIGH if delete else consts.RTM_NEWNEIGH)
    msg = decode(ndmsg, req)
    assert (msg["family"], msg["ifindex"], msg["state"], msg["flags"]) == (
        socket.AF_BRIDGE, 12, consts.NUD_PERMANENT, consts.NTF_SELF)
    assert msg.get_attr("NDA_LLADDR") == "66:cc:00:00:00:02"
    assert msg.get_attr("NDA_DST") == "198.19.0.2"
    assert codec.parse_fdb(*body(req)) == FdbEntry(12, "66:cc:00:00:00:02", "198.19.0.2",
                                                   consts.NUD_PERMANENT, consts.NTF_SELF)
    assert codec.parse_neighbour(*body(req)) is None  # not an IP neighbour


@pytest.mark.parametrize("ip, plen, nodad, delete", [
    ("198.18.0.7", 32, False, False), ("fd00::7", 128, True, False),
    ("fd00::7", 128, True, True), ("198.18.0.7", 32, False, True)])
def test_address_request(ip: str, plen: int, nodad: bool, delete: bool) -> None:
    req = codec.address_request(3, ip, plen, nodad=nodad, delete=delete)
    assert req.msg_type == (consts.RTM_DELADDR if delete else consts.RTM_NEWADDR)
    assert req.flags == (0 if delete else consts.NLM_F_CREATE | consts.NLM_F_EXCL)
    msg = decode(ifaddrmsg, req)
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    assert (msg["family"], msg["prefixlen"], msg["index"], msg["scope"]) == (family, plen, 3, 0)
    assert msg["flags"] == (consts.IFA_F_NODAD if nodad and not delete else 0)
    assert msg.get_attr("IFA_LOCAL") == ip and msg.get_attr("IFA_ADDRESS") == ip
    assert codec.parse_address(*body(req)) == Address(family, ip, plen, 0, 3)


@pytest.mark.parametrize("mtu, fd", [(None, None), (1400, 9)])
def test_veth_request(mtu: int | None, fd: int | None) -> None:
    req = codec.veth_request("cali1234", "eth0", mtu=mtu, peer_netns_fd=fd)
    assert req.msg_type == consts.RTM_NEWLINK
    assert req.flags == consts.NLM_F_CREATE | consts.NLM_F_EXCL
    msg = decode(ifinfmsg, req)
    assert msg.get_attr("IFLA_IFNAME") == "cali1234"
    assert msg.get_attr("IFLA_MTU") == mtu
    assert msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "veth"
    peer = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert peer.get_attr("IFLA_IFNAME") == "eth0"
    assert peer.get_attr("IFLA_MTU") == mtu
    assert peer.get_attr("IFLA_NET_NS_FD") == fd
    assert codec.parse_link(*body(req)) == Link(0, "cali1234", 0, None, mtu or 0)


@pytest.mark.parametrize("kwargs, flags, change", [
    (dict(up=True), consts.IFF_UP, consts.IFF_UP),
    (dict(up=False, mtu=1450), 0, consts.IFF_UP),
    (dict(name="eth1", up=True), consts.IFF_UP, consts.IFF_UP),
    (dict(netns_fd=11), 0, 0),
])
def test_set_link_request(kwargs: dict, flags: int, change: int) -> None:
    req = codec.set_link_request(8, **kwargs)
    assert req.msg_type == consts.RTM_SETLINK
    msg = decode(ifinfmsg, req)
    assert (msg["index"], msg["flags"], msg["change"]) == (8, flags, change)
    assert msg.get_attr("IFLA_MTU") == kwargs.get("mtu")
    assert msg.get_attr("IFLA_IFNAME") == kwargs.get("name")
    assert msg.get_attr("IFLA_NET_NS_FD") == kwargs.get("netns_fd")


def test_link_lookup_delete_and_dump_requests() -> None:
    by_name = decode(ifinfmsg, codec.link_request(name="tmp1"))
    assert (by_name["index"], by_name.get_attr("IFLA_IFNAME")) == (0, "tmp1")
    by_index = decode(ifinfmsg, codec.link_request(index=17))
    assert (by_index["index"], by_index.get_attr("IFLA_IFNAME")) == (17, None)
    delete = codec.del_link_request(17)
    assert delete.msg_type == consts.RTM_DELLINK and decode(ifinfmsg, delete)["index"] == 17
    assert codec.link_dump().msg_type == consts.RTM_GETLINK
    assert decode(rtmsg, codec.route_dump(socket.AF_INET6))["family"] == socket.AF_INET6
    proxies = decode(ndmsg, codec.neighbour_dump(proxy=True))
    assert (proxies["family"], proxies["flags"]) == (0, consts.NTF_PROXY)
    fdb = decode(ndmsg, codec.fdb_dump(12))
    assert (fdb["family"], fdb["ifindex"]) == (socket.AF_BRIDGE, 12)
    assert decode(ifaddrmsg, codec.address_dump(socket.AF_INET))["family"] == socket.AF_INET


# ---- messages pyroute2 encodes, parsed by us ----------------------------------------------

def pyroute2_bytes(msg: nl.nlmsg, msg_type: int) -> tuple[bytes, int, int]:
    msg["header"]["type"] = msg_type
    msg.encode()
    data = bytes(msg.data)
    ((_t, _f, _s, off, end),) = codec.messages(data)
    return data, off, end


def test_parse_link_from_pyroute2() -> None:
    msg = ifinfmsg()
    msg["index"], msg["flags"] = 3, consts.IFF_UP | consts.IFF_LOWER_UP
    msg["attrs"] = [("IFLA_IFNAME", "cali0001"), ("IFLA_TXQLEN", 1000), ("IFLA_MTU", 1500),
                    ("IFLA_ADDRESS", "ee:ee:ee:ee:ee:ee")]
    link = codec.parse_link(*pyroute2_bytes(msg, consts.RTM_NEWLINK))
    assert link == Link(3, "cali0001", consts.IFF_UP | consts.IFF_LOWER_UP,
                        "ee:ee:ee:ee:ee:ee", 1500)
    assert link.up and link.admin_up
    assert codec.parse_link(*pyroute2_bytes(msg, consts.RTM_NEWLINK), detail=False) == Link(
        3, "cali0001", consts.IFF_UP | consts.IFF_LOWER_UP)  # name, index and flags only
    assert Link(3, "x", consts.IFF_UP).admin_up and not Link(3, "x", consts.IFF_UP).up
    nameless = ifinfmsg()
    nameless["attrs"] = [("IFLA_MTU", 1500)]
    assert codec.parse_link(*pyroute2_bytes(nameless, consts.RTM_NEWLINK)) is None


def test_parse_route_from_pyroute2() -> None:
    msg = rtmsg()
    msg["family"], msg["dst_len"], msg["table"], msg["proto"] = socket.AF_INET6, 64, 252, 12
    msg["type"], msg["scope"] = consts.RTN_UNICAST, 0
    msg["attrs"] = [("RTA_TABLE", 1000), ("RTA_DST", "fd00:1::"), ("RTA_GATEWAY", "fd00::1"),
                    ("RTA_OIF", 4), ("RTA_PRIORITY", 32)]
    assert codec.parse_route(*pyroute2_bytes(msg, consts.RTM_NEWROUTE)) == Route(
        socket.AF_INET6, "fd00:1::/64", 4, 12, 1000, 0, "fd00::1", consts.RTN_UNICAST, 0)
    default = rtmsg()
    default["family"], default["table"] = socket.AF_INET, consts.RT_TABLE_MAIN
    default["attrs"] = [("RTA_GATEWAY", "198.18.0.1")]
    route = codec.parse_route(*pyroute2_bytes(default, consts.RTM_NEWROUTE))
    assert route is not None and route.dst == "0.0.0.0/0"
    other = rtmsg()
    other["family"] = socket.AF_BRIDGE
    assert codec.parse_route(*pyroute2_bytes(other, consts.RTM_NEWROUTE)) is None


def test_parse_neighbour_and_address_from_pyroute2() -> None:
    msg = ndmsg()
    msg["family"], msg["ifindex"], msg["state"] = socket.AF_INET, 9, 0x02  # NUD_REACHABLE
    msg["attrs"] = [("NDA_DST", "198.18.0.3"), ("NDA_LLADDR", "02:00:00:00:00:03"),
                    ("NDA_PROBES", 1)]
    n = codec.parse_neighbour(*pyroute2_bytes(msg, consts.RTM_NEWNEIGH))
    assert n == Neighbour(socket.AF_INET, "198.18.0.3", "02:00:00:00:00:03", 9, 0x02, 0)
    assert not n.permanent
    addr = ifaddrmsg()
    addr["family"], addr["prefixlen"], addr["scope"], addr["index"] = socket.AF_INET6, 64, 253, 2
    addr["attrs"] = [("IFA_ADDRESS", "fe80::1")]  # IPv6 sends IFA_ADDRESS only
    assert codec.parse_address(*pyroute2_bytes(addr, consts.RTM_NEWADDR)) == Address(
        socket.AF_INET6, "fe80::1", 64, 253, 2)


# ---- messages, attributes, errors ---------------------------------------------------------

def test_messages_of_a_datagram_and_error_codes() -> None:
    ack = codec.HEADER.pack(36, consts.NLMSG_ERROR, 0, 5, 0) + (-errno.EEXIST).to_bytes(
        4, "little", signed=True) + codec.HEADER.pack(16, consts.RTM_NEWROUTE, 0, 5, 0)
    done = codec.HEADER.pack(20, consts.NLMSG_DONE, consts.NLM_F_DUMP_INTR, 6, 0) + b"\0" * 4
    data = ack + done + b"\x01\x02"  # a truncated tail is ignored
    found = list(codec.messages(data))
    assert [(t, f, s) for t, f, s, _o, _e in found] == [
        (consts.NLMSG_ERROR, 0, 5), (consts.NLMSG_DONE, consts.NLM_F_DUMP_INTR, 6)]
    assert codec.error_code(data, found[0][3]) == errno.EEXIST
    assert found[1][3] == len(ack) + 16


def test_attributes_are_padded_and_walk_back() -> None:
    payload = codec.attr(7, b"abcde") + codec.attr(3 | 0x8000, b"") + codec.attr(4, b"\1\2\3\4")
    assert len(codec.attr(7, b"abcde")) == 12
    assert list(codec.attrs(payload, 0, len(payload))) == [
        (7, b"abcde"), (3, b""), (4, b"\1\2\3\4")]  # the NLA_F_NESTED bit is masked off


def test_netlink_error_is_an_oserror_carrying_the_errno() -> None:
    exc = NetlinkError(errno.EEXIST)
    assert isinstance(exc, OSError)
    assert exc.code == exc.errno == errno.EEXIST
    assert str(exc) == "File exists"
    assert str(NetlinkError(errno.ENOBUFS, "lost")) == "lost"
    assert codec.errno_text(errno.EACCES) == "EACCES (Permission denied)"
