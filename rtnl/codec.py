"""rtnetlink messages as bytes and back: pure encoding and decoding, no socket.

Owns:
- `NetlinkError`, the one error of a netlink conversation (an `OSError` whose `errno`,
  also readable as `code`, is the kernel's errno; ENOBUFS: messages were lost, the
  caller must resync; EMSGSIZE: a datagram did not fit the read buffer; ETIMEDOUT: the
  kernel did not answer), and `errno_text`;
- the typed values read back: `Link`, `Route`, `Neighbour`, `FdbEntry`, `Address`;
- `Request` (message type, extra header flags, body after the header) and its builders:
  links (look up, a veth pair, set state/MTU/name/namespace, delete), addresses, routes
  (link scope, via a gateway, onlink, blackhole; create-or-replace or delete),
  neighbour and proxy neighbour entries, VXLAN FDB entries, and the dump requests;
- `encode` (header + body), `messages` (the messages in one datagram), `error_code`
  (an NLMSG_ERROR's errno) and the parsers of link, route, neighbour, FDB and address
  messages, which read only the fields the values hold.

Parsers work on (datagram, body offset, end offset) without copying the message: a
dump of 10,000 routes is parsed where it was received.

Leaves to others: the socket, sequence numbers, batching and retries (`rtnl.sock`);
what to write and which kernel entries are whose (felix's dataplane owners,
`workload.veth`).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from typing import NamedTuple

from rtnl.consts import (
    IFA_ADDRESS,
    IFA_F_NODAD,
    IFA_LOCAL,
    IFF_LOWER_UP,
    IFF_RUNNING,
    IFF_UP,
    IFLA_ADDRESS,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_LINKINFO,
    IFLA_MTU,
    IFLA_NET_NS_FD,
    NDA_DST,
    NDA_LLADDR,
    NLA_TYPE_MASK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NTF_PROXY,
    NTF_SELF,
    NUD_PERMANENT,
    RT_SCOPE_HOST,
    RT_SCOPE_LINK,
    RT_SCOPE_NOWHERE,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTA_TABLE,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTM_SETLINK,
    RTN_BLACKHOLE,
    RTN_UNICAST,
    RTN_UNSPEC,
    RTNH_F_ONLINK,
    VETH_INFO_PEER,
)

HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family dst_len src_len tos table proto scope
#                                      type flags
NDMSG = struct.Struct("=BxxxiHBB")  # ndmsg: family, ifindex, state, flags, type
_RTA = struct.Struct("=HH")  # nlattr: len, type
_U32 = struct.Struct("=I")
_ERR = struct.Struct("=i")
_IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_FAMILY_BY_LEN = {4: socket.AF_INET, 16: socket.AF_INET6}


class NetlinkError(OSError):
    """A netlink conversation failed or the kernel refused a request: `errno` (also
    `code`) is the errno, `str()` the message."""

    def __init__(self, code: int, msg: str | None = None) -> None:
        super().__init__(code, msg or os.strerror(code))
        self.code = code

    def __str__(self) -> str:
        return str(self.strerror)


def errno_text(code: int) -> str:
    """`EACCES (Permission denied)` for an errno value."""
    return f"{errno.errorcode.get(code, str(code))} ({os.strerror(code)})"


# ---- values read back ---------------------------------------------------------------------
# NamedTuples, not dataclasses: a frozen dataclass costs ~0.7 ms to define (a CNI call
# imports this module) and more to instantiate (felix parses every route of the host).


class Link(NamedTuple):
    """An interface. `mac` and `mtu` are read only when asked for (`detail`; they sit
    behind ~20 other attributes, which a dump of 10,000 links would pay for): None and 0
    otherwise, or when the kernel sent none."""

    ifindex: int
    name: str
    flags: int
    mac: str | None = None
    mtu: int = 0

    @property
    def admin_up(self) -> bool:
        """Set up (IFF_UP), with or without carrier."""
        return bool(self.flags & IFF_UP)

    @property
    def up(self) -> bool:
        """Set up and with carrier (what routes through it need)."""
        return bool(self.flags & IFF_UP) and bool(self.flags & (IFF_LOWER_UP | IFF_RUNNING))


class Route(NamedTuple):
    """A route; `dst` is "198.18.0.1/32" or "fd00::1/128" (a default route "0.0.0.0/0")."""

    family: int
    dst: str
    oif: int
    proto: int
    table: int
    scope: int
    gateway: str | None = None
    rtype: int = RTN_UNICAST
    flags: int = 0  # rtm_flags (RTNH_F_ONLINK for an onlink gateway)

    @property
    def onlink(self) -> bool:
        return bool(self.flags & RTNH_F_ONLINK)

    @property
    def blackhole(self) -> bool:
        return self.rtype == RTN_BLACKHOLE


class Neighbour(NamedTuple):
    """An IPv4 or IPv6 neighbour (or proxy neighbour) entry."""

    family: int
    dst: str
    lladdr: str | None
    ifindex: int
    state: int
    flags: int

    @property
    def permanent(self) -> bool:
        return bool(self.state & NUD_PERMANENT)


class FdbEntry(NamedTuple):
    """A bridge forwarding entry (a VXLAN device's remote): `mac` is forwarded to `dst`
    (None when the entry has no remote address)."""

    ifindex: int
    mac: str | None
    dst: str | None
    state: int
    flags: int


class Address(NamedTuple):
    family: int
    address: str
    prefixlen: int
    scope: int
    ifindex: int


# ---- requests -----------------------------------------------------------------------------


class Request(NamedTuple):
    """One netlink request: message type, extra header flags and the body after nlmsghdr
    (the socket adds NLM_F_REQUEST and NLM_F_ACK or NLM_F_DUMP)."""

    msg_type: int
    flags: int
    body: bytes


def encode(req: Request, seq: int, flags: int) -> bytes:
    """The whole message: nlmsghdr (with `flags` added to the request's) and body."""
    return HEADER.pack(HEADER.size + len(req.body), req.msg_type, flags | req.flags, seq,
                       0) + req.body


def attr(attr_type: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    length = 4 + len(payload)
    return _RTA.pack(length, attr_type) + payload + b"\0" * ((4 - length % 4) % 4)


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _name(name: str) -> bytes:
    return attr(IFLA_IFNAME, name.encode() + b"\0")


def _lladdr(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def link_request(name: str | None = None, index: int = 0) -> Request:
    """RTM_GETLINK of one interface, by name or by index."""
    body = IFINFO.pack(0, 0, index, 0, 0)
    if name is not None:
        body += _name(name)
    return Request(RTM_GETLINK, 0, body)


def veth_request(name: str, peer: str, *, mtu: int | None = None,
                 peer_netns_fd: int | None = None) -> Request:
    """RTM_NEWLINK (EEXIST if a name is taken) of a veth pair `name` <-> `peer`, both
    down; the peer created in the namespace `peer_netns_fd` refers to, if given."""
    mtu_attr = attr(IFLA_MTU, _U32.pack(mtu)) if mtu is not None else b""
    peer_info = IFINFO.pack(0, 0, 0, 0, 0) + _name(peer) + mtu_attr
    if peer_netns_fd is not None:
        peer_info += attr(IFLA_NET_NS_FD, _U32.pack(peer_netns_fd))
    info = attr(IFLA_INFO_KIND, b"veth") + attr(IFLA_INFO_DATA,
                                                attr(VETH_INFO_PEER, peer_info))
    body = IFINFO.pack(0, 0, 0, 0, 0) + _name(name) + mtu_attr + attr(IFLA_LINKINFO, info)
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)


def set_link_request(index: int, *, up: bool | None = None, mtu: int | None = None,
                     name: str | None = None, netns_fd: int | None = None,
                     mac: str | None = None) -> Request:
    """RTM_SETLINK: up or down, MTU, a new name, into another namespace, a MAC address
    (what is None stays as it is; the kernel renames before it sets the state)."""
    flags = change = 0
    if up is not None:
        flags, change = (IFF_UP if up else 0), IFF_UP
    body = IFINFO.pack(0, 0, index, flags, change)
    if mtu is not None:
        body += attr(IFLA_MTU, _U32.pack(mtu))
    if name is not None:
        body += _name(name)
    if netns_fd is not None:
        body += attr(IFLA_NET_NS_FD, _U32.pack(netns_fd))
    if mac is not None:
        body += attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))
    return Request(RTM_SETLINK, 0, body)


def del_link_request(index: int) -> Request:
    return Request(RTM_DELLINK, 0, IFINFO.pack(0, 0, index, 0, 0))


def address_request(index: int, ip: str, prefixlen: int, *, nodad: bool = False,
                    host_scope: bool = False, delete: bool = False) -> Request:
    """RTM_NEWADDR (EEXIST if the interface has it already) or RTM_DELADDR; global scope,
    or host scope (an address the host answers for but never uses as a source)."""
    family = _family(ip)
    packed = socket.inet_pton(family, ip)
    body = (IFADDR.pack(family, prefixlen, IFA_F_NODAD if nodad and not delete else 0,
                        RT_SCOPE_HOST if host_scope else RT_SCOPE_UNIVERSE, index)
            + attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed))
    if delete:
        return Request(RTM_DELADDR, 0, body)
    return Request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)


def route_request(dst: str, *, proto: int, oif: int = 0, gateway: str | None = None,
                  onlink: bool = False, blackhole: bool = False,
                  delete: bool = False) -> Request:
    """RTM_NEWROUTE (create or replace) or RTM_DELROUTE of `dst` ("addr/len") in the
    main table, metric 0: a link-scope route out of `oif`, a route via `gateway`
    (optionally `onlink`; out of `oif`, or where the kernel finds the gateway when `oif`
    is 0), or a blackhole. A delete matches the destination, `proto` (0: any) and the
    device if given, whatever the type."""
    address, _, plen = dst.partition("/")
    family = _family(address)
    prefixlen = int(plen) if plen else (128 if family == socket.AF_INET6 else 32)
    if delete:
        scope, rtype = RT_SCOPE_NOWHERE, RTN_UNSPEC
    elif blackhole or gateway:
        scope, rtype = RT_SCOPE_UNIVERSE, RTN_BLACKHOLE if blackhole else RTN_UNICAST
    else:
        scope, rtype = RT_SCOPE_LINK, RTN_UNICAST
    flags = RTNH_F_ONLINK if onlink and not delete else 0
    body = RTMSG.pack(family, prefixlen, 0, 0, RT_TABLE_MAIN, proto, scope, rtype, flags)
    if prefixlen:
        body += attr(RTA_DST, socket.inet_pton(family, address))
    if oif and not blackhole:
        body += attr(RTA_OIF, _U32.pack(oif))
    if gateway and not delete:
        body += attr(RTA_GATEWAY, socket.inet_pton(_family(gateway), gateway))
    if delete:
        return Request(RTM_DELROUTE, 0, body)
    return Request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body)


def neighbour_request(ip: str, mac: str | None, ifindex: int, *, delete: bool = False,
                      proxy: bool = False) -> Request:
    """RTM_NEWNEIGH (create or replace; permanent, or a proxy entry) or RTM_DELNEIGH."""
    family = _family(ip)
    body = NDMSG.pack(family, ifindex, NUD_PERMANENT, NTF_PROXY if proxy else 0, 0)
    body += attr(NDA_DST, socket.inet_pton(family, ip))
    if mac and not delete:
        body += attr(NDA_LLADDR, _lladdr(mac))
    if delete:
        return Request(RTM_DELNEIGH, 0, body)
    return Request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body)


def fdb_request(mac: str, dst: str, ifindex: int, *, delete: bool = False) -> Request:
    """RTM_NEWNEIGH (create or replace: one remote per MAC) or RTM_DELNEIGH of a
    permanent FDB entry of a VXLAN device: `mac` is forwarded to the remote `dst`."""
    body = NDMSG.pack(socket.AF_BRIDGE, ifindex, NUD_PERMANENT, NTF_SELF, 0)
    body += attr(NDA_LLADDR, _lladdr(mac))
    body += attr(NDA_DST, socket.inet_pton(_family(dst), dst))
    if delete:
        return Request(RTM_DELNEIGH, 0, body)
    return Request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body)


# Dump requests (the socket adds NLM_F_DUMP).

def link_dump() -> Request:
    return Request(RTM_GETLINK, 0, IFINFO.pack(0, 0, 0, 0, 0))


def route_dump(family: int = 0) -> Request:
    return Request(RTM_GETROUTE, 0, RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))


def neighbour_dump(family: int = 0, proxy: bool = False) -> Request:
    """Neighbour entries (`proxy`: the proxy entries instead) of one family (0: all)."""
    return Request(RTM_GETNEIGH, 0, NDMSG.pack(family, 0, 0, NTF_PROXY if proxy else 0, 0))


def fdb_dump(ifindex: int) -> Request:
    return Request(RTM_GETNEIGH, 0, NDMSG.pack(socket.AF_BRIDGE, ifindex, 0, 0, 0))


def address_dump(family: int = 0) -> Request:
    return Request(RTM_GETADDR, 0, IFADDR.pack(family, 0, 0, 0, 0))


# ---- decoding -----------------------------------------------------------------------------


def messages(data: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, body offset, end offset) of each message in one datagram."""
    offset = 0
    size = len(data)
    while offset + HEADER.size <= size:
        length, msg_type, flags, seq, _pid = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            break
        yield msg_type, flags, seq, offset + HEADER.size, offset + length
        offset += (length + 3) & ~3


def error_code(data: bytes, offset: int) -> int:
    """The errno of an NLMSG_ERROR message whose body starts at `offset` (0: an ack)."""
    return -_ERR.unpack_from(data, offset)[0]


def attrs(data: bytes, offset: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each attribute between `offset` and `end`."""
    while offset + 4 <= end:
        length, attr_type = _RTA.unpack_from(data, offset)
        if length < 4:
            break
        yield attr_type & NLA_TYPE_MASK, data[offset + 4:offset + length]
        offset += (length + 3) & ~3


def _mac(raw: bytes) -> str:
    return raw.hex(":")


def parse_link(data: bytes, offset: int, end: int, detail: bool = True) -> Link | None:
    """A link message (RTM_NEWLINK/RTM_DELLINK body); None without a name. Reads the
    name, and with `detail` the MTU and MAC; stops once it has them (a link carries ~40
    attributes, stats included, and the name comes first)."""
    _family_, _type, index, flags, _change = IFINFO.unpack_from(data, offset)
    name: str | None = None
    mac: str | None = None
    mtu = 0
    missing = 3 if detail else 1
    pos = offset + IFINFO.size
    while missing and pos + 4 <= end:
        length, attr_type = _RTA.unpack_from(data, pos)
        if length < 4:
            break
        attr_type &= NLA_TYPE_MASK
        if attr_type == IFLA_IFNAME:
            name = data[pos + 4:pos + length].rstrip(b"\0").decode()
            missing -= 1
        elif attr_type == IFLA_MTU and detail:
            mtu = _U32.unpack_from(data, pos + 4)[0]
            missing -= 1
        elif attr_type == IFLA_ADDRESS and detail:
            mac = _mac(data[pos + 4:pos + length])
            missing -= 1
        pos += (length + 3) & ~3
    if name is None:
        return None
    return Link(index, name, flags, mac, mtu)


def parse_route(data: bytes, offset: int, end: int) -> Route | None:
    """An IPv4 or IPv6 route message; None for other families. (The attribute walk is
    inlined: felix parses every route of the host at each resync.)"""
    family, dst_len, _src, _tos, table, proto, scope, rtype, flags = \
        RTMSG.unpack_from(data, offset)
    if family not in _IP_FAMILIES:
        return None
    dst = gateway = None
    oif = 0
    pos = offset + RTMSG.size
    while pos + 4 <= end:
        length, attr_type = _RTA.unpack_from(data, pos)
        if length < 4:
            break
        attr_type &= NLA_TYPE_MASK
        if attr_type == RTA_DST:
            dst = socket.inet_ntop(family, data[pos + 4:pos + length])
        elif attr_type == RTA_OIF:
            oif = _U32.unpack_from(data, pos + 4)[0]
        elif attr_type == RTA_GATEWAY and length - 4 in _FAMILY_BY_LEN:
            gateway = socket.inet_ntop(_FAMILY_BY_LEN[length - 4], data[pos + 4:pos + length])
        elif attr_type == RTA_TABLE:
            table = _U32.unpack_from(data, pos + 4)[0]
        pos += (length + 3) & ~3
    if dst is None:
        dst = "0.0.0.0" if family == socket.AF_INET else "::"
    return Route(family, f"{dst}/{dst_len}", oif, proto, table, scope, gateway, rtype, flags)


def parse_neighbour(data: bytes, offset: int, end: int) -> Neighbour | None:
    """An IPv4 or IPv6 neighbour message; None for other families or without an address."""
    family, ifindex, state, flags, _type = NDMSG.unpack_from(data, offset)
    if family not in _IP_FAMILIES:
        return None
    dst = mac = None
    for attr_type, payload in attrs(data, offset + NDMSG.size, end):
        if attr_type == NDA_DST and len(payload) in _FAMILY_BY_LEN:
            dst = socket.inet_ntop(_FAMILY_BY_LEN[len(payload)], payload)
        elif attr_type == NDA_LLADDR:
            mac = _mac(payload)
    if dst is None:
        return None
    return Neighbour(family, dst, mac, ifindex, state, flags)


def parse_fdb(data: bytes, offset: int, end: int) -> FdbEntry | None:
    """A bridge (AF_BRIDGE) neighbour message; None for other families."""
    family, ifindex, state, flags, _type = NDMSG.unpack_from(data, offset)
    if family != socket.AF_BRIDGE:
        return None
    dst = mac = None
    for attr_type, payload in attrs(data, offset + NDMSG.size, end):
        if attr_type == NDA_DST and len(payload) in _FAMILY_BY_LEN:
            dst = socket.inet_ntop(_FAMILY_BY_LEN[len(payload)], payload)
        elif attr_type == NDA_LLADDR:
            mac = _mac(payload)
    return FdbEntry(ifindex, mac, dst, state, flags)


def parse_address(data: bytes, offset: int, end: int) -> Address | None:
    """An address message (IFA_LOCAL, else IFA_ADDRESS); None without either."""
    family, prefixlen, _flags, scope, index = IFADDR.unpack_from(data, offset)
    if family not in _IP_FAMILIES:
        return None
    local = address = None
    for attr_type, payload in attrs(data, offset + IFADDR.size, end):
        if attr_type == IFA_LOCAL:
            local = socket.inet_ntop(family, payload)
        elif attr_type == IFA_ADDRESS:
            address = socket.inet_ntop(family, payload)
    found = local or address
    return None if found is None else Address(family, found, prefixlen, scope, index)

