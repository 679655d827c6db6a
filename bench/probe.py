"""The benchmarks' stopwatch at the packet: a prober process that is already running when
the change under test is made, and reports on CLOCK_MONOTONIC (the clock every process on
the machine shares, namespaces included) when the change became visible to a packet or in
a kernel routing table.

Owns one process (`python -m bench.probe`, started by `Prober`) that opens sockets in any
network namespace (setns(2) on /run/netns/NAME while creating each socket, then back) and
serves, on one thread with one selector:
- UDP probes: a sender socket in a peer namespace sends one datagram ("ID SEQ") every
  `interval` to every target being probed; a sink socket (bound to 0.0.0.0:PORT in the
  workload's namespace) receives them. The first datagram that arrives is the first
  packet that passed routing and the endpoint's policy; it is reported with its arrival
  time, its send time and how many probes to that target went unanswered before it.
- ICMP echo probes from a raw socket in a pinging workload's namespace: the first echo
  reply from the target is reported likewise (a reply needs both directions).
- route monitors: a NETLINK_ROUTE socket per host namespace subscribed to IPv4 route
  events; every new route of the given protocol (BIRD's, 12) is reported with the time
  the kernel announced it.
- link monitors: a NETLINK_ROUTE socket per host namespace subscribed to link events;
  the first time each interface whose name starts with a prefix has its carrier up
  (IFF_LOWER_UP: both ends of a veth up) is reported with the kernel's announcement time.

Protocol: JSON lines. Commands on stdin ({"op": "udp_sender"|"udp_sink"|"icmp"|"routes"|
"links"|"probe"|"stop"|"sync", ...}); events on stdout ({"ev": "ready"|"ok"|"reached"|
"route"|"link"}).
Each command is acknowledged with {"ev": "ok", "seq": N} so the caller knows a socket is
open, or a probe running, before it makes the change it times.

Leaves to the benchmarks: the namespaces, addresses and the changes being timed, and
comparing these times with their own (taken with `time.monotonic()`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

CLONE_NEWNET = 0x40000000
RTMGRP_LINK = 0x1
RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWLINK = 16
IFLA_IFNAME = 3
IFF_LOWER_UP = 0x10000
RTM_NEWROUTE = 24
RTA_DST = 1
RTPROT_BIRD = 12
ICMP_ECHO, ICMP_ECHOREPLY = 8, 0

_libc = ctypes.CDLL(None, use_errno=True)


def _in_netns(ns: str, make: Callable[[], socket.socket]) -> socket.socket:
    """A socket created inside network namespace `ns` (it stays there)."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
        try:
            return make()
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the probe's namespace")
    finally:
        os.close(target)
        os.close(own)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo_request(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    payload = b"calico-bench-probe"
    return struct.pack("!BBHHH", ICMP_ECHO, 0, _checksum(header + payload), ident,
                       seq) + payload


@dataclass
class _Target:
    ident: str
    kind: str  # "udp" or "icmp"
    addr: str
    port: int
    sent: list[float] = field(default_factory=list)  # send time of probe number i


class _Server:
    """The probe process: sockets, a send tick and one selector."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.sel = selectors.DefaultSelector()
        self.sender: socket.socket | None = None
        self.icmp: socket.socket | None = None
        self.targets: dict[str, _Target] = {}
        self.icmp_seq: dict[int, tuple[str, int]] = {}  # echo seq -> (target, probe no.)
        self.next_seq = 0
        self.ident = os.getpid() & 0xFFFF
        self.buffer = b""
        self.next_tick = 0.0

    def emit(self, event: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    # --- commands ---------------------------------------------------------------------

    def command(self, cmd: dict[str, Any]) -> None:
        op = cmd["op"]
        if op == "udp_sender":
            self.sender = _in_netns(cmd["ns"], lambda: socket.socket(socket.AF_INET,
                                                                     socket.SOCK_DGRAM))
            self.sender.setblocking(False)
        elif op == "udp_sink":
            def sink() -> socket.socket:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("0.0.0.0", int(cmd["port"])))
                return s
            s = _in_netns(cmd["ns"], sink)
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, self.on_udp)
        elif op == "icmp":
            self.icmp = _in_netns(cmd["ns"], lambda: socket.socket(
                socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
            self.icmp.setblocking(False)
            self.sel.register(self.icmp, selectors.EVENT_READ, self.on_icmp)
        elif op == "routes":
            def monitor() -> socket.socket:
                s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
                s.bind((0, RTMGRP_IPV4_ROUTE))
                return s
            s = _in_netns(cmd["ns"], monitor)
            s.setblocking(False)
            host, proto = cmd["host"], int(cmd.get("proto", RTPROT_BIRD))
            self.sel.register(s, selectors.EVENT_READ,
                              lambda sock: self.on_netlink(sock, host, proto))
        elif op == "links":
            def link_monitor() -> socket.socket:
                s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
                s.bind((0, RTMGRP_LINK))
                return s
            s = _in_netns(cmd["ns"], link_monitor)
            s.setblocking(False)
            host, prefix = cmd["host"], str(cmd["prefix"])
            up: set[str] = set()
            self.sel.register(s, selectors.EVENT_READ,
                              lambda sock: self.on_links(sock, host, prefix, up))
        elif op == "probe":
            if not self.targets:
                self.next_tick = time.monotonic() + self.interval
            self.targets[cmd["id"]] = _Target(cmd["id"], cmd["kind"], cmd["addr"],
                                              int(cmd.get("port", 0)))
            self.send(self.targets[cmd["id"]])  # the first probe goes out at once
        elif op == "stop":
            self.targets.pop(cmd["id"], None)
        elif op != "sync":
            raise ValueError(f"unknown probe command {op!r}")
        self.emit({"ev": "ok", "seq": cmd.get("seq")})

    def on_stdin(self, fd: int) -> bool:
        data = os.read(fd, 65536)
        if not data:
            return False
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.strip():
                self.command(json.loads(line))
        return True

    # --- probes -----------------------------------------------------------------------

    def send(self, t: _Target) -> None:
        number = len(t.sent)
        now = time.monotonic()
        try:
            if t.kind == "udp":
                assert self.sender is not None, "udp_sender first"
                self.sender.sendto(f"{t.ident} {number}".encode(), (t.addr, t.port))
            else:
                assert self.icmp is not None, "icmp first"
                seq = self.next_seq
                self.next_seq = (seq + 1) & 0xFFFF
                self.icmp_seq[seq] = (t.ident, number)
                self.icmp.sendto(_echo_request(self.ident, seq), (t.addr, 0))
        except (BlockingIOError, OSError):
            pass  # no route yet, buffer full: a probe lost like any other packet
        t.sent.append(now)

    def reached(self, ident: str, number: int, now: float) -> None:
        t = self.targets.pop(ident, None)
        if t is None or number >= len(t.sent):
            return
        self.emit({"ev": "reached", "id": ident, "t": now, "sent": t.sent[number],
                   "first_sent": t.sent[0], "unanswered_before": number,
                   "probes": len(t.sent)})

    def on_udp(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(512)
            except BlockingIOError:
                return
            now = time.monotonic()
            try:
                ident, number = data.decode().rsplit(" ", 1)
                self.reached(ident, int(number), now)
            except ValueError:
                continue

    def on_icmp(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                return
            now = time.monotonic()
            ihl = (data[0] & 0x0F) * 4
            if len(data) < ihl + 8:
                continue
            kind, _, _, ident, seq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if kind == ICMP_ECHOREPLY and ident == self.ident and seq in self.icmp_seq:
                target, number = self.icmp_seq.pop(seq)
                self.reached(target, number, now)

    def _messages(self, sock: socket.socket, host: str
                  ) -> Iterator[tuple[float, bytes, int, int, int]]:
        """Each netlink message waiting on `sock`: (time read, buffer, offset, length,
        type); a lost-events error (ENOBUFS) is reported rather than guessed around."""
        while True:
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError as exc:
                self.emit({"ev": "routes_lost", "host": host, "error": str(exc)})
                return
            now = time.monotonic()
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if length < 16:
                    break
                yield now, data, offset, length, kind
                offset += (length + 3) & ~3

    @staticmethod
    def _attrs(data: bytes, pos: int, end: int) -> Iterator[tuple[int, bytes]]:
        """The (type, payload) attributes from `pos` to `end`."""
        while pos + 4 <= end:
            alen, atype = struct.unpack_from("=HH", data, pos)
            if alen < 4:
                return
            yield atype, data[pos + 4:pos + alen]
            pos += (alen + 3) & ~3

    def on_netlink(self, sock: socket.socket, host: str, proto: int) -> None:
        for now, data, offset, length, kind in self._messages(sock, host):
            if kind != RTM_NEWROUTE or length < 28:
                continue
            family, dst_len, _, _, table, rproto = struct.unpack_from("=BBBBBB", data,
                                                                      offset + 16)
            if family != socket.AF_INET or rproto != proto:
                continue
            dst = "0.0.0.0"
            for atype, payload in self._attrs(data, offset + 28, offset + length):
                if atype == RTA_DST:
                    dst = socket.inet_ntoa(payload[:4])
            self.emit({"ev": "route", "host": host, "dst": f"{dst}/{dst_len}",
                       "table": table, "t": now})

    def on_links(self, sock: socket.socket, host: str, prefix: str, up: set[str]) -> None:
        """Report the first carrier-up of each interface named `prefix`* (`up`: those
        reported already)."""
        for now, data, offset, length, kind in self._messages(sock, host):
            if kind != RTM_NEWLINK or length < 32:
                continue
            flags = struct.unpack_from("=I", data, offset + 24)[0]
            name = ""
            for atype, payload in self._attrs(data, offset + 32, offset + length):
                if atype == IFLA_IFNAME:
                    name = payload.split(b"\0")[0].decode()
            if flags & IFF_LOWER_UP and name.startswith(prefix) and name not in up:
                up.add(name)
                self.emit({"ev": "link", "host": host, "name": name, "t": now})

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        stdin = sys.stdin.fileno()
        self.sel.register(stdin, selectors.EVENT_READ, None)
        self.emit({"ev": "ready"})
        while True:
            timeout = max(0.0, self.next_tick - time.monotonic()) if self.targets else None
            for key, _ in self.sel.select(timeout):
                if key.data is None:
                    if not self.on_stdin(stdin):
                        return
                else:
                    key.data(key.fileobj)
            now = time.monotonic()
            if self.targets and now >= self.next_tick:
                for t in list(self.targets.values()):
                    self.send(t)
                self.next_tick += self.interval
                if self.next_tick <= now:  # fell behind: no burst to catch up
                    self.next_tick = now + self.interval


class Prober:
    """The benchmark's handle on a running probe process.

    `command()` waits for the acknowledgement; `reached(id)` waits for a target's first
    packet; `routes` collects every route event (host, dst, t) as it arrives, `links`
    every first carrier-up (host, name, t).
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.probe", "--interval", str(interval)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.interval = interval
        self._cond = threading.Condition()
        self._acks: set[int] = set()
        self._reached: dict[str, dict[str, Any]] = {}
        self.routes: list[dict[str, Any]] = []
        self.links: list[dict[str, Any]] = []
        self.lost: list[dict[str, Any]] = []
        self._seq = 0
        self._write = threading.Lock()  # commands may come from several threads
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, name="bench-probe", daemon=True)
        self._reader.start()
        if not self._ready.wait(30):
            self.close()
            raise RuntimeError("the probe process did not start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            with self._cond:
                ev = event["ev"]
                if ev == "ready":
                    self._ready.set()
                elif ev == "ok":
                    self._acks.add(event["seq"])
                elif ev == "reached":
                    self._reached[event["id"]] = event
                elif ev == "route":
                    self.routes.append(event)
                elif ev == "link":
                    self.links.append(event)
                elif ev == "routes_lost":
                    self.lost.append(event)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def command(self, op: str, **args: Any) -> None:
        with self._cond:
            self._seq += 1
            seq = self._seq
        assert self.proc.stdin is not None
        with self._write:
            self.proc.stdin.write(json.dumps({"op": op, "seq": seq, **args}) + "\n")
            self.proc.stdin.flush()
        with self._cond:
            if not self._cond.wait_for(lambda: seq in self._acks or self.proc.poll() is not None,
                                       30):
                raise TimeoutError(f"probe command {op} not acknowledged")
            if seq not in self._acks:
                raise RuntimeError(f"the probe process exited (code {self.proc.returncode})")

    def probe(self, ident: str, kind: str, addr: str, port: int = 0) -> None:
        """Start probing `addr` (udp: to `port`; icmp: echo) until it answers."""
        self.command("probe", id=ident, kind=kind, addr=addr, port=port)

    def reached(self, ident: str, timeout: float) -> dict[str, Any]:
        """The first arrival for `ident` ({"t", "sent", "unanswered_before", ...})."""
        with self._cond:
            if not self._cond.wait_for(lambda: ident in self._reached
                                       or self.proc.poll() is not None, timeout):
                raise TimeoutError(f"no probe reached {ident} within {timeout:.0f} s")
            if ident not in self._reached:
                raise RuntimeError(f"the probe process exited (code {self.proc.returncode})")
            return self._reached[ident]

    def wait_routes(self, condition: Callable[[list[dict[str, Any]]], bool],
                    timeout: float) -> bool:
        """Wait until `condition(routes seen so far)` holds; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: condition(self.routes), timeout)

    def wait_links(self, condition: Callable[[list[dict[str, Any]]], bool],
                   timeout: float) -> bool:
        """Wait until `condition(link events seen so far)` holds; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: condition(self.links), timeout)

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="the benchmarks' packet-level stopwatch")
    p.add_argument("--interval", type=float, default=0.002,
                   help="seconds between probes to one target (default 0.002)")
    args = p.parse_args(argv)
    _Server(args.interval).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
