"""rtnetlink for the workload steps: the few messages a workload interface needs, over a
raw NETLINK_ROUTE socket, with the standard library only.

Owns: `RtSocket(netns)`, a socket opened inside a network namespace (setns(2) on a
short-lived thread, so only that thread ever changes namespace and the socket stays
bound to the namespace it was made in), and its requests: links (look up by name, a
veth pair, move to another namespace, rename, MTU, up, delete), addresses (add, delete,
list), neighbour entries (replace, delete, list) and routes (replace, delete, list).
Every request is acknowledged; a kernel refusal raises `OSError(errno)` naming the
request, which the caller maps onto its own errors.

Why not pyroute2 here: a CNI plugin runs once per call, and `import pyroute2` costs
~0.2-0.3 s of start-up on this hardware (its package imports every netlink family and
asyncio), more than everything else an ADD does; these messages cost ~5 ms to import
and microseconds to send. felix keeps its own bulk writer (felix/dataplane/netlink.py)
for routes and neighbours at scale.

Leaves to others: what to configure and in which order (`workload.veth`), errors in the
project's hierarchy (`workload.veth` maps errnos), namespaces' names and paths.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

# linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/veth.h, linux/neighbour.h
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP_INTR, NLM_F_DUMP = 0x10, 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
NDA_DST, NDA_LLADDR = 1, 2
IFF_UP = 0x1
NUD_PERMANENT = 0x80
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST, RT_SCOPE_NOWHERE = 0, 253, 254, 255
RTN_UNICAST = 1
RTNH_F_ONLINK = 0x4
_CLONE_NEWNET = 0x40000000

_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table proto scope type flags
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_ERR = struct.Struct("=i")


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mac: str | None
    flags: int
    mtu: int

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


@dataclass(frozen=True)
class Address:
    family: int
    address: str
    prefixlen: int
    scope: int
    index: int


@dataclass(frozen=True)
class Neighbour:
    family: int
    dst: str
    lladdr: str | None
    index: int
    state: int


@dataclass(frozen=True)
class Route:
    family: int
    dst: str  # "0.0.0.0/0", "198.18.0.1/32"
    gateway: str | None
    oif: int
    flags: int
    table: int
    scope: int


def netns_path(netns: str) -> str:
    """`/run/netns/x` for a bare name; absolute paths (e.g. /proc/PID/ns/net) as given."""
    return netns if netns.startswith("/") else f"/run/netns/{netns}"


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """`fn()` run on a thread that has joined the namespace (None: directly, here)."""
    if netns is None:
        return fn()
    import ctypes

    box: dict[str, object] = {}

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns_path(netns), os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def _attr(attr_type: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _RTA.pack(length, attr_type) + payload + b"\0" * ((4 - length % 4) % 4)


def _attrs(data: bytes, offset: int, end: int) -> Iterator[tuple[int, bytes]]:
    while offset + 4 <= end:
        length, attr_type = _RTA.unpack_from(data, offset)
        if length < 4:
            break
        yield attr_type & 0x3FFF, data[offset + 4:offset + length]
        offset += (length + 3) & ~3


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _name(name: str) -> bytes:
    return name.encode() + b"\0"


class RtSocket:
    """A NETLINK_ROUTE socket in `netns` (a /run/netns name or a path; None: this
    process's namespace). One request at a time; not thread-safe."""

    def __init__(self, netns: str | None = None, timeout: float = 10.0) -> None:
        self.netns = netns
        self._sock = in_netns(netns, lambda: socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE))
        self._sock.settimeout(timeout)
        self._sock.bind((0, 0))
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RtSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the conversation --------------------------------------------------------------------

    def _messages(self, seq: int) -> Iterator[tuple[int, int, bytes, int, int]]:
        """(type, flags, datagram, body offset, end) of the replies to `seq`, until the
        ack (raising its errno) or the end of a dump."""
        while True:
            data = self._sock.recv(1 << 16)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, mtype, flags, mseq, _pid = _HDR.unpack_from(data, offset)
                if length < _HDR.size:
                    break
                body, end = offset + _HDR.size, offset + length
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    code = -_ERR.unpack_from(data, body)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return
                if mtype == NLMSG_DONE:
                    return
                yield mtype, flags, data, body, end

    def request(self, msg_type: int, body: bytes, flags: int = 0
                ) -> list[tuple[int, bytes, int, int]]:
        """Send one request with NLM_F_ACK; its replies (type, datagram, body, end)."""
        seq = next(self._seq)
        self._sock.send(_HDR.pack(_HDR.size + len(body), msg_type,
                                  NLM_F_REQUEST | NLM_F_ACK | flags, seq, 0) + body)
        return [(t, d, b, e) for t, _f, d, b, e in self._messages(seq)]

    def dump(self, msg_type: int, body: bytes) -> list[tuple[int, bytes, int, int]]:
        """A dump request; retried when the kernel says it was interrupted."""
        for _attempt in range(5):
            seq = next(self._seq)
            self._sock.send(_HDR.pack(_HDR.size + len(body), msg_type,
                                      NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
            out, interrupted = [], False
            for mtype, flags, data, off, end in self._messages(seq):
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                out.append((mtype, data, off, end))
            if not interrupted:
                return out
        raise OSError(errno.EINTR, "netlink dump kept being interrupted")

    # --- links -------------------------------------------------------------------------------

    @staticmethod
    def _parse_link(data: bytes, off: int, end: int) -> Link:
        _fam, _type, index, flags, _change = _IFINFO.unpack_from(data, off)
        name, mac, mtu = "", None, 0
        for attr, payload in _attrs(data, off + _IFINFO.size, end):
            if attr == IFLA_IFNAME:
                name = payload.rstrip(b"\0").decode()
            elif attr == IFLA_ADDRESS:
                mac = _mac(payload)
            elif attr == IFLA_MTU:
                mtu = _U32.unpack(payload[:4])[0]
        return Link(index, name, mac, flags, mtu)

    def link(self, name: str) -> Link | None:
        """The interface called `name`, or None."""
        body = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(name))
        try:
            replies = self.request(RTM_GETLINK, body)
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        for mtype, data, off, end in replies:
            if mtype == RTM_NEWLINK:
                return self._parse_link(data, off, end)
        return None

    def link_by_index(self, index: int) -> Link | None:
        try:
            replies = self.request(RTM_GETLINK, _IFINFO.pack(0, 0, index, 0, 0))
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        for mtype, data, off, end in replies:
            if mtype == RTM_NEWLINK:
                return self._parse_link(data, off, end)
        return None

    def add_veth(self, name: str, peer: str, mtu: int | None = None,
                 peer_netns_fd: int | None = None) -> None:
        """A veth pair `name` <-> `peer`, both down; the peer here too, or created directly
        in the namespace `peer_netns_fd` refers to (no move afterwards: moving a device
        between namespaces costs the kernel far more). EEXIST if a name is taken."""
        mtu_attr = _attr(IFLA_MTU, _U32.pack(mtu)) if mtu is not None else b""
        peer_info = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(peer)) + mtu_attr
        if peer_netns_fd is not None:
            peer_info += _attr(IFLA_NET_NS_FD, _U32.pack(peer_netns_fd))
        info = (_attr(IFLA_INFO_KIND, b"veth")
                + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_info)))
        body = (_IFINFO.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(name)) + mtu_attr
                + _attr(IFLA_LINKINFO, info))
        self.request(RTM_NEWLINK, body, NLM_F_CREATE | NLM_F_EXCL)

    def set_link(self, index: int, *, up: bool | None = None, mtu: int | None = None,
                 name: str | None = None, netns_fd: int | None = None,
                 address: str | None = None) -> None:
        flags = change = 0
        if up is not None:
            flags, change = (IFF_UP if up else 0), IFF_UP
        attrs = b""
        if mtu is not None:
            attrs += _attr(IFLA_MTU, _U32.pack(mtu))
        if name is not None:
            attrs += _attr(IFLA_IFNAME, _name(name))
        if netns_fd is not None:
            attrs += _attr(IFLA_NET_NS_FD, _U32.pack(netns_fd))
        if address is not None:
            attrs += _attr(IFLA_ADDRESS, bytes.fromhex(address.replace(":", "")))
        self.request(RTM_SETLINK, _IFINFO.pack(0, 0, index, flags, change) + attrs)

    def del_link(self, index: int) -> None:
        self.request(RTM_DELLINK, _IFINFO.pack(0, 0, index, 0, 0))

    # --- addresses -----------------------------------------------------------------------------

    def _addr_body(self, index: int, ip: str, prefixlen: int, flags: int,
                   scope: int = RT_SCOPE_UNIVERSE) -> bytes:
        family = _family(ip)
        packed = socket.inet_pton(family, ip)
        return (_IFADDR.pack(family, prefixlen, flags, scope, index)
                + _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed))

    def add_address(self, index: int, ip: str, prefixlen: int, nodad: bool = False,
                    scope: int = RT_SCOPE_UNIVERSE) -> None:
        """EEXIST if the interface has it already."""
        self.request(RTM_NEWADDR, self._addr_body(index, ip, prefixlen,
                                                  IFA_F_NODAD if nodad else 0, scope),
                     NLM_F_CREATE | NLM_F_EXCL)

    def del_address(self, index: int, ip: str, prefixlen: int) -> None:
        self.request(RTM_DELADDR, self._addr_body(index, ip, prefixlen, 0))

    def addresses(self, index: int | None = None) -> list[Address]:
        out = []
        for mtype, data, off, end in self.dump(RTM_GETADDR, _IFADDR.pack(0, 0, 0, 0, 0)):
            if mtype != RTM_NEWADDR:
                continue
            family, plen, _flags, scope, ifindex = _IFADDR.unpack_from(data, off)
            if index is not None and ifindex != index:
                continue
            found: dict[int, str] = {}
            for attr, payload in _attrs(data, off + _IFADDR.size, end):
                if attr in (IFA_ADDRESS, IFA_LOCAL):
                    found[attr] = socket.inet_ntop(family, payload)
            address = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
            if address is not None:
                out.append(Address(family, address, plen, scope, ifindex))
        return out

    # --- neighbours ----------------------------------------------------------------------------

    def replace_neighbour(self, index: int, ip: str, mac: str) -> None:
        """A permanent neighbour entry `ip` -> `mac` on the interface."""
        family = _family(ip)
        body = (_NDMSG.pack(family, index, NUD_PERMANENT, 0, 0)
                + _attr(NDA_DST, socket.inet_pton(family, ip))
                + _attr(NDA_LLADDR, bytes.fromhex(mac.replace(":", ""))))
        self.request(RTM_NEWNEIGH, body, NLM_F_CREATE | NLM_F_REPLACE)

    def del_neighbour(self, index: int, ip: str) -> None:
        family = _family(ip)
        self.request(RTM_DELNEIGH, _NDMSG.pack(family, index, 0, 0, 0)
                     + _attr(NDA_DST, socket.inet_pton(family, ip)))

    def neighbours(self, index: int | None = None) -> list[Neighbour]:
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for mtype, data, off, end in self.dump(RTM_GETNEIGH,
                                                   _NDMSG.pack(family, 0, 0, 0, 0)):
                if mtype != RTM_NEWNEIGH:
                    continue
                fam, ifindex, state, _flags, _type = _NDMSG.unpack_from(data, off)
                if fam != family or (index is not None and ifindex != index):
                    continue
                dst = mac = None
                for attr, payload in _attrs(data, off + _NDMSG.size, end):
                    if attr == NDA_DST:
                        dst = socket.inet_ntop(family, payload)
                    elif attr == NDA_LLADDR:
                        mac = _mac(payload)
                if dst is not None:
                    out.append(Neighbour(family, dst, mac, ifindex, state))
        return out

    # --- routes -------------------------------------------------------------------------------

    def replace_route(self, dst: str, gateway: str, oif: int, onlink: bool = False) -> None:
        """A main-table route `dst` (CIDR) via `gateway` out of `oif`."""
        net, plen = dst.split("/")
        family = _family(net)
        body = _RTMSG.pack(family, int(plen), 0, 0, RT_TABLE_MAIN, RTPROT_BOOT,
                           RT_SCOPE_UNIVERSE, RTN_UNICAST, RTNH_F_ONLINK if onlink else 0)
        if int(plen):
            body += _attr(RTA_DST, socket.inet_pton(family, net))
        body += _attr(RTA_GATEWAY, socket.inet_pton(family, gateway))
        body += _attr(RTA_OIF, _U32.pack(oif))
        self.request(RTM_NEWROUTE, body, NLM_F_CREATE | NLM_F_REPLACE)

    def del_route(self, dst: str, oif: int) -> None:
        net, plen = dst.split("/")
        family = _family(net)
        body = _RTMSG.pack(family, int(plen), 0, 0, RT_TABLE_MAIN, 0, RT_SCOPE_NOWHERE, 0, 0)
        if int(plen):
            body += _attr(RTA_DST, socket.inet_pton(family, net))
        body += _attr(RTA_OIF, _U32.pack(oif))
        self.request(RTM_DELROUTE, body)

    def routes(self, family: int, oif: int | None = None) -> list[Route]:
        """Main-table routes of one family (out of `oif` only, if given)."""
        out = []
        body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        for mtype, data, off, end in self.dump(RTM_GETROUTE, body):
            if mtype != RTM_NEWROUTE:
                continue
            fam, dst_len, _s, _t, table, _p, scope, _type, flags = _RTMSG.unpack_from(data, off)
            if fam != family:
                continue
            dst = gateway = None
            route_oif = 0
            for attr, payload in _attrs(data, off + _RTMSG.size, end):
                if attr == RTA_DST:
                    dst = socket.inet_ntop(family, payload)
                elif attr == RTA_GATEWAY:
                    gateway = socket.inet_ntop(family, payload)
                elif attr == RTA_OIF:
                    route_oif = _U32.unpack(payload)[0]
                elif attr == RTA_TABLE:
                    table = _U32.unpack(payload)[0]
            if table != RT_TABLE_MAIN or (oif is not None and route_oif != oif):
                continue
            if dst is None:
                dst = "0.0.0.0" if family == socket.AF_INET else "::"
            out.append(Route(family, f"{dst}/{dst_len}", gateway, route_oif, flags, table,
                             scope))
        return out
