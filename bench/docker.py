"""Benchmark: Docker containers on a calico network (the libnetwork driver).

Runs in throw-away namespaces (`netsim.topology`: a fabric with etcd, two host
namespaces running `calicoctl node run --runtime=none`), each host with its own dockerd
(`netsim.dockerhosts`, started with --bridge=none and --iptables=false) and the driver
`calico-libnetwork` as a process of the host. Engines, nodes and image imports are not
timed. Prints one JSON object.

(a) `docker run --rm --net=net1 busybox true` wall time (clock: the docker client
    started until it exited), net1 a calico network (`-d calico --ipam-driver
    calico-ipam`), against the same command on the engine's own bridge driver in the
    same run: a user-defined bridge network (`docker network create -d bridge --subnet
    198.18.128.0/24`; the engine's default bridge is off and its iptables too, which
    `true` does not need). Alternating, after one warm-up each; rounds 15 (--quick 3);
    medians. Goal: ratio <= 1.3.
(b) 20 containers (--quick 5) `docker run -d --net=net1` started at once (a thread each)
    on host 1, 2 rounds (--quick 1): no two get the same address; for each, the time
    from starting its `docker run` to the first echo reply from it at a workload on
    host 2 (in net1's profile; clock at the packet: `bench.probe` pings every 2 ms from
    there, starting as soon as the benchmark's own etcd watch sees the container's
    endpoint). Goal: p99 <= 2 s. Baseline in the same run, rounds alternating with ours
    (which goes first alternates): the same containers on a fresh network of Docker's own
    bridge driver (a /27, so its addresses are known in advance), to the first echo reply
    at host 1's own namespace (pinged every 2 ms from before the start; that bridge's ARP
    retry set to 10 ms); ratio: our p99 / the bridge's p99. Also reported: `docker run`
    returned on both sides, reachable minus returned, and where our time goes
    (`breakdown`): the endpoint written, the host-side veth's carrier up (Docker moved the
    peer into the container and set it up; `bench.probe` link monitor), felix's /32 route
    on host 1 (route monitor, protocol 80), the reply; and, for a block claimed during the
    round, when its route (BIRD, protocol 12) reached host 2's kernel.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
from typing import Any

from bench.common import emit, median, parser, percentile, ratio
from bench.node import established
from bench.probe import Prober
from libcalico import keyspace
from netsim.dockerd import DockerEngine, import_busybox
from netsim.dockerhosts import DockerHosts
from netsim.netns import Namespace
from netsim.topology import Host, Topology
from netsim.wait import wait_for
from workload import veth

POOL = "198.19.0.0/16"
BRIDGE_SUBNET = "198.18.128.0/24"
IMAGE = "busybox:bench"
NET = "net1"
BRIDGE = "br1"
REACH_TIMEOUT_S = 60.0


def timed_run(engine: DockerEngine, *args: str) -> float:
    """Seconds the docker client took for `docker ARGS` (fails loudly)."""
    started = time.monotonic()
    engine.docker(*args, timeout=120)
    return time.monotonic() - started


# --- (a) one container, start to exit ----------------------------------------------------------

def run_wall(engine: DockerEngine, rounds: int) -> dict[str, Any]:
    cmd = ("run", "--rm", "{net}", IMAGE, "true")

    def once(net: str) -> float:
        return timed_run(engine, *(a.format(net=f"--net={net}") for a in cmd))

    once(NET), once(BRIDGE)  # warm-up: the image's layers, the plugin's first calls
    calico: list[float] = []
    bridge: list[float] = []
    for _ in range(rounds):
        calico.append(once(NET))
        bridge.append(once(BRIDGE))
    result: dict[str, Any] = {
        "rounds": rounds, "median_s": round(median(calico), 3),
        "p90_s": round(percentile(calico, 90), 3),
        "clock": {"start": "docker run --rm --net=net1 busybox true started",
                  "stop": "the docker client exited (container created, joined, run, "
                          "removed)"},
        "baseline": {"name": "the same command on a user-defined network of Docker's own "
                             "bridge driver (same engine, same run, alternating)",
                     "median_s": round(median(bridge), 3),
                     "p90_s": round(percentile(bridge, 90), 3)},
        "ratio": ratio(median(calico), median(bridge)), "goal": {"max_ratio": 1.3}}
    result["goal_met"] = result["ratio"] <= result["goal"]["max_ratio"]
    return result


# --- (b) many at once, reachable from another host ---------------------------------------------

FELIX_ROUTE_PROTO = 80  # the protocol number felix's workload routes carry
BIRD_ROUTE_PROTO = 12


class EndpointWatch:
    """The benchmark's own etcd watch on host 1's endpoints: pings each new endpoint's
    address from host 2 as soon as the endpoint is written, and notes when it saw it."""

    def __init__(self, topo: Topology, prober: Prober, host: str) -> None:
        self.store = topo.datastore()
        self.prober = prober
        prefix = keyspace.host_workload_dir(host)
        _, rev = self.store.list(prefix)
        self.stream = self.store.watch([prefix], rev + 1)
        self.seen: dict[str, str] = {}  # endpoint id -> address
        self.seen_at: dict[str, float] = {}  # endpoint id -> when the watch saw it
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="bench-ep-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for batch in self.stream:
                now = time.monotonic()
                for e in batch.events:
                    parsed = keyspace.parse_key(e.key)
                    if not e.value or not isinstance(parsed, keyspace.WorkloadEndpointKey):
                        continue
                    nets = json.loads(e.value).get("ipv4_nets") or []
                    with self.lock:
                        new = nets and parsed.endpoint_id not in self.seen
                        if new:
                            self.seen[parsed.endpoint_id] = nets[0].split("/")[0]
                            self.seen_at[parsed.endpoint_id] = now
                    if new:
                        self.prober.probe(parsed.endpoint_id, "icmp", nets[0].split("/")[0])
        except Exception:  # noqa: BLE001 - the stream ends when closed
            return

    def close(self) -> None:
        self.stream.cancel()
        self.thread.join(5)
        self.store.close()


def start_at_once(engine: DockerEngine, names: list[str], net: str) -> dict[str, float]:
    """`docker run -d` of each name at once (a thread each): name -> start time, and the
    seconds each command took."""
    started: dict[str, float] = {}
    took: dict[str, float] = {}
    errors: list[BaseException] = []
    gate = threading.Barrier(len(names))

    def one(name: str) -> None:
        try:
            gate.wait()
            started[name] = time.monotonic()
            engine.docker("run", "-d", "--name", name, f"--net={net}", IMAGE, "sleep", "3600",
                          timeout=180)
            took[name] = time.monotonic() - started[name]
        except BaseException as exc:  # noqa: BLE001 - raised below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {**{f"start:{n}": t for n, t in started.items()},
            **{f"took:{n}": t for n, t in took.items()}}


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_s": round(percentile(values, 50), 3), "p99_s": round(percentile(values, 99), 3),
            "max_s": round(max(values), 3)}


def _spread(values: list[float]) -> dict[str, float]:
    """p50, p99 and max of values that may be negative."""
    return {k: round(v, 3) for k, v in (("p50_s", percentile(values, 50)),
                                        ("p99_s", percentile(values, 99)),
                                        ("max_s", max(values)))}


def _remove(engine: DockerEngine, names: list[str]) -> None:
    ids = [n for n in names if engine.docker("inspect", n, check=False).returncode == 0]
    if ids:
        engine.docker("rm", "-f", *ids, timeout=180)


def _when(wait: Any, match: dict[str, str], what: str) -> float:
    """The time of the first event with the fields of `match`, waiting for it with
    `wait` (the prober's `wait_links` or `wait_routes`)."""
    found: list[dict[str, Any]] = []

    def seen(events: list[dict[str, Any]]) -> bool:
        found[:] = [e for e in events if all(e.get(k) == v for k, v in match.items())][:1]
        return bool(found)

    if not wait(seen, 10):
        raise TimeoutError(f"no {what} within 10 s")
    return float(found[0]["t"])


def calico_round(topo: Topology, e1: DockerEngine, prober: Prober, names: list[str]
                 ) -> dict[str, dict[str, float]]:
    """`names` started at once on net1: per container, seconds from its `docker run`
    to: its endpoint in etcd, its host-side veth's carrier up (Docker has moved the peer
    into the container and set it up), felix's route to it on host 1, the first echo
    reply at host 2, and `docker run` returning; and its address."""
    h1, h2 = topo.hosts
    watch = EndpointWatch(topo, prober, h1.name)
    per: dict[str, dict[str, Any]] = {}
    began = time.monotonic()
    try:
        times = start_at_once(e1, names, NET)
        for name in names:
            info = json.loads(e1.docker("inspect", name).stdout)[0]
            settings = info["NetworkSettings"]["Networks"][NET]
            ep_id, addr = settings["EndpointID"], settings["IPAddress"]
            t0 = times[f"start:{name}"]
            reached = float(prober.reached(ep_id, REACH_TIMEOUT_S)["t"])
            iface, dst = veth.host_interface_name(ep_id), f"{addr}/32"
            link = _when(prober.wait_links, {"name": iface}, f"carrier up on {iface}")
            route = _when(prober.wait_routes, {"host": h1.name, "dst": dst},
                          f"felix route to {dst}")
            per[name] = {"address": addr, "endpoint_written": watch.seen_at[ep_id] - t0,
                         "veth_up": link - t0, "felix_route": route - t0,
                         "reachable": reached - t0, "returned": times[f"took:{name}"]}
            # A block claimed in this round (an empty block is given up, so a host
            # without workloads claims a new one): when its route reached host 2.
            bird = [float(e["t"]) for e in list(prober.routes) if e["host"] == h2.name
                    and e["t"] >= began and ipaddress.ip_address(addr)
                    in ipaddress.ip_network(e["dst"])]
            if bird:
                per[name]["block_route_at_host2"] = min(bird) - t0
    finally:
        watch.close()
        _remove(e1, names)
    return per


def bridge_round(h1: Host, e1: DockerEngine, prober: Prober, names: list[str], subnet: str
                 ) -> dict[str, dict[str, float]]:
    """The same on a fresh network of Docker's own bridge driver (`subnet`, a /27, so
    the engine's IPAM hands out its first addresses): per container, seconds from its
    `docker run` to the first echo reply at host 1's own namespace (pinged every 2 ms
    from before the start: the addresses are known in advance) and to `docker run`
    returning. The host's ARP retry on the bridge is 10 ms rather than the kernel's
    1 s, so that the clock is not rounded up to the next ARP attempt (on our side the
    host's route appears only once the container's interface is up: no retry)."""
    net = f"brpar-{subnet.split('/')[0].split('.')[-1]}"
    network = ipaddress.ip_network(subnet)
    candidates = [str(a) for a in list(network.hosts())[1:len(names) + 1]]
    e1.docker("network", "create", "-d", "bridge", "--subnet", subnet, net)
    try:
        net_id = e1.docker("network", "inspect", "-f", "{{.Id}}", net).stdout.strip()
        h1.ns.exec("sysctl", "-q", "-w", f"net.ipv4.neigh.br-{net_id[:12]}.retrans_time_ms=10")
        for addr in candidates:
            prober.probe(f"{net}:{addr}", "icmp", addr)
        per: dict[str, dict[str, Any]] = {}
        try:
            times = start_at_once(e1, names, net)
            for name in names:
                info = json.loads(e1.docker("inspect", name).stdout)[0]
                addr = info["NetworkSettings"]["Networks"][net]["IPAddress"]
                if addr not in candidates:
                    raise RuntimeError(f"the bridge gave {name} {addr}, not one of "
                                       f"{candidates[0]}..{candidates[-1]}")
                t0 = times[f"start:{name}"]
                reached = float(prober.reached(f"{net}:{addr}", REACH_TIMEOUT_S)["t"])
                per[name] = {"address": addr, "reachable": reached - t0,
                             "returned": times[f"took:{name}"]}
        finally:
            for addr in candidates:
                prober.command("stop", id=f"{net}:{addr}")
            _remove(e1, names)
    finally:
        e1.docker("network", "rm", net, check=False)
    return per


def _phase(per: list[dict[str, Any]], key: str) -> dict[str, float]:
    return _spread([p[key] for p in per])


def parallel_start(topo: Topology, hosts: DockerHosts, count: int,
                   rounds: int) -> dict[str, Any]:
    """`rounds` rounds of `count` containers at once on net1 and on a bridge network,
    alternating which goes first."""
    h1, h2 = topo.hosts
    e1 = hosts.engine(h1)
    pinger = Namespace("bdk-ping")
    calico: list[dict[str, Any]] = []
    bridge: list[dict[str, Any]] = []
    duplicates = 0
    distinct = count
    try:
        topo.calicoctl(h2, "container", "add", pinger.name, "ipv4")
        topo.calicoctl(h2, "container", pinger.name, "profile", "set", NET)
        with Prober() as prober, Prober() as host_prober:
            prober.command("icmp", ns=pinger.name)
            prober.command("links", ns=h1.ns.name, host=h1.name, prefix="cali")
            prober.command("routes", ns=h1.ns.name, host=h1.name, proto=FELIX_ROUTE_PROTO)
            prober.command("routes", ns=h2.ns.name, host=h2.name, proto=BIRD_ROUTE_PROTO)
            host_prober.command("icmp", ns=h1.ns.name)
            for r in range(rounds):
                sides = ("calico", "bridge") if r % 2 == 0 else ("bridge", "calico")
                for side in sides:
                    names = [f"{'par' if side == 'calico' else 'brpar'}{r}-{i}"
                             for i in range(count)]
                    if side == "calico":
                        per = calico_round(topo, e1, prober, names)
                        calico += per.values()
                        addresses = {p["address"] for p in per.values()}
                        duplicates += count - len(addresses)
                        distinct = min(distinct, len(addresses))
                    else:
                        per = bridge_round(h1, e1, host_prober, names,
                                           f"198.18.129.{32 * r}/27")
                        bridge += per.values()
            bgp_routes = [e for e in prober.routes if e["host"] == h2.name]
    finally:
        topo.calicoctl(h2, "container", "remove", pinger.name, check=False)
        pinger.delete()
    reach = summary([p["reachable"] for p in calico])
    new_block = [p for p in calico if "block_route_at_host2" in p]
    base_reach = summary([p["reachable"] for p in bridge])
    result: dict[str, Any] = {
        "containers": count, "rounds": rounds,
        "distinct_addresses": distinct,  # in the round with the fewest
        "duplicate_addresses": duplicates, "reachable": reach,
        "docker_run_returned": summary([p["returned"] for p in calico]),
        # negative: the container answered before its `docker run` had returned
        "reachable_minus_returned": _spread([p["reachable"] - p["returned"] for p in calico]),
        "breakdown": {
            "clock": "seconds from each `docker run` start; p50/p99/max over containers",
            "endpoint_written": _phase(calico, "endpoint_written"),
            "veth_up": _phase(calico, "veth_up"),
            "felix_route": _phase(calico, "felix_route"),
            "reachable": _phase(calico, "reachable"),
            "felix_route_after_veth_up": _spread([p["felix_route"] - p["veth_up"]
                                                  for p in calico]),
            "reply_after_felix_route": _spread([p["reachable"] - p["felix_route"]
                                                for p in calico]),
            # containers in a block claimed during their round: when its route (BGP,
            # BIRD on host 2) was in host 2's kernel
            "block_route_at_host2": {
                "containers": len(new_block),
                **(_phase(new_block, "block_route_at_host2") if new_block else {})},
            "bird_routes_on_host2": sorted({e["dst"] for e in bgp_routes})},
        "clock": {"start": "each container's `docker run -d --net=net1` started (all at "
                           "once, a thread each)",
                  "stop": "the first echo reply from that container at a workload on "
                          "host 2 (pings every 2 ms from when its endpoint was written)"},
        "baseline": {"name": "the same containers started at once on a fresh network of "
                             "Docker's own bridge driver (same engine, rounds alternating "
                             "with ours), until the first echo reply at host 1's own "
                             "namespace (pings every 2 ms from before the start)",
                     "reachable": base_reach,
                     "docker_run_returned": summary([p["returned"] for p in bridge])},
        "goal": {"max_p99_s": 2.0, "duplicate_addresses": 0}}
    result["ratio"] = ratio(reach["p99_s"], base_reach["p99_s"])
    result["goal_met"] = reach["p99_s"] <= 2.0 and duplicates == 0
    return result


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    rounds, count, par_rounds = (3, 5, 1) if args.quick else (15, 20, 2)
    result: dict[str, Any] = {"benchmark": "docker", "quick": args.quick,
                              "machine": {"cpus": os.cpu_count(),
                                          "loadavg_1m_at_start": os.getloadavg()[0]}}
    with Topology("bdk", hosts=2) as topo, DockerHosts(topo, load_image=False) as hosts:
        h1, h2 = topo.hosts
        for h in topo.hosts:
            import_busybox(hosts.engine(h), IMAGE)
            topo.start_node(h)
            hosts.start_driver(h)
        topo.calicoctl(h1, "pool", "add", POOL)
        for h in topo.hosts:
            hosts.engine(h).docker("network", "create", "-d", "calico", "--ipam-driver",
                                   "calico-ipam", NET)
        hosts.engine(h1).docker("network", "create", "-d", "bridge", "--subnet",
                                BRIDGE_SUBNET, BRIDGE)
        wait_for(lambda: topo.calicoctl(h1, "profile", NET, "rule", "show",
                                        check=False).returncode == 0, 30,
                 message=f"profile {NET}")
        for h in topo.hosts:
            ctl_socket = str(h.dir / "run" / "bird.ctl")
            wait_for(lambda s=ctl_socket: established(s) == 1, 60,  # type: ignore[misc]
                     message=f"{h.name}: BGP Established")
        result["run"] = run_wall(hosts.engine(h1), rounds)
        result["parallel"] = parallel_start(topo, hosts, count, par_rounds)
        for h in topo.hosts:
            hosts.engine(h).docker("network", "rm", NET, check=False)
    result["ratio"] = result["run"]["ratio"]
    result["machine"]["loadavg_1m_at_end"] = os.getloadavg()[0]
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
