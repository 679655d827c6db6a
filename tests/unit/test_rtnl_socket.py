"""`rtnl.sock.NetlinkSocket`'s conversation against a fake kernel (no netlink needed):
pipelined batches map each request's errno and replies back by sequence number whatever
the order, grouping and noise of the answers; windows; single requests raise; dumps are
run again when interrupted; lost messages and silence become NetlinkError."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable

import pytest

from rtnl import codec, consts
from rtnl.codec import Link, NetlinkError, Request
from rtnl.sock import RECV_SIZE, WINDOW, NetlinkSocket

HDR = struct.Struct("=IHHII")  # written out here, not taken from the code under test
NLM_F_MULTI = 0x2  # a part of a multipart answer (rtnl never needs to look)

Answer = Callable[[int, int, int, bytes], list[bytes]]  # (type, flags, seq, body) -> msgs


def msg(msg_type: int, seq: int, body: bytes = b"", flags: int = 0) -> bytes:
    data = HDR.pack(HDR.size + len(body), msg_type, flags, seq, 0) + body
    return data + b"\0" * (-len(data) % 4)


def ack(seq: int, code: int = 0) -> bytes:
    return msg(consts.NLMSG_ERROR, seq, struct.pack("=i", -code) + HDR.pack(16, 0, 0, seq, 0))


class FakeKernel:
    """The other end of a socket: parses what was sent, answers through `answer` and
    hands the answers back as datagrams of `per_datagram` messages, in `order`."""

    def __init__(self, answer: Answer, per_datagram: int = 3, reverse: bool = False) -> None:
        self.answer = answer
        self.per_datagram = per_datagram
        self.reverse = reverse
        self.sent: list[tuple[int, int, int, bytes]] = []  # (type, flags, seq, body)
        self.sends = 0
        self.datagrams: list[bytes] = []
        self.fail_recv: OSError | None = None
        self.timeout: float | None = None

    # the socket API NetlinkSocket uses
    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass

    def send(self, data: bytes | memoryview) -> int:
        data = bytes(data)
        self.sends += 1
        out: list[bytes] = []
        offset = 0
        while offset < len(data):
            length, mtype, flags, seq, _pid = HDR.unpack_from(data, offset)
            body = data[offset + HDR.size:offset + length]
            self.sent.append((mtype, flags, seq, body))
            out.extend(self.answer(mtype, flags, seq, body))
            offset += (length + 3) & ~3
        if self.reverse:
            out.reverse()
        for i in range(0, len(out), self.per_datagram):
            self.datagrams.append(b"".join(out[i:i + self.per_datagram]))
        return len(data)

    def recv_into(self, buf: bytearray, nbytes: int = 0, flags: int = 0) -> int:
        if self.fail_recv is not None:
            raise self.fail_recv
        if not self.datagrams:
            raise TimeoutError("timed out")
        data = self.datagrams.pop(0)
        fits = data[:len(buf)]  # a datagram is read whole or truncated, never split
        buf[:len(fits)] = fits
        return len(data) if flags & socket.MSG_TRUNC else len(fits)


def nl(kernel: FakeKernel) -> NetlinkSocket:
    return NetlinkSocket(sock=kernel)  # type: ignore[arg-type]


def route(i: int) -> Request:
    return codec.route_request(f"198.18.{i // 256}.{i % 256}/32", proto=80, oif=3)


def test_batch_maps_each_errno_back_in_order_across_windows() -> None:
    count = 2 * WINDOW + 7
    wanted = {i: (errno.EEXIST if i % 5 == 1 else errno.ENODEV if i % 7 == 2 else 0)
              for i in range(count)}
    dst_index = {f"198.18.{i // 256}.{i % 256}": i for i in range(count)}

    def answer(mtype: int, flags: int, seq: int, body: bytes) -> list[bytes]:
        r = codec.parse_route(body, 0, len(body))
        assert r is not None and flags & consts.NLM_F_ACK and flags & consts.NLM_F_REQUEST
        noise = msg(consts.RTM_NEWROUTE, seq + 100000)  # someone else's sequence number
        return [noise, ack(seq, wanted[dst_index[r.dst.split("/")[0]]])]

    kernel = FakeKernel(answer, per_datagram=5, reverse=True)
    results = nl(kernel).request_batch([route(i) for i in range(count)])
    assert [code for code, _ in results] == [wanted[i] for i in range(count)]
    assert all(replies == [] for _, replies in results)
    assert kernel.sends == 3  # one send per window of WINDOW requests
    seqs = [seq for _t, _f, seq, _b in kernel.sent]
    assert len(set(seqs)) == count  # every request its own sequence number


def test_batch_keeps_each_requests_replies_and_ignores_a_second_ack() -> None:
    def answer(mtype: int, flags: int, seq: int, body: bytes) -> list[bytes]:
        link = codec.parse_link(body, 0, len(body))
        assert mtype == consts.RTM_GETLINK and link is not None
        if link.name == "missing":
            return [ack(seq, errno.ENODEV)]
        reply = codec.IFINFO.pack(0, 1, 40 + seq, consts.IFF_UP, 0) + codec.attr(
            consts.IFLA_IFNAME, link.name.encode() + b"\0")
        return [msg(consts.RTM_NEWLINK, seq, reply), ack(seq), ack(seq, errno.EIO)]

    sock = nl(FakeKernel(answer, per_datagram=2))
    found = sock.get_links(["cali1", "missing", "cali2"])
    assert sorted(found) == ["cali1", "cali2"]
    assert found["cali1"].ifindex != found["cali2"].ifindex
    assert sock.link("cali1") is not None
    assert sock.link("missing") is None  # ENODEV: no such interface, not an error


def test_request_raises_the_kernels_errno() -> None:
    sock = nl(FakeKernel(lambda t, f, seq, b: [ack(seq, errno.EEXIST)]))
    with pytest.raises(NetlinkError) as info:
        sock.request(codec.veth_request("a", "b"))
    assert info.value.code == errno.EEXIST and isinstance(info.value, OSError)
    sock = nl(FakeKernel(lambda t, f, seq, b: [ack(seq, errno.EPERM)]))
    with pytest.raises(NetlinkError) as info:
        sock.link("cali1")  # only "not there" is None; anything else is raised
    assert info.value.code == errno.EPERM


def neigh_dump_answer(interrupt_first: int) -> tuple[Answer, list[int]]:
    """Answers neighbour dumps with two entries; the first `interrupt_first` dumps are
    flagged NLM_F_DUMP_INTR (the kernel's table changed while dumping)."""
    dumps: list[int] = []

    def answer(mtype: int, flags: int, seq: int, body: bytes) -> list[bytes]:
        assert mtype == consts.RTM_GETNEIGH and flags & consts.NLM_F_DUMP == consts.NLM_F_DUMP
        dumps.append(seq)
        intr = consts.NLM_F_DUMP_INTR if len(dumps) <= interrupt_first else 0
        out = []
        for i, ip in enumerate(("198.18.0.1", "198.18.0.2")):
            b = (codec.NDMSG.pack(socket.AF_INET, 4, consts.NUD_PERMANENT, 0, 0)
                 + codec.attr(consts.NDA_DST, socket.inet_aton(ip))
                 + codec.attr(consts.NDA_LLADDR, bytes([2, 0, 0, 0, 0, i])))
            out.append(msg(consts.RTM_NEWNEIGH, seq, b, NLM_F_MULTI | intr))
        return [*out, msg(consts.NLMSG_DONE, seq, b"\0" * 4, NLM_F_MULTI | intr)]

    return answer, dumps


def test_an_interrupted_dump_is_run_again() -> None:
    answer, dumps = neigh_dump_answer(interrupt_first=2)
    found = nl(FakeKernel(answer, per_datagram=1)).dump_neighbours()
    assert len(dumps) == 3
    assert [(n.dst, n.lladdr) for n in found] == [("198.18.0.1", "02:00:00:00:00:00"),
                                                 ("198.18.0.2", "02:00:00:00:00:01")]
    answer, dumps = neigh_dump_answer(interrupt_first=99)
    with pytest.raises(NetlinkError) as info:
        nl(FakeKernel(answer)).dump_neighbours()
    assert info.value.code == errno.EINTR


def test_a_failed_dump_raises_its_errno() -> None:
    sock = nl(FakeKernel(lambda t, f, seq, b: [ack(seq, errno.EOPNOTSUPP)]))
    with pytest.raises(NetlinkError) as info:
        sock.dump_routes()
    assert info.value.code == errno.EOPNOTSUPP


def test_lost_messages_and_silence_are_netlink_errors() -> None:
    kernel = FakeKernel(lambda t, f, seq, b: [])
    kernel.fail_recv = OSError(errno.ENOBUFS, "No buffer space available")
    with pytest.raises(NetlinkError) as info:
        nl(kernel).request_batch([route(1)])
    assert info.value.code == errno.ENOBUFS
    with pytest.raises(NetlinkError) as info:
        nl(FakeKernel(lambda t, f, seq, b: [])).request(route(1))  # never answered
    assert info.value.code == errno.ETIMEDOUT


def test_link_events_are_parsed_and_other_messages_ignored() -> None:
    def link_msg(mtype: int, index: int, name: str) -> bytes:
        return msg(mtype, 0, codec.IFINFO.pack(0, 1, index, consts.IFF_UP, 0)
                   + codec.attr(consts.IFLA_IFNAME, name.encode() + b"\0"))

    kernel = FakeKernel(lambda t, f, seq, b: [])
    kernel.datagrams.append(link_msg(consts.RTM_NEWLINK, 5, "cali1")
                            + msg(consts.RTM_NEWADDR, 0, codec.IFADDR.pack(2, 32, 0, 0, 5))
                            + link_msg(consts.RTM_DELLINK, 6, "cali2"))
    assert nl(kernel).recv_link_events() == [
        (consts.RTM_NEWLINK, Link(5, "cali1", consts.IFF_UP)),
        (consts.RTM_DELLINK, Link(6, "cali2", consts.IFF_UP))]


def test_a_datagram_larger_than_the_buffer_is_an_error_and_the_next_one_fits() -> None:
    """The kernel's datagram is lost when it does not fit (MSG_TRUNC tells its length):
    EMSGSIZE, never a silently cut message; the buffer grows so the retry reads it."""
    padding = codec.attr(1000, b"\0" * 40000) * 2
    assert len(padding) > RECV_SIZE  # one message larger than the read buffer

    def answer(mtype: int, flags: int, seq: int, body: bytes) -> list[bytes]:
        link = (codec.IFINFO.pack(0, 1, 7, consts.IFF_UP, 0) + padding
                + codec.attr(consts.IFLA_IFNAME, b"cali1\0"))
        return [msg(consts.RTM_NEWLINK, seq, link), ack(seq)]

    kernel = FakeKernel(answer, per_datagram=1)
    sock = nl(kernel)
    with pytest.raises(NetlinkError) as info:
        sock.link("cali1")
    assert info.value.code == errno.EMSGSIZE
    assert len(kernel.datagrams) == 1  # the lost request's ack, skipped by the retry
    found = sock.link("cali1")
    assert found is not None and (found.ifindex, found.name) == (7, "cali1")
    assert kernel.datagrams == []
