"""Traffic probes run inside a workload's namespace (`ip netns exec NS python agent.py ...`).

A stand-alone script (standard library only, nothing from the project is imported), so
it starts fast in any namespace:

  tcp-sink PORT         accept TCP streams on PORT (IPv4 and IPv6); on SIGTERM print JSON:
                        records received, the longest gap between two arrivals (ms),
                        connections accepted
  tcp-source ADDR PORT INTERVAL
                        send a 16-byte record every INTERVAL seconds over one connection;
                        on a broken connection, reconnect (counted); on SIGTERM print JSON:
                        records sent, reconnects, the errors seen
  http-status URL       print the HTTP status of GET URL (0 if it cannot connect)
  icmp6-send TYPE IFNAME COUNT
                        send COUNT ICMPv6 messages of TYPE (134 router advertisement,
                        135 neighbour solicitation, 128 echo request) to ff02::1 on IFNAME,
                        hop limit 255 (what a hostile workload with CAP_NET_RAW can do)
  icmp6-listen SECONDS  print "ready", then after SECONDS a JSON list of [type, ifname] of
                        every ICMPv6 message this namespace delivered locally (a raw socket
                        sees a packet only after the INPUT chain accepted it)

Times are CLOCK_MONOTONIC; gaps are measured at the receiver, where a user feels them.
"""

from __future__ import annotations

import fcntl
import json
import selectors
import signal
import socket
import struct
import sys
import termios
import time
import urllib.error
import urllib.request

RECORD = struct.Struct("!qd")  # sequence number, send time
_stop = False


def _on_term(signum: int, frame: object) -> None:
    global _stop
    _stop = True


def tcp_sink(port: int) -> None:
    sel = selectors.DefaultSelector()
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", port))
    listener.listen(16)
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ)
    buffers: dict[socket.socket, bytes] = {}
    records = 0
    connections = 0
    last: float | None = None
    max_gap = 0.0
    print("ready", flush=True)
    while not _stop:
        for key, _ in sel.select(timeout=0.1):
            sock = key.fileobj
            if sock is listener:
                conn, _addr = listener.accept()
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ)
                buffers[conn] = b""
                connections += 1
                continue
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                sock.close()
                buffers.pop(sock, None)
                continue
            now = time.monotonic()
            buf = buffers[sock] + data
            n = len(buf) // RECORD.size
            if n:
                records += n
                if last is not None:
                    max_gap = max(max_gap, now - last)
                last = now
            buffers[sock] = buf[n * RECORD.size:]
    print(json.dumps({"records": records, "max_gap_ms": round(max_gap * 1000, 1),
                      "connections": connections}), flush=True)


def tcp_source(addr: str, port: int, interval: float) -> None:
    sent = 0
    reconnects = -1
    errors: list[str] = []
    sock: socket.socket | None = None
    print("ready", flush=True)
    next_send = time.monotonic()
    while not _stop:
        if sock is None:
            try:
                sock = socket.create_connection((addr, port), timeout=1.0)
                sock.settimeout(1.0)
                reconnects += 1
            except OSError as exc:
                errors.append(f"connect: {exc}"[:100])
                sock = None
                time.sleep(interval)
                continue
        try:
            sock.sendall(RECORD.pack(sent, time.monotonic()))
            sent += 1
        except OSError as exc:
            errors.append(f"send: {exc}"[:100])
            sock.close()
            sock = None
            continue
        next_send += interval
        time.sleep(max(0.0, next_send - time.monotonic()))
    if sock is not None:
        # Wait (bounded) until the peer has acknowledged everything sent, so the sink's
        # count is final: after an outage TCP retransmits on a backed-off timer.
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            try:
                unacked = struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ,
                                                         b"\0\0\0\0"))[0]
            except OSError:
                break
            if unacked == 0:
                break
            time.sleep(0.05)
        sock.close()
    print(json.dumps({"sent": sent, "reconnects": max(reconnects, 0),
                      "errors": errors[:10]}), flush=True)


def http_status(url: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - local health URL
            print(resp.status)
    except urllib.error.HTTPError as exc:
        print(exc.code)
    except OSError:
        print(0)


def icmp6_send(typ: int, ifname: str, count: int) -> None:
    ifindex = socket.if_nametoindex(ifname)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
    if typ == 134:  # RA: default router for 1800 s, prefix fd00:dead::/64 (autoconf)
        prefix = socket.inet_pton(socket.AF_INET6, "fd00:dead::")
        body = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
        body += struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0) + prefix
    elif typ == 135:  # NS for fe80::1 (the workload's gateway)
        body = struct.pack("!BBHI", 135, 0, 0, 0) + socket.inet_pton(socket.AF_INET6, "fe80::1")
    else:
        body = struct.pack("!BBHHH", typ, 0, 0, 1, 1)
    for _ in range(count):
        sock.sendto(body, ("ff02::1", 0, 0, ifindex))  # the kernel fills the checksum
        time.sleep(0.02)


def icmp6_listen(seconds: float) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    sock.settimeout(0.2)
    print("ready", flush=True)
    seen: list[list[object]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and not _stop:
        try:
            data, anc, _flags, _addr = sock.recvmsg(2048, 256)
        except TimeoutError:
            continue
        ifname = "?"
        for level, kind, payload in anc:
            if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                ifname = socket.if_indextoname(struct.unpack("16sI", payload[:20])[1])
        if data:
            seen.append([data[0], ifname])
    print(json.dumps(seen), flush=True)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    if argv[:1] == ["tcp-sink"]:
        tcp_sink(int(argv[1]))
    elif argv[:1] == ["tcp-source"]:
        tcp_source(argv[1], int(argv[2]), float(argv[3]))
    elif argv[:1] == ["http-status"]:
        http_status(argv[1])
    elif argv[:1] == ["icmp6-send"]:
        icmp6_send(int(argv[1]), argv[2], int(argv[3]))
    elif argv[:1] == ["icmp6-listen"]:
        icmp6_listen(float(argv[1]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
