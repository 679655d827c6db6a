"""The NETLINK_ROUTE socket: requests, pipelined batches, dumps and link events.

Owns `NetlinkSocket`: one socket, opened inside a network namespace when asked (setns on
a short-lived thread, `rtnl.netns`), with a large receive buffer, and the conversation
on it:
- `request_batch(requests)`: every request sent with NLM_F_ACK in a few `send` calls
  (windows of 512, whose acks fit the receive buffer), each request's errno and replies
  matched back by sequence number, so 10,000 routes cost one round of syscalls rather
  than 10,000 round trips; `request(req)` is a batch of one that raises its errno;
- `dump(req)`: a dump, run again when the kernel says it was interrupted
  (NLM_F_DUMP_INTR), and the typed dumps and look-ups built on it (links, routes,
  neighbours, proxy neighbours, FDB entries, addresses);
- `recv_link_events()`: with `groups=RTMGRP_LINK`, the next datagram of link events.
Failures raise `rtnl.codec.NetlinkError` (errno in `code`): a refused request, ENOBUFS
(the receive buffer overran: events or replies were lost, resync), EMSGSIZE (a datagram
larger than the read buffer: lost, try again) and ETIMEDOUT (the kernel did not answer
within `timeout`).

Not thread-safe: one owner per socket.

Leaves to others: the bytes of each message (`rtnl.codec`), what to write, which
entries are whose and when to resync (felix's dataplane owners, `workload.veth`).
"""

from __future__ import annotations

import errno
import itertools
import socket
from collections.abc import Iterable, Sequence

from rtnl.codec import (
    Address,
    FdbEntry,
    Link,
    Neighbour,
    NetlinkError,
    Request,
    Route,
    address_dump,
    encode,
    errno_text,
    error_code,
    fdb_dump,
    link_dump,
    link_request,
    messages,
    neighbour_dump,
    parse_address,
    parse_fdb,
    parse_link,
    parse_neighbour,
    parse_route,
    route_dump,
)
from rtnl.consts import (
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NTF_PROXY,
    RTM_DELLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    SO_RCVBUFFORCE,
    SO_SNDBUFFORCE,
)
from rtnl.netns import run_in_netns

Reply = tuple[int, bytes, int, int]  # (message type, datagram, body offset, end offset)

WINDOW = 512  # requests per send: their acks (one small skb each) must fit rcvbuf
# What one recv reads. The kernel sends a dump in datagrams of at most 32 KiB (unless one
# message is larger) and everything else one message per datagram; a datagram that does
# not fit is detected (MSG_TRUNC), raised as EMSGSIZE and the buffer grown for the next.
# Not 1 MiB: a fresh 1 MiB buffer costs ~0.5 ms of page faults per socket, and the
# workload steps open a few sockets per CNI call.
RECV_SIZE = 64 * 1024
_DUMP_ATTEMPTS = 5


class NetlinkSocket:
    """A NETLINK_ROUTE socket in `netns` (a /run/netns name or a path; None: this
    process's namespace). `groups` subscribes to multicast groups (RTMGRP_LINK for link
    events). `sock` is an already open socket to talk over instead (tests)."""

    def __init__(self, netns: str | None = None, groups: int = 0,
                 rcvbuf: int = 8 * 1024 * 1024, timeout: float = 10.0,
                 sock: socket.socket | None = None) -> None:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            for opt, fallback, size in ((SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf),
                                        (SO_SNDBUFFORCE, socket.SO_SNDBUF, 1024 * 1024)):
                try:
                    s.setsockopt(socket.SOL_SOCKET, opt, size)
                except OSError:  # without CAP_NET_ADMIN: up to the sysctl maximum
                    s.setsockopt(socket.SOL_SOCKET, fallback, size)
            s.bind((0, groups))
            return s

        self.netns = netns
        self._sock = sock if sock is not None else run_in_netns(netns, make)
        self._sock.settimeout(timeout)
        self._seq = itertools.count(1)
        self._buf = bytearray(RECV_SIZE)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NetlinkSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the conversation ----------------------------------------------------------------

    def _recv(self) -> bytes:
        try:
            n = self._sock.recv_into(self._buf, 0, socket.MSG_TRUNC)
        except TimeoutError as exc:
            raise NetlinkError(errno.ETIMEDOUT, "netlink: timed out waiting for the kernel") \
                from exc
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise NetlinkError(errno.ENOBUFS,
                                   "netlink: receive buffer overrun (ENOBUFS)") from exc
            raise
        if n > len(self._buf):  # MSG_TRUNC: the datagram's real length; the rest is lost
            self._buf = bytearray(1 << (n - 1).bit_length())
            raise NetlinkError(errno.EMSGSIZE, f"netlink: a {n}-byte datagram did not fit "
                               "the receive buffer (grown for the next attempt)")
        return bytes(memoryview(self._buf)[:n])

    def _send(self, payload: bytes) -> None:
        view = memoryview(payload)
        while view:
            view = view[self._sock.send(view):]

    def request_batch(self, requests: Sequence[Request]) -> list[tuple[int, list[Reply]]]:
        """Send every request with NLM_F_ACK, pipelined; (errno, replies) per request, in
        order (errno 0: done)."""
        results: list[tuple[int, list[Reply]]] = []
        for start in range(0, len(requests), WINDOW):
            window = requests[start:start + WINDOW]
            seqs: dict[int, int] = {}
            parts = []
            for i, req in enumerate(window):
                seq = next(self._seq)
                seqs[seq] = i
                parts.append(encode(req, seq, NLM_F_REQUEST | NLM_F_ACK))
            self._send(b"".join(parts))
            codes: list[int | None] = [None] * len(window)
            replies: list[list[Reply]] = [[] for _ in window]
            pending = len(window)
            while pending:
                data = self._recv()
                for mtype, _flags, seq, off, end in messages(data):
                    idx = seqs.get(seq)
                    if idx is None:
                        continue
                    if mtype == NLMSG_ERROR:
                        if codes[idx] is None:
                            codes[idx] = error_code(data, off)
                            pending -= 1
                    else:
                        replies[idx].append((mtype, data, off, end))
            results.extend((c or 0, r) for c, r in zip(codes, replies, strict=True))
        return results

    def request(self, req: Request) -> list[Reply]:
        """One request; its replies, or NetlinkError with the kernel's errno."""
        code, replies = self.request_batch([req])[0]
        if code:
            raise NetlinkError(code)
        return replies

    def dump(self, req: Request) -> list[Reply]:
        """A dump request's messages; run again if the kernel interrupted it."""
        for _attempt in range(_DUMP_ATTEMPTS):
            seq = next(self._seq)
            self._send(encode(req, seq, NLM_F_REQUEST | NLM_F_DUMP))
            out: list[Reply] = []
            interrupted = done = False
            while not done:
                data = self._recv()
                for mtype, flags, mseq, off, end in messages(data):
                    if mseq != seq:
                        continue
                    if flags & NLM_F_DUMP_INTR:
                        interrupted = True
                    if mtype == NLMSG_DONE:
                        done = True
                        break
                    if mtype == NLMSG_ERROR:
                        code = error_code(data, off)
                        raise NetlinkError(code, f"netlink dump failed: {errno_text(code)}")
                    out.append((mtype, data, off, end))
            if not interrupted:
                return out
        raise NetlinkError(errno.EINTR, "netlink dump kept being interrupted")

    # ---- links -----------------------------------------------------------------------

    def dump_links(self, detail: bool = True) -> list[Link]:
        """Every interface (`detail=False`: without MAC and MTU, ~4x cheaper to parse)."""
        return [link for mtype, data, off, end in self.dump(link_dump())
                if mtype == RTM_NEWLINK
                and (link := parse_link(data, off, end, detail)) is not None]

    def _one_link(self, req: Request) -> Link | None:
        try:
            replies = self.request(req)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        for mtype, data, off, end in replies:
            if mtype == RTM_NEWLINK:
                return parse_link(data, off, end)
        return None

    def link(self, name: str) -> Link | None:
        """The interface called `name`, or None."""
        return self._one_link(link_request(name=name))

    def link_by_index(self, index: int) -> Link | None:
        return self._one_link(link_request(index=index))

    def get_links(self, names: Iterable[str], detail: bool = True) -> dict[str, Link]:
        """Look up interfaces by name in one pipelined batch; missing names are absent."""
        requests = [link_request(name=n) for n in names]
        found: dict[str, Link] = {}
        for code, replies in self.request_batch(requests):
            if code == 0:
                for mtype, data, off, end in replies:
                    if mtype == RTM_NEWLINK and (link := parse_link(data, off, end, detail)):
                        found[link.name] = link
        return found

    def recv_link_events(self, detail: bool = True) -> list[tuple[int, Link]]:
        """Block for the next datagram of link events: [(RTM_NEWLINK|RTM_DELLINK, Link)]."""
        data = self._recv()
        events = []
        for mtype, _flags, _seq, off, end in messages(data):
            if mtype in (RTM_NEWLINK, RTM_DELLINK) and (
                    link := parse_link(data, off, end, detail)):
                events.append((mtype, link))
        return events

    # ---- routes, neighbours, FDB, addresses ------------------------------------------------

    def dump_routes(self, family: int = 0) -> list[Route]:
        """Routes of every table, of one family (0: IPv4 and IPv6)."""
        return [route for mtype, data, off, end in self.dump(route_dump(family))
                if mtype == RTM_NEWROUTE
                and (route := parse_route(data, off, end)) is not None]

    def dump_neighbours(self, family: int = 0, proxy: bool = False) -> list[Neighbour]:
        """IPv4 and IPv6 neighbour entries of one family (0: both); `proxy=True`: the
        proxy ARP/NDP entries instead."""
        out = []
        for mtype, data, off, end in self.dump(neighbour_dump(family, proxy)):
            n = parse_neighbour(data, off, end) if mtype == RTM_NEWNEIGH else None
            if n is not None and bool(n.flags & NTF_PROXY) == proxy:
                out.append(n)
        return out

    def dump_fdb(self, ifindex: int) -> list[FdbEntry]:
        """The FDB entries of one device (a VXLAN device's remotes)."""
        out = []
        for mtype, data, off, end in self.dump(fdb_dump(ifindex)):
            e = parse_fdb(data, off, end) if mtype == RTM_NEWNEIGH else None
            if e is not None and e.ifindex == ifindex:
                out.append(e)
        return out

    def dump_addresses(self, family: int = 0) -> list[Address]:
        return [a for mtype, data, off, end in self.dump(address_dump(family))
                if mtype == RTM_NEWADDR and (a := parse_address(data, off, end)) is not None]
