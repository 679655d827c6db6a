"""The pure parts of the reliability tooling: reading ping's output into loss and gap
figures, and comparing dataplane snapshots."""

from __future__ import annotations

from faults.converge import diff_snapshots
from faults.traffic import FlowFigures, parse_ping, summarise


def _reply(t: float, seq: int) -> str:
    return f"[{t:.6f}] 64 bytes from 198.19.0.2: icmp_seq={seq} ttl=63 time=0.05 ms"


def test_ping_loss_counts_missing_replies_but_not_the_last_in_flight() -> None:
    lines = [_reply(100 + i * 0.01, i) for i in range(1, 101) if not 40 <= i < 60]
    out = "\n".join(lines) + "\n--- x ping statistics ---\n103 packets transmitted, 80 received\n"
    fig = parse_ping("a->b ping4", out)
    assert (fig.sent, fig.lost) == (103, 20)  # 40..59 lost; 101..103 were in flight
    assert fig.longest_gap_ms == 210.0  # from seq 39 (100.39 s) to seq 60 (100.60 s)


def test_ping_without_any_reply_has_an_infinite_gap() -> None:
    fig = parse_ping("a->b ping6", "10 packets transmitted, 0 received\n")
    assert fig.lost == 7 and fig.longest_gap_ms == float("inf")


def test_summary_totals_and_rate() -> None:
    figs = [FlowFigures("a->b ping4", 100, 1, 30.0), FlowFigures("a->b ping6", 50, 0, 10.0),
            FlowFigures("a->b tcp4", 100, 0, 55.0, reconnects=1)]
    s = summarise(figs, seconds=2.0)
    assert (s["ping_sent"], s["ping_lost"], s["ping_longest_gap_ms"]) == (150, 1, 30.0)
    assert (s["tcp_records_lost"], s["tcp_longest_gap_ms"], s["tcp_reconnects"]) == (0, 55.0, 1)
    assert s["ping_per_s_per_flow"] == 37.5


def test_snapshot_differences_name_the_table_and_chain() -> None:
    a = {"filter4": {"felix-to-x": ["-A felix-to-x -j DROP"]}, "ipsets": ["add felix-v4-a 1"]}
    b = {"filter4": {"felix-to-x": ["-A felix-to-x -j ACCEPT"]}, "ipsets": ["add felix-v4-a 1"]}
    assert diff_snapshots(a, a) == []
    (only,) = diff_snapshots(a, b)
    assert only.startswith("filter4 felix-to-x")
