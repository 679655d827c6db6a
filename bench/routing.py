"""Benchmark: workload-to-workload throughput and round-trip time by routing mode - native
(BGP routes), VXLAN always and VXLAN cross-subnet - against the same two namespaces joined
by a direct veth.

Runs on `netsim.fabric.RoutedFabric`: host1 and host2 on segment 198.18.1.0/24, host3 on
198.18.2.0/24 behind a plain router; the real node (felix, confd, BIRD) in each. One
IPv4 pool changes mode live. Each measured pair is two workloads made with `calicoctl
container add` (so they get the MTU calicoctl gives: 1500 in a plain pool, 1450 in a
VXLAN pool):

- native: a plain pool, host1 -> host2 (same segment; BGP routes; the router has none);
- vxlan_always: host1 -> host2 (same segment, encapsulated) and host1 -> host3 (across
  the router, encapsulated);
- vxlan_cross_subnet: host1 -> host2 (same segment: a plain felix route) and
  host1 -> host3 (across the router: encapsulated).

Baseline, in the same run, for each pair: the very same two workload namespaces joined
directly by a veth pair with /32 routes at the workloads' MTU - the best a skilled
operator could do between those two namespaces with the raw tools (no host, no fabric,
no tunnel). Ratios are mode / baseline of that pair (throughput: higher is better, so a
ratio of 0.7 means 70% of the direct link; RTT: the inverse, baseline / mode).

Clock: throughput is iperf3's own (one TCP stream, client in the first workload, server
in the second, `-t` 5 s (--quick 1 s), received bits per second over the whole run);
RTT is ping's average over 50 (--quick 10) echo requests 10 ms apart - both measured
between the workloads' own namespaces, where the user feels them. Calico's path and the
direct veth are measured in turns, 5 rounds (--quick 1), medians reported, so both see
the same background load. Goals: native >= 0.9x and VXLAN >= 0.7x of the direct veth's
throughput.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bench.common import emit, median, parser, ratio
from netsim.fabric import RoutedFabric
from netsim.netns import Namespace
from netsim.topology import Host
from netsim.wait import wait_for

POOL = "198.19.0.0/16"
DIRECT_NET = "198.18.250"  # the baseline's direct veth: 198.18.250.1 <-> .2
CONVERGE_S = 60.0
GOALS = {"native_min": 0.9, "vxlan_min": 0.7}


@dataclass
class Wl:
    host: Host
    ns: Namespace
    ip: str
    mtu: int


def add_workload(fab: RoutedFabric, host: Host, made: list[Namespace]) -> Wl:
    ns = Namespace("brt-wl")
    made.append(ns)
    fab.calicoctl(host, "container", "add", ns.name, POOL)
    fab.calicoctl(host, "container", ns.name, "profile", "set", "bench")
    addr = json.loads(ns.ip("-j", "addr", "show", "eth1").stdout)[0]
    ip = next(a["local"] for a in addr["addr_info"] if a["family"] == "inet")
    return Wl(host, ns, ip, int(addr["mtu"]))


def ping_ok(a: Wl, b: Wl) -> bool:
    return a.ns.exec("ping", "-n", "-c", "1", "-W", "1", b.ip, check=False).returncode == 0


def iperf(a: Wl, b_ip: str, b_ns: Namespace, seconds: float) -> float:
    """Received bits per second of one TCP stream from a to b_ip (server in b_ns)."""
    server = subprocess.Popen(["ip", "netns", "exec", b_ns.name, "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for(lambda: ":5201 " in b_ns.exec("ss", "-Hltn").stdout, 10,
                 message="iperf3 server listening")
        proc = a.ns.exec("iperf3", "-c", b_ip, "-t", str(seconds), "-J", check=False)
        result = json.loads(proc.stdout or "{}")
        if proc.returncode != 0 or "error" in result:
            raise RuntimeError(f"iperf3 to {b_ip} failed: {result.get('error')} "
                               f"{proc.stderr.strip()}")
        return float(result["end"]["sum_received"]["bits_per_second"])
    finally:
        server.kill()
        server.wait(5)


def rtt_ms(a: Wl, b_ip: str, count: int) -> float:
    out = a.ns.exec("ping", "-n", "-q", "-c", str(count), "-i", "0.01", b_ip).stdout
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    if m is None:
        raise RuntimeError(f"no RTT in ping output: {out}")
    return float(m.group(1))


@contextmanager
def direct_link(a: Wl, b: Wl) -> Iterator[str]:
    """The baseline: a veth straight from a's namespace to b's (at their MTU) with /32
    routes; yields b's address on it."""
    a.ns.ip("link", "add", "direct0", "mtu", str(a.mtu), "type", "veth", "peer", "name",
            "direct0", "mtu", str(b.mtu), "netns", b.ns.name)
    try:
        for wl, mine, other in ((a, 1, 2), (b, 2, 1)):
            wl.ns.ip("addr", "add", f"{DIRECT_NET}.{mine}/32", "dev", "direct0")
            wl.ns.ip("link", "set", "direct0", "up")
            wl.ns.ip("route", "add", f"{DIRECT_NET}.{other}/32", "dev", "direct0")
        yield f"{DIRECT_NET}.2"
    finally:
        a.ns.ip("link", "del", "direct0", check=False)


def measure(a: Wl, b: Wl, seconds: float, pings: int, rounds: int) -> dict[str, Any]:
    """The pair through Calico and the same two namespaces over the direct veth, taken in
    turns `rounds` times (so both see the same background load); medians."""
    wait_for(lambda: ping_ok(a, b), CONVERGE_S, message=f"{a.ip} reaching {b.ip}")
    ours: dict[str, list[float]] = {"bps": [], "rtt": []}
    base: dict[str, list[float]] = {"bps": [], "rtt": []}
    with direct_link(a, b) as direct_ip:
        for _ in range(rounds):
            for side, ip in ((ours, b.ip), (base, direct_ip)):
                side["bps"].append(iperf(a, ip, b.ns, seconds))
                side["rtt"].append(rtt_ms(a, ip, pings))

    def summary(side: dict[str, list[float]]) -> dict[str, float]:
        return {"gbit_s": round(median(side["bps"]) / 1e9, 3),
                "rtt_ms": round(median(side["rtt"]), 4)}

    mine, theirs = summary(ours), summary(base)
    return {"from": a.host.name, "to": b.host.name, "mtu": a.mtu, "rounds": rounds, **mine,
            "baseline": theirs,
            "throughput_ratio": ratio(mine["gbit_s"], theirs["gbit_s"]),
            "rtt_ratio": ratio(theirs["rtt_ms"], mine["rtt_ms"])}


def route_to(host: Host, wl: Wl) -> str:
    return host.ns.ip("route", "get", wl.ip).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    seconds, pings, rounds = (1, 10, 1) if args.quick else (5, 50, 5)
    result: dict[str, Any] = {
        "benchmark": "routing", "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "loadavg_1m_at_start": os.getloadavg()[0]},
        "baseline": {"name": "the same two workload namespaces joined directly by a veth "
                             "pair with /32 routes, at the workloads' MTU"},
        "clock": {"throughput": f"iperf3, one TCP stream, {seconds} s, received bits per "
                                "second, between the workloads' namespaces; median of "
                                f"{rounds} rounds taken in turns with the baseline",
                  "rtt": f"ping, average of {pings} echo requests 10 ms apart, between "
                         "the workloads' namespaces"},
        "goals": GOALS}
    made: list[Namespace] = []
    with RoutedFabric("brt", (2, 1), outside=False) as fab:
        try:
            h1, h2, h3 = fab.hosts
            with ThreadPoolExecutor(3) as pool:
                list(pool.map(lambda h: fab.start_node(h, with_prefix=True), fab.hosts))
            fab.calicoctl(h1, "pool", "add", POOL)
            fab.calicoctl(h1, "profile", "add", "bench")
            a, b = add_workload(fab, h1, made), add_workload(fab, h2, made)
            wait_for(lambda: f"via {h2.ip} dev eth0" in route_to(h1, b), CONVERGE_S,
                     message="host1 routing host2's workload by BGP")
            native = measure(a, b, seconds, pings, rounds)
            modes: dict[str, Any] = {"native": {"same_segment": native}}
            fab.calicoctl(h1, "pool", "add", POOL, "--vxlan")
            va, vb, vc = (add_workload(fab, h, made) for h in (h1, h2, h3))
            wait_for(lambda: "vxlan.calico" in route_to(h1, vb), CONVERGE_S,
                     message="host1 routing host2's workload through vxlan.calico")
            modes["vxlan_always"] = {"same_segment": measure(va, vb, seconds, pings, rounds),
                                     "across_router": measure(va, vc, seconds, pings, rounds)}
            fab.calicoctl(h1, "pool", "add", POOL, "--vxlan", "--vxlan-mode=cross-subnet")
            wait_for(lambda: "vxlan.calico" not in route_to(h1, vb), CONVERGE_S,
                     message="host1 routing host2's workload plainly (cross-subnet)")
            modes["vxlan_cross_subnet"] = {"same_segment": measure(va, vb, seconds, pings, rounds),
                                           "across_router": measure(va, vc, seconds, pings, rounds)}
        finally:
            for ns in made:
                ns.delete()
    result["modes"] = modes
    ratios = {"native": modes["native"]["same_segment"]["throughput_ratio"],
              "vxlan_always": modes["vxlan_always"]["same_segment"]["throughput_ratio"],
              "vxlan_always_across_router":
                  modes["vxlan_always"]["across_router"]["throughput_ratio"],
              "vxlan_cross_subnet_same_segment":
                  modes["vxlan_cross_subnet"]["same_segment"]["throughput_ratio"],
              "vxlan_cross_subnet_across_router":
                  modes["vxlan_cross_subnet"]["across_router"]["throughput_ratio"]}
    result["throughput_ratios"] = ratios
    result["goals_met"] = {
        "native": ratios["native"] >= GOALS["native_min"],
        "vxlan": min(v for k, v in ratios.items() if k.startswith("vxlan"))
        >= GOALS["vxlan_min"]}
    result["ratio"] = ratios["vxlan_always"]
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
