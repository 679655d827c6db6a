"""Traffic between workloads while a fault happens: a 10 ms ping (IPv4 and IPv6) and a TCP
stream per pair, and what they saw: packets lost and the longest gap.

Owns: starting the flows (iputils `ping -D -i 0.01` in the source workload's namespace;
the TCP source and sink of `faults/agent.py`), stopping them, and turning their output
into `FlowFigures`. A ping's loss counts the echo requests that got no reply (the last
few in flight when it stopped are not counted); its gap is the longest time between two
consecutive replies. A TCP stream cannot lose data, so it reports records not delivered
(0 unless the connection broke), reconnects and the longest gap at the receiver.

Leaves to others: which pairs (`faults.cluster`), the faults themselves (`faults.matrix`).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

AGENT = str(Path(__file__).with_name("agent.py"))
INTERVAL = 0.01
TCP_PORT = 7471
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")
_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")
IN_FLIGHT = 3  # echo requests at the very end that may still be on their way


class Endpoint(Protocol):
    """What a flow needs of a workload."""

    @property
    def label(self) -> str: ...

    @property
    def ns_name(self) -> str: ...

    @property
    def ipv4(self) -> str: ...

    @property
    def ipv6(self) -> str | None: ...


@dataclass
class FlowFigures:
    flow: str  # "w1->w2 ping4", "w1->w2 tcp4"
    sent: int
    lost: int
    longest_gap_ms: float
    reconnects: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Flow:
    name: str

    def stop(self) -> FlowFigures:
        raise NotImplementedError


def _popen(ns: str, cmd: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


class PingFlow(_Flow):
    def __init__(self, src: Endpoint, dst: Endpoint, version: int) -> None:
        addr = dst.ipv4 if version == 4 else dst.ipv6
        assert addr is not None
        self.name = f"{src.label}->{dst.label} ping{version}"
        # A file, not a pipe: nobody reads until the end, and a full pipe would stop
        # ping (a line per reply: 64 KiB is a few seconds at 100 per second).
        self.out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", src.ns_name, "ping", f"-{version}", "-D", "-n", "-i",
             str(INTERVAL), "-W", "1", addr],
            stdout=self.out, stderr=subprocess.DEVNULL, text=True, start_new_session=True)

    def stop(self) -> FlowFigures:
        _finish(self.proc)
        self.out.seek(0)
        text = self.out.read()
        self.out.close()
        return parse_ping(self.name, text)


def parse_ping(name: str, out: str) -> FlowFigures:
    """Figures from `ping -D` output (reply lines and the closing summary)."""
    replies: dict[int, float] = {}
    for line in out.splitlines():
        m = _REPLY.match(line)
        if m:
            replies.setdefault(int(m.group(2)), float(m.group(1)))
    summary = _SUMMARY.search(out)
    sent = int(summary.group(1)) if summary else (max(replies) if replies else 0)
    counted = range(1, max(sent - IN_FLIGHT, 0) + 1)
    lost = sum(1 for seq in counted if seq not in replies)
    times = sorted(replies.values())
    gap = max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)
    if not replies and sent:
        gap = float("inf")
    return FlowFigures(name, sent, lost, round(gap * 1000, 1))


class TcpFlow(_Flow):
    def __init__(self, src: Endpoint, dst: Endpoint, port: int) -> None:
        self.name = f"{src.label}->{dst.label} tcp4"
        self.sink = _popen(dst.ns_name, [sys.executable, AGENT, "tcp-sink", str(port)])
        self._ready(self.sink)
        self.source = _popen(src.ns_name, [sys.executable, AGENT, "tcp-source", dst.ipv4,
                                           str(port), str(INTERVAL)])
        self._ready(self.source)

    @staticmethod
    def _ready(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("a traffic agent did not start")

    def stop(self) -> FlowFigures:
        sent = json.loads(_finish(self.source, signal.SIGTERM).strip().splitlines()[-1])
        time.sleep(0.2)  # acknowledged records reach the sink's count (a bounded drain)
        got = json.loads(_finish(self.sink, signal.SIGTERM).strip().splitlines()[-1])
        return FlowFigures(self.name, sent["sent"], max(sent["sent"] - got["records"], 0),
                           got["max_gap_ms"], sent["reconnects"])


class Traffic:
    """Flows between `pairs` of workloads: ping v4 (and v6 when both have IPv6) and TCP."""

    def __init__(self, pairs: Sequence[tuple[Endpoint, Endpoint]], tcp: bool = True) -> None:
        self.flows: list[_Flow] = []
        try:
            for i, (src, dst) in enumerate(pairs):
                self.flows.append(PingFlow(src, dst, 4))
                if src.ipv6 and dst.ipv6:
                    self.flows.append(PingFlow(src, dst, 6))
                if tcp:
                    self.flows.append(TcpFlow(src, dst, TCP_PORT + i))
        except BaseException:
            self.stop()
            raise
        self.started = time.monotonic()
        self.seconds = 0.0

    def stop(self) -> list[FlowFigures]:
        self.seconds = time.monotonic() - self.started
        figures = []
        for flow in self.flows:
            try:
                figures.append(flow.stop())
            except (RuntimeError, ValueError, IndexError) as exc:
                figures.append(FlowFigures(f"{flow.name} (no result: {exc})", 0, -1, -1.0))
        self.flows = []
        return figures


def summarise(figures: list[FlowFigures], seconds: float = 0.0) -> dict[str, Any]:
    """Totals over the flows: packets lost (pings), records lost (TCP), longest gap, and
    the echo requests each ping flow managed per second (100 asked; a loaded machine
    schedules ping less often)."""
    pings = [f for f in figures if " ping" in f.flow]
    tcps = [f for f in figures if " tcp" in f.flow]
    rate = sum(f.sent for f in pings) / len(pings) / seconds if pings and seconds else 0.0
    return {
        "traffic_s": round(seconds, 1),
        "ping_per_s_per_flow": round(rate, 1),
        "ping_sent": sum(f.sent for f in pings),
        "ping_lost": sum(max(f.lost, 0) for f in pings),
        "ping_longest_gap_ms": max((f.longest_gap_ms for f in pings), default=0.0),
        "tcp_records_lost": sum(max(f.lost, 0) for f in tcps),
        "tcp_longest_gap_ms": max((f.longest_gap_ms for f in tcps), default=0.0),
        "tcp_reconnects": sum(f.reconnects for f in tcps),
        "flows": [f.as_dict() for f in figures],
    }

