"""Benchmark: a Calico cluster coming up, and a new workload becoming reachable across hosts.

Runs in throw-away namespaces (`netsim.topology`: a fabric with etcd, N host
namespaces; IPv4 only) with the real stack started by `calicoctl node run --runtime=none`
(felix, confd and BIRD under supervisord in each host). Prints one JSON object.

(a) cluster up: N hosts (10; --quick 3), each already holding one workload (made with
    `calicoctl container add` + `profile set` before any node runs, so every host owns a
    block). From starting `calicoctl node run` on all hosts at once (one thread each, as
    operators would) until every host has all N-1 BGP sessions Established (`birdc show
    protocols` on its socket) and a BIRD route in its kernel to every other host's
    workload. Goal <= 20 s.
    Baseline in the same run, on the same hosts, first: plain BIRD 2 with a hand-written
    static full-mesh configuration (the same BGP timers, multihop and recursive next hops
    as Calico's template, each host announcing one blackhole /26) started on all hosts at
    once, until the same condition holds. It is the floor set by BGP itself: what is
    left of the ratio is etcd, registration, confd's render, supervisord and felix.
(b) workload reachable: 50 workloads (--quick 5) added one after the other, round-robin on
    hosts 2..N, from a pool with blocks of 2 addresses, so that every few additions a host
    claims a new block that must reach host 1 over BGP (reported apart: `_new_block`; the
    others' block was already routed at host 1 and they need only felix). Each is timed
    from the start of `calicoctl container add NS ipv4` (then `container NS profile set`)
    on its host until a ping from the workload on host 1 gets an answer (`ping -c 1 -w 10
    -i 0.05` in that workload's namespace, retried until the deadline).
    p50/p99; goal p99 <= 2 s. Baselines in the same run: the two calicoctl commands alone
    (the ratio: how long past the operator's own commands a workload waits) and the same
    ping to an already reachable workload.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_address, ip_network
from typing import Any, TypeVar

from bench.common import emit, parser, percentile, ratio
from netsim.netns import Namespace
from netsim.topology import Host, Topology

POOL = "198.19.0.0/17"
BLOCK_SIZE = "31"  # 2 addresses a block: part (b) needs new blocks (BGP) every few adds
BASELINE_NET = "198.19.{}.0/26"  # 198.19.200+i.0/26 for host i: outside POOL
PROFILE = "bench"
UP_DEADLINE_S = 120.0
PING_DEADLINE_S = 10.0
T = TypeVar("T")


def parallel(fn: Callable[..., T], items: Sequence[Any]) -> list[T]:
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(fn, items))


def established(ctl_socket: str) -> int:
    out = subprocess.run(["birdc", "-s", ctl_socket, "show", "protocols"],
                         capture_output=True, text=True, check=False).stdout
    return sum(1 for line in out.splitlines() if " BGP " in line and "Established" in line)


def bird_routes(host: Host) -> list[Any]:
    out = host.ns.ip("-4", "-j", "route", "show", "proto", "bird").stdout
    return [ip_network(r["dst"], strict=False) for r in json.loads(out or "[]")
            if r.get("dst", "default") != "default"]


def namespace_cpu_s(hosts: list[Host]) -> float:
    """CPU seconds (user + system) used so far by the processes living in the hosts."""
    total = 0
    for h in hosts:
        pids = subprocess.run(["ip", "netns", "pids", h.ns.name], capture_output=True,
                              text=True, check=False).stdout.split()
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(") ", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_all_up(hosts: list[Host], socket_of: Callable[[Host], str],
                remote: Callable[[Host], list[str]], started: float) -> dict[str, float]:
    """Poll until every host has N-1 sessions Established and a BIRD route covering every
    address in remote(host); a host that got there is checked again at the end."""
    want = len(hosts) - 1
    done: dict[str, float] = {}

    def ok(h: Host) -> bool:
        nets = bird_routes(h)
        return (established(socket_of(h)) == want
                and all(any(ip_address(a) in n for n in nets) for a in remote(h)))

    deadline = started + UP_DEADLINE_S
    while len(done) < len(hosts):
        for h in hosts:
            if h.name not in done and ok(h):
                done[h.name] = time.monotonic() - started
        if time.monotonic() > deadline:
            missing = sorted(h.name for h in hosts if h.name not in done)
            raise TimeoutError(f"not up after {UP_DEADLINE_S:.0f} s: {missing}")
        time.sleep(0.05)
    if not all(ok(h) for h in hosts):
        raise RuntimeError("a host lost its sessions or routes after reaching them")
    return done


# --- (a) baseline: plain BIRD, static full mesh -------------------------------------------------

def render_plain_bird(host: Host, index: int, peers: list[Host]) -> str:
    """A hand-written BIRD 2 config: one blackhole /26 announced to a static iBGP full mesh,
    with the timers, multihop and recursive next hops of Calico's template."""
    lines = [f"router id {host.ip};",
             "protocol device { scan time 10; }",
             'protocol direct { ipv4; interface "eth0"; }',
             "protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }",
             f"protocol static announce {{ ipv4; route {BASELINE_NET.format(200 + index)}"
             " blackhole; }",
             "template bgp mesh {",
             f"  local {host.ip} as 64512; multihop; graceful restart on;",
             "  connect delay time 2; connect retry time 5; error wait time 5, 30;",
             "  ipv4 { gateway recursive; import all; export where proto = \"announce\"; };",
             "}"]
    lines += [f"protocol bgp peer{j} from mesh {{ neighbor {p.ip} as 64512; }}"
              for j, p in enumerate(peers) if p is not host]
    return "\n".join(lines) + "\n"


def plain_bird_mesh(topo: Topology) -> dict[str, Any]:
    hosts = topo.hosts
    for i, h in enumerate(hosts):
        (h.dir / "plain").mkdir()
        (h.dir / "plain" / "bird.conf").write_text(render_plain_bird(h, i, hosts))
    nets = {h.name: BASELINE_NET.format(200 + i).replace(".0/26", ".1")
            for i, h in enumerate(hosts)}
    started = time.monotonic()
    procs = [topo.spawn(h, ["bird", "-f", "-c", str(h.dir / "plain" / "bird.conf"),
                            "-s", str(h.dir / "plain" / "bird.ctl")], name="plain-bird")
             for h in hosts]
    per_host = wait_all_up(hosts, lambda h: str(h.dir / "plain" / "bird.ctl"),
                           lambda h: [a for n, a in nets.items() if n != h.name], started)
    total = max(per_host.values())
    cpu = namespace_cpu_s(hosts)
    for proc in procs:
        topo.stop_process(proc)
    for h in hosts:  # BIRD withdraws its kernel routes when it stops (no `persist`)
        if bird_routes(h):
            raise RuntimeError(f"plain BIRD left routes behind in {h.name}")
    return {"name": "plain BIRD 2, static full-mesh config, same timers",
            "total_s": round(total, 3), "first_host_s": round(min(per_host.values()), 3),
            "cpu_s": round(cpu, 3)}


# --- (a) Calico ---------------------------------------------------------------------------------

def add_workload(topo: Topology, host: Host, ns: Namespace) -> str:
    """`container add NS ipv4` and `container NS profile set`; returns the address."""
    out = topo.calicoctl(host, "container", "add", ns.name, "ipv4").stdout
    topo.calicoctl(host, "container", ns.name, "profile", "set", PROFILE)
    return out.split()[1].split("/")[0]  # "IP 198.19.x.y/32 added to ..."


def cluster_up(topo: Topology, made: list[Namespace]
               ) -> tuple[dict[str, Any], dict[str, tuple[Namespace, str]]]:
    hosts = topo.hosts
    topo.calicoctl(hosts[0], "pool", "add", POOL, "--block-size", BLOCK_SIZE)
    topo.calicoctl(hosts[0], "profile", "add", PROFILE)
    spaces = {}
    for i, h in enumerate(hosts):
        spaces[h.name] = Namespace(f"bnode-w{i}")
        made.append(spaces[h.name])
    addrs = dict(zip(spaces, parallel(lambda h: add_workload(topo, h, spaces[h.name]), hosts),
                     strict=True))
    node_s: dict[str, float] = {}
    cpu_before = children_cpu_s()
    started = time.monotonic()

    def start(h: Host) -> None:
        topo.start_node(h)
        node_s[h.name] = time.monotonic() - started

    starters = [threading.Thread(target=start, args=(h,)) for h in hosts]
    for t in starters:
        t.start()
    try:
        per_host = wait_all_up(hosts, lambda h: str(h.dir / "run" / "bird.ctl"),
                               lambda h: [a for n, a in addrs.items() if n != h.name],
                               started)
        daemons_cpu = namespace_cpu_s(hosts)
    finally:
        for t in starters:
            t.join()
    total = max(per_host.values())
    figures = {"hosts": len(hosts), "total_s": round(total, 3),
               "first_host_s": round(min(per_host.values()), 3),
               "node_run_returned_s": round(max(node_s.values()), 3),
               "cpu_s": {"programs_when_up": round(daemons_cpu, 2),
                         "calicoctl_node_run": round(children_cpu_s() - cpu_before, 2)}}
    return figures, {n: (spaces[n], addrs[n]) for n in spaces}


# --- (b) a new workload reachable from another host -------------------------------------------

def ping_until(ns: Namespace, addr: str) -> bool:
    deadline = time.monotonic() + PING_DEADLINE_S
    while time.monotonic() < deadline:
        left = max(1, int(deadline - time.monotonic()))
        if ns.exec("ping", "-n", "-q", "-c", "1", "-w", str(left), "-i", "0.05", addr,
                   check=False).returncode == 0:
            return True
    return False


def reachability(topo: Topology, pinger: Namespace, known: str, count: int,
                 made: list[Namespace]) -> dict[str, Any]:
    targets = topo.hosts[1:]
    reach: list[float] = []
    commands: list[float] = []
    ping_only: list[float] = []
    in_new_block: list[float] = []
    in_known_block: list[float] = []
    for i in range(count):
        host = targets[i % len(targets)]
        ns = Namespace(f"bnode-n{i}")  # the orchestrator's part, not timed
        made.append(ns)
        routed = bird_routes(topo.hosts[0])
        started = time.monotonic()
        addr = add_workload(topo, host, ns)
        commands.append(time.monotonic() - started)
        if not ping_until(pinger, addr):
            raise RuntimeError(f"workload {i} ({addr} on {host.name}) never answered")
        reach.append(time.monotonic() - started)
        known_block = any(ip_address(addr) in n for n in routed)
        (in_known_block if known_block else in_new_block).append(reach[-1])
        started = time.monotonic()
        if not ping_until(pinger, known):
            raise RuntimeError(f"{known} stopped answering")
        ping_only.append(time.monotonic() - started)

    def stats(values: list[float]) -> dict[str, Any]:
        if not values:
            return {"count": 0}
        return {"count": len(values), "p50_s": round(percentile(values, 50), 3),
                "p99_s": round(percentile(values, 99), 3), "max_s": round(max(values), 3)}

    return {"workloads": count, "block_size": int(BLOCK_SIZE), "reachable": stats(reach),
            "reachable_new_block": stats(in_new_block),
            "reachable_known_block": stats(in_known_block),
            "baseline": {"name": "calicoctl container add + container profile set alone",
                         **stats(commands)},
            "ping_only": {"name": "the same ping to an already reachable workload",
                          **stats(ping_only)},
            "ratio": ratio(percentile(reach, 99), percentile(commands, 99)),
            "goal": {"max_p99_s": 2.0}}


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    hosts, count = (3, 5) if args.quick else (10, 50)
    result: dict[str, Any] = {"benchmark": "node", "quick": args.quick,
                              "machine": {"cpus": os.cpu_count(),
                                          "loadavg_1m_at_start": os.getloadavg()[0]}}
    made: list[Namespace] = []  # workload namespaces, deleted before the topology
    with Topology("bnode", hosts=hosts) as topo:
        try:
            baseline = plain_bird_mesh(topo)
            calico, workloads = cluster_up(topo, made)
            up = result["cluster_up"] = {**calico, "baseline": baseline,
                                         "ratio": ratio(calico["total_s"], baseline["total_s"]),
                                         "goal": {"max_s": 20.0}}
            up["goal_met"] = up["total_s"] <= up["goal"]["max_s"]
            pinger = workloads[topo.hosts[0].name][0]
            far = workloads[topo.hosts[-1].name][1]
            wr = result["workload_reachable"] = reachability(topo, pinger, far, count, made)
            wr["goal_met"] = wr["reachable"]["p99_s"] <= wr["goal"]["max_p99_s"]
        finally:
            for ns in made:
                ns.delete()
    result["ratio"] = result["cluster_up"]["ratio"]
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
