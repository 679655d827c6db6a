"""The benchmarks' packet stopwatch (bench.probe) in real namespaces: it reports the first
packet only once the path exists, on the clock the benchmark reads, with the probes that
went unanswered before it; and it sees routes appear in another namespace's kernel."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bench.probe import Prober
from netsim.netns import Namespace, namespace, veth

pytestmark = pytest.mark.root


@pytest.fixture
def pair() -> Iterator[tuple[Namespace, Namespace]]:
    """a (198.18.5.1) -- b (198.18.5.2); a routes 198.18.6.0/24 via b, nothing there yet."""
    with namespace("pbt-a") as a, namespace("pbt-b") as b:
        veth(a, "va", b, "vb")
        a.ip("addr", "add", "198.18.5.1/24", "dev", "va")
        b.ip("addr", "add", "198.18.5.2/24", "dev", "vb")
        a.ip("route", "add", "198.18.6.0/24", "via", "198.18.5.2")
        b.ip("route", "add", "default", "via", "198.18.5.1")
        a.exec("ping", "-c", "1", "-w", "5", "198.18.5.2")  # ARP resolved
        yield a, b


def test_first_packet_is_reported_only_after_the_path_opens(
        pair: tuple[Namespace, Namespace]) -> None:
    a, b = pair
    with Prober(interval=0.002) as prober:
        prober.command("udp_sender", ns=a.name)
        prober.command("udp_sink", ns=b.name, port=9999)
        prober.command("icmp", ns=a.name)
        prober.probe("u", "udp", "198.18.6.1", 9999)
        prober.probe("i", "icmp", "198.18.6.1")
        with pytest.raises(TimeoutError):
            prober.reached("u", 0.2)  # nothing answers yet: probes are lost
        before = time.monotonic()
        b.ip("addr", "add", "198.18.6.1/32", "dev", "lo")
        for ident in ("u", "i"):
            first = prober.reached(ident, 10)
            assert first["t"] > before  # one clock: the benchmark's and the prober's
            assert first["sent"] <= first["t"]
            assert first["unanswered_before"] >= 10  # ~100 probes in the 0.2 s above
            assert first["first_sent"] < before


def test_route_events_carry_destination_and_kernel_time(
        pair: tuple[Namespace, Namespace]) -> None:
    a, b = pair
    with Prober() as prober:
        prober.command("routes", ns=b.name, host="b", proto=12)
        b.ip("route", "add", "198.18.78.0/26", "dev", "vb", "proto", "4")  # not BIRD's
        before = time.monotonic()
        b.ip("route", "add", "198.18.77.0/26", "dev", "vb", "proto", "12")
        assert prober.wait_routes(lambda rs: any(r["dst"] == "198.18.77.0/26" for r in rs), 10)
        after = time.monotonic()
        (event,) = prober.routes
        assert event["host"] == "b" and before < event["t"] < after


def test_link_events_report_the_first_carrier_up_of_matching_interfaces(
        pair: tuple[Namespace, Namespace]) -> None:
    a, b = pair
    with Prober() as prober:
        prober.command("links", ns=b.name, host="b", prefix="tl")
        b.ip("link", "add", "tl0", "type", "veth", "peer", "name", "xp0")
        b.ip("link", "add", "other0", "type", "veth", "peer", "name", "other1")
        b.ip("link", "set", "other0", "up")
        b.ip("link", "set", "other1", "up")  # carrier up, but not named tl*
        b.ip("link", "set", "tl0", "up")  # admin up, no carrier yet
        assert not prober.wait_links(bool, 0.2)  # nothing to report yet
        before = time.monotonic()
        b.ip("link", "set", "xp0", "up")
        b.ip("link", "set", "tl0", "mtu", "1400")  # another event while up: not reported
        b.ip("link", "add", "tl1", "type", "veth", "peer", "name", "xp1")
        b.ip("link", "set", "xp1", "up")
        b.ip("link", "set", "tl1", "up")
        assert prober.wait_links(lambda ls: len(ls) >= 2, 10)
        after = time.monotonic()
        assert sorted(e["name"] for e in prober.links) == ["tl0", "tl1"]
        tl0 = next(e for e in prober.links if e["name"] == "tl0")
        assert tl0["host"] == "b" and before < tl0["t"] < after
