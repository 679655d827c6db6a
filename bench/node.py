"""Benchmark: a Calico cluster coming up, a new workload becoming reachable across hosts,
and a new block's route reaching every other host.

Runs in throw-away namespaces (`netsim.topology`: a fabric with etcd, N host
namespaces; IPv4 only) with the real stack started by `calicoctl node run --runtime=none`
(felix, confd and BIRD under supervisord in each host, default settings). A prober
(`bench.probe`, one process) pings from a workload on host 1 and watches every host's
kernel routing table over netlink; its times and the benchmark's are CLOCK_MONOTONIC.
Prints one JSON object; `clock` fields say where each clock starts and stops.

(a) cluster up: N hosts (10; --quick 3), each already holding one workload (made with
    `calicoctl container add` + `profile set` before any node runs, so every host owns a
    block). From starting `calicoctl node run` on all hosts at once (one thread each, as
    operators would) until every host has all N-1 BGP sessions Established (`birdc show
    protocols` on its socket) and a BIRD route in its kernel to every other host's
    workload. Goal <= 20 s.
    Baseline in the same run, on the same hosts, first: plain BIRD 2 with a hand-written
    static full-mesh configuration (the same BGP timers, multihop and recursive next hops
    as Calico's template, each host announcing one blackhole /26) started on all hosts at
    once, until the same condition holds. It is the floor set by BGP itself.
(b) workload reachable: 50 workloads (--quick 5) added one after the other, round-robin on
    hosts 2..N, from a pool with blocks of 2 addresses, so that every other addition on a
    host claims a new block. Each is made with `calicoctl container add NS ipv4` then
    `calicoctl container NS profile set` on its host. Clock from the first etcd write for
    it (IPAM: block affinity or assignment), as the benchmark's own watch on the same etcd
    saw it (that watch's delay is calibrated with marker writes and reported), to the
    first echo reply to the pings host 1's workload sends every 2 ms (they start as soon
    as the endpoint's address is in etcd, before anything can answer). Also reported
    from the last write (the profile set). Goal p99 <= 2 s.
    Baseline in the same run, same hosts, pings already running: what an operator with
    static routes does by hand - one `ip -batch` on the workload's host (veth, /32 route),
    one in the workload (address, gateway, neighbour), one `ip route` on host 1 - clock
    from the first command to the first reply.
(c) BGP propagation: blocks claimed for hosts 2..N in turn (2 each) through the IPAM
    library (`IPAMClient.claim_block`: affinity and block in one etcd transaction); clock
    from just before the claim to the block's route (proto bird) in every other host's
    kernel (netlink events). No goal. Baseline in the same run: the plain BIRD mesh of
    (a), a /26 static route added to one host's config with `birdc configure` (as many
    samples), clock from the configure to the route in every other host's kernel.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_address, ip_network
from typing import Any, TypeVar

from bench.common import emit, parser, percentile, ratio
from bench.probe import Prober
from libcalico import keyspace
from netsim.netns import Namespace
from netsim.topology import Host, Topology

POOL = "198.19.0.0/17"
BLOCK_SIZE = "31"  # 2 addresses a block: part (b) needs new blocks (BGP) every few adds
BASELINE_NET = "198.19.{}.0/26"  # 198.19.200+i.0/26 for host i: outside POOL
EXTRA_NET = "198.19.{}.0/26"  # 198.19.220+k.0/26: (c)'s baseline routes, outside POOL
STATIC_ADDR = "198.19.250.{}"  # (b)'s baseline workloads, outside POOL
BGP_DEADLINE_S = 30.0
MARKER_KEY = "/calico-bench/node/marker"  # outside /calico/: calibrates the watch
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

def render_plain_bird(host: Host, index: int, peers: list[Host],
                      extra: Sequence[str] = (), *, nets: Sequence[str] | None = None,
                      rr_clients: Collection[str] = (), rr_cluster_id: str = "") -> str:
    """A hand-written BIRD 2 config: one blackhole /26 (or `nets`), and `extra` ones,
    announced to a static iBGP session with each of `peers`, with the timers, multihop
    and recursive next hops of Calico's template. Peers whose address is in `rr_clients`
    are this host's route-reflector clients (`rr client; rr cluster id ...`)."""
    announce = [BASELINE_NET.format(200 + index)] if nets is None else list(nets)
    lines = [f"router id {host.ip};",
             "protocol device { scan time 10; }",
             'protocol direct { ipv4; interface "eth0"; }',
             "protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }",
             "protocol static announce { ipv4; "
             + "".join(f"route {net} blackhole; " for net in (*announce, *extra)) + "}",
             "template bgp mesh {",
             f"  local {host.ip} as 64512; multihop; graceful restart on;",
             "  connect delay time 2; connect retry time 5; error wait time 5, 30;",
             "  ipv4 { gateway recursive; import all; export where proto = \"announce\""
             + (" || source = RTS_BGP" if rr_clients else "") + "; };",
             "}"]
    lines += [f"protocol bgp peer{j} from mesh {{ neighbor {p.ip} as 64512;"
              + (f" rr client; rr cluster id {rr_cluster_id};" if p.ip in rr_clients else "")
              + " }" for j, p in enumerate(peers) if p is not host]
    return "\n".join(lines) + "\n"


def plain_bird_mesh(topo: Topology, prober: Prober, samples: int
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(a)'s baseline, then (c)'s: `samples` static routes added to the running mesh."""
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
    propagation = []
    for k in range(samples):
        index = 1 + k % (len(hosts) - 1)
        host = hosts[index]
        net = EXTRA_NET.format(220 + k)
        (host.dir / "plain" / "bird.conf").write_text(
            render_plain_bird(host, index, hosts, [net]))
        t0 = time.monotonic()
        out = subprocess.run(["birdc", "-s", str(host.dir / "plain" / "bird.ctl"),
                              "configure"], capture_output=True, text=True, check=False)
        if "Reconfigured" not in out.stdout:
            raise RuntimeError(f"birdc configure on {host.name}: {out.stdout}{out.stderr}")
        propagation.append(route_everywhere(prober, hosts, host, net, t0))
    for proc in procs:
        topo.stop_process(proc)
    for h in hosts:  # BIRD withdraws its kernel routes when it stops (no `persist`)
        if bird_routes(h):
            raise RuntimeError(f"plain BIRD left routes behind in {h.name}")
    return ({"name": "plain BIRD 2, static full-mesh config, same timers",
             "total_s": round(total, 3), "first_host_s": round(min(per_host.values()), 3),
             "cpu_s": round(cpu, 3)}, propagation)


def route_everywhere(prober: Prober, hosts: list[Host], origin: Host, net: str,
                     t0: float) -> dict[str, Any]:
    """Wait until every host but `origin` has announced a BIRD route to `net` (netlink)
    after t0; the seconds from t0 to the last one, and per host."""
    others = {h.name for h in hosts if h is not origin}

    def arrived(routes: list[dict[str, Any]]) -> dict[str, float]:
        seen: dict[str, float] = {}
        for r in routes:
            if r["dst"] == net and r["host"] in others and r["t"] >= t0:
                seen.setdefault(r["host"], r["t"])
        return seen

    if not prober.wait_routes(lambda rs: len(arrived(rs)) == len(others), BGP_DEADLINE_S):
        missing = sorted(others - set(arrived(prober.routes)))
        raise TimeoutError(f"route {net} from {origin.name} never reached {missing}")
    seen = arrived(prober.routes)
    return {"net": net, "origin": origin.name, "s": max(seen.values()) - t0,
            "first_host_s": min(seen.values()) - t0}


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


# --- (b) a new workload reachable from another host, (c) BGP propagation -----------------

class EtcdLog:
    """The benchmark's own watch on IPAM and endpoint keys: (time seen, key, value), and
    the pings started as soon as a new endpoint's address appears."""

    def __init__(self, topo: Topology, prober: Prober) -> None:
        self.store = topo.datastore()
        self.prober = prober
        self.events: list[tuple[float, str, str | None]] = []
        self.probe_id: str | None = None  # the addition whose address is awaited
        self.lock = threading.Lock()  # events and probe_id: shared with the main thread
        _, rev = self.store.list(keyspace.IPAM_DIR)
        self.stream = self.store.watch([keyspace.IPAM_DIR, keyspace.HOST_DIR, MARKER_KEY],
                                       rev + 1)
        self.thread = threading.Thread(target=self._run, name="bench-etcd-log", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for batch in self.stream:
                now = time.monotonic()
                for e in batch.events:
                    parsed = keyspace.parse_key(e.key)
                    nets = (json.loads(e.value).get("ipv4_nets") or [] if e.value and
                            isinstance(parsed, keyspace.WorkloadEndpointKey) else [])
                    with self.lock:
                        self.events.append((now, e.key, e.value))
                        ident, self.probe_id = self.probe_id, (None if nets else
                                                               self.probe_id)
                    if ident and nets:
                        self.prober.probe(ident, "icmp", nets[0].split("/")[0])
        except Exception:  # noqa: BLE001 - the stream ends when closed
            return

    def calibrate(self, value: str) -> float:
        """Write the marker and wait for the watch to see it: an upper bound (the write's
        round trip included) on how late this watch sees a write."""
        t0 = time.monotonic()
        self.store.put(MARKER_KEY, value)
        deadline = t0 + 10
        while time.monotonic() < deadline:
            with self.lock:
                seen = [t for t, k, v in self.events if k == MARKER_KEY and v == value]
            if seen:
                return seen[0] - t0
            time.sleep(0.001)
        raise TimeoutError("the benchmark's watch never saw its own marker")

    def since(self, t: float) -> list[tuple[float, str, str | None]]:
        with self.lock:
            return [e for e in self.events if e[0] >= t]

    def close(self) -> None:
        self.stream.cancel()
        self.thread.join(5)
        self.store.close()


def stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    return {"count": len(values), "p50_s": round(percentile(values, 50), 3),
            "p99_s": round(percentile(values, 99), 3), "max_s": round(max(values), 3)}


def reachability(topo: Topology, prober: Prober, count: int,
                 made: list[Namespace]) -> dict[str, Any]:
    """(b) through calicoctl."""
    targets = topo.hosts[1:]
    log = EtcdLog(topo, prober)
    reach: list[float] = []
    from_profile: list[float] = []
    unanswered: list[int] = []
    new_block: list[float] = []
    known_block: list[float] = []
    watch_delay: list[float] = []
    try:
        for i in range(count):
            host = targets[i % len(targets)]
            ns = Namespace(f"bnode-n{i}")  # the orchestrator's part, not timed
            made.append(ns)
            watch_delay.append(log.calibrate(str(i)))
            ident = f"w{i}"
            with log.lock:
                log.probe_id = ident
            started = time.monotonic()
            add_workload(topo, host, ns)
            reply = prober.reached(ident, PING_DEADLINE_S)
            events = log.since(started)
            writes = [(t, k, v) for t, k, v in events if k.startswith(keyspace.IPAM_DIR)
                      or isinstance(keyspace.parse_key(k), keyspace.WorkloadEndpointKey)]
            profile_set = [t for t, k, v in writes if v and f'"{PROFILE}"' in v
                           and isinstance(keyspace.parse_key(k), keyspace.WorkloadEndpointKey)]
            if not writes or not profile_set:
                raise RuntimeError(f"workload {i}: its etcd writes were not seen")
            first = min(t for t, _, _ in writes)
            reach.append(reply["t"] - first)
            from_profile.append(reply["t"] - min(profile_set))
            unanswered.append(reply["unanswered_before"])
            claimed = any(k.startswith(keyspace.AFFINITY_DIR) and v is not None
                          for _, k, v in writes)
            (new_block if claimed else known_block).append(reach[-1])
    finally:
        log.close()
    return {
        "clock": "from the first etcd write for the workload (IPAM, as the benchmark's watch "
                 "saw it) to the first echo reply to pings sent every 2 ms from host 1's "
                 "workload, started when the endpoint's address appeared in etcd",
        "workloads": count, "block_size": int(BLOCK_SIZE), "reachable": stats(reach),
        "reachable_new_block": stats(new_block), "reachable_known_block": stats(known_block),
        "from_profile_set": {"clock": "from the profile-set write instead", **stats(from_profile)},
        "min_unanswered_pings_before_first_reply": min(unanswered),
        "watch_delay": {"note": "upper bound on how late the watch sees a write (the "
                                "benchmark's own marker write, round trip included): the "
                                "clocks above may start this much after the real write",
                        "count": len(watch_delay),
                        "p50_ms": round(percentile(watch_delay, 50) * 1000, 2),
                        "p99_ms": round(percentile(watch_delay, 99) * 1000, 2),
                        "max_ms": round(max(watch_delay) * 1000, 2)},
        "goal": {"max_p99_s": 2.0}}


def bgp_propagation(topo: Topology, prober: Prober, samples: int) -> list[dict[str, Any]]:
    """(c): blocks claimed through the IPAM library, one host at a time, each timed from
    just before the claim to its route in every other host's kernel."""
    from libcalico.errors import AlreadyExists
    from libcalico.ipam import IPAMClient

    store = topo.datastore()
    client = IPAMClient(store)
    out = []
    try:
        candidates = (f"198.19.127.{2 * k}/31" for k in range(127, -1, -1))
        for k in range(samples):
            host = topo.hosts[1 + k % (len(topo.hosts) - 1)]
            while True:
                cidr = next(candidates)
                t0 = time.monotonic()
                try:
                    client.claim_block(host.name, cidr)
                    break
                except AlreadyExists:
                    continue  # (b) took it: try the next one
            out.append(route_everywhere(prober, topo.hosts, host, cidr, t0))
    finally:
        store.close()
    return out


def static_baseline(topo: Topology, prober: Prober, count: int,
                    made: list[Namespace]) -> dict[str, Any]:
    """(b)'s baseline: a workload made reachable by hand with static routes."""
    targets = topo.hosts[1:]
    pinger_host = topo.hosts[0]
    samples = []
    for k in range(count):
        host = targets[k % len(targets)]
        ns = Namespace(f"bnode-s{k}")
        made.append(ns)
        addr, veth, mac = STATIC_ADDR.format(k + 1), f"static{k}", f"02:5a:00:00:00:{k + 1:02x}"
        ident = f"static{k}"
        prober.probe(ident, "icmp", addr)
        t0 = time.monotonic()
        host.ns.ip_batch([f"link add {veth} address {mac} type veth peer name eth0 "
                          f"netns {ns.name}", f"link set {veth} up",
                          f"route add {addr}/32 dev {veth}"])
        ns.ip_batch([f"addr add {addr}/32 dev eth0", "link set eth0 up",
                     "route add 169.254.1.1 dev eth0 scope link",
                     "route add default via 169.254.1.1 dev eth0",
                     f"neigh add 169.254.1.1 lladdr {mac} dev eth0 nud permanent"])
        pinger_host.ns.ip("route", "add", f"{addr}/32", "via", host.ip)
        samples.append(prober.reached(ident, PING_DEADLINE_S)["t"] - t0)
    return {"name": "static routes by hand, pings already running: one ip -batch on the "
                    "workload's host (veth, /32 route), one in the workload (address, gateway, "
                    "neighbour), one ip route on host 1; clock from the first command to the "
                    "first reply", **stats(samples)}


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    hosts, count = (3, 5) if args.quick else (10, 50)
    result: dict[str, Any] = {"benchmark": "node", "quick": args.quick,
                              "machine": {"cpus": os.cpu_count(),
                                          "loadavg_1m_at_start": os.getloadavg()[0]}}
    made: list[Namespace] = []  # workload namespaces, deleted before the topology
    with Topology("bnode", hosts=hosts) as topo, Prober() as prober:
        try:
            for h in topo.hosts:
                prober.command("routes", ns=h.ns.name, host=h.name)
            baseline, bird_propagation = plain_bird_mesh(topo, prober, 2 * (hosts - 1))
            calico, workloads = cluster_up(topo, made)
            up = result["cluster_up"] = {
                "clock": "from starting calicoctl node run on all hosts to every host having "
                         "all sessions Established and a BIRD route to every other workload",
                **calico, "baseline": baseline,
                "ratio": ratio(calico["total_s"], baseline["total_s"]),
                "goal": {"max_s": 20.0}}
            up["goal_met"] = up["total_s"] <= up["goal"]["max_s"]
            prober.command("icmp", ns=workloads[topo.hosts[0].name][0].name)
            wr = reachability(topo, prober, count, made)
            wr["baseline"] = static_baseline(topo, prober, count, made)
            wr["ratio"] = ratio(wr["reachable"]["p99_s"], wr["baseline"]["p99_s"])
            wr["goal_met"] = wr["reachable"]["p99_s"] <= wr["goal"]["max_p99_s"]
            result["workload_reachable"] = wr
            propagation = bgp_propagation(topo, prober, 2 * (hosts - 1))
            bgp = result["bgp_propagation"] = {
                "clock": "from just before the block claim (IPAM library, affinity and "
                         "block in one etcd transaction) to the block's route (proto bird) "
                         "in every other host's kernel (netlink events)",
                "blocks": len(propagation), **stats([p["s"] for p in propagation]),
                "first_host": stats([p["first_host_s"] for p in propagation]),
                "baseline": {"name": "plain BIRD 2 full mesh: a static /26 added to one host's "
                                     "config, clock from birdc configure to the route in every "
                                     "other host's kernel",
                             **stats([p["s"] for p in bird_propagation])},
                "goal": None}
            bgp["ratio"] = ratio(bgp["p99_s"], bgp["baseline"]["p99_s"])
            if prober.lost:
                raise RuntimeError(f"route events were lost: {prober.lost}")
        finally:
            for ns in made:
                ns.delete()
    result["ratio"] = result["cluster_up"]["ratio"]
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
