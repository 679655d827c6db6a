"""Benchmark: the node as a Docker container: start-up, image rebuild, restart gap.

Runs in throw-away namespaces (`netsim.topology`: a fabric with etcd, N host
namespaces; IPv4 only), each host with its own dockerd holding this checkout's node
image (`netsim.dockerhosts`; engines and image loads are not timed). Prints one
JSON object.

(a) cluster up: N hosts (3; --quick 2). From starting `calicoctl node` on all hosts at
    once (one thread each, as operators would) until every host's command has returned
    (it returns once felix, confd and BIRD run) and every host has its N-1 BGP sessions
    Established (`birdc show protocols` on the socket in its run directory, polled).
    `--runtime=docker` against the baseline measured in the same run, on the same
    hosts, first: `--runtime=none` (the same programs under supervisord straight in the
    host's namespace). Between the two every node is stopped and the datastore, run and
    log directories are emptied, so both start from the same state. Rounds: 3 (--quick
    1), medians reported. Goal: ratio <= 1.5.
(b) image rebuild after a one-line code change: on an engine of its own, from a copy of
    the checkout, `calicoctl node image build` once (reported, not the figure: the first
    build on an engine imports the base and installs the dependency layer), then a
    comment line appended to a module and the build timed again. Goal <= 20 s. Baseline in
    the same run: the least Docker itself needs to put that one changed file into an image
    (`docker build` of `FROM <node image>` + `COPY` of the file). In full mode (not
    --quick) a build from an empty image cache too (debootstrap, dependency wheels,
    everything: what CI's first run pays), reported as `cold_build_s`.
(c) restart gap: a workload on host 1 pings one on host 2 every 10 ms (`ping -D`, from
    100 answers before) while host 2's node container restarts (`docker restart
    calico-node`: SIGTERM, BIRD's graceful restart, start) until the node runs again with
    BGP Established and BIRD's graceful restart done and the ping is answered again, plus
    1 s. Reported: packets sent, lost, and the longest time between two answers. Goal: 0
    lost. For comparison in the same run: the same ping across `calicoctl node stop
    --force` + `calicoctl node` (BIRD closes its sessions, peers withdraw the routes).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import emit, median, parser, ratio
from bench.node import established, parallel
from calicoctl.nodeimage import DEFAULT_IMAGE, packaged_files, source_root
from netsim.dockerd import DockerEngine
from netsim.dockerhosts import DockerHosts
from netsim.netns import Namespace
from netsim.nodeimage import node_image_archive
from netsim.topology import Host, Topology, calicoctl_path
from netsim.wait import wait_for

POOL = "198.19.0.0/16"
PROFILE = "bench"
UP_DEADLINE_S = 120.0
PING_INTERVAL_S = 0.01


# --- (a) cluster up ----------------------------------------------------------------------------

def reset(topo: Topology, hosts: DockerHosts | None) -> None:
    """No node running, an empty datastore, empty run and log directories."""
    for h in topo.hosts:
        if hosts is not None:
            hosts.engine(h).docker("rm", "-f", "calico-node", check=False)
        topo.calicoctl(h, "node", "stop", "--force", "--runtime=none", check=False)
        for d in ("run", "log"):
            shutil.rmtree(h.dir / d, ignore_errors=True)
    store = topo.datastore()
    store.delete_prefix("/calico/")
    store.close()


def cluster_up(topo: Topology, start: Callable[[Host], Any]) -> dict[str, float]:
    """Seconds from starting every node at once until all returned and all are meshed."""
    hosts = topo.hosts
    want = len(hosts) - 1
    returned: dict[str, float] = {}
    meshed: dict[str, float] = {}
    errors: list[BaseException] = []
    started = time.monotonic()

    def run(h: Host) -> None:
        try:
            start(h)
            returned[h.name] = time.monotonic() - started
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    deadline = started + UP_DEADLINE_S
    while len(meshed) < len(hosts) and not errors:
        for h in hosts:
            if h.name not in meshed and established(str(h.dir / "run" / "bird.ctl")) == want:
                meshed[h.name] = time.monotonic() - started
        if time.monotonic() > deadline:
            raise TimeoutError(f"not meshed after {UP_DEADLINE_S:.0f} s: {sorted(meshed)}")
        time.sleep(0.05)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {"total_s": max(*returned.values(), *meshed.values()),
            "commands_returned_s": max(returned.values()),
            "bgp_established_s": max(meshed.values())}


def cluster_up_rounds(topo: Topology, hosts: DockerHosts, rounds: int) -> dict[str, Any]:
    results: dict[str, list[dict[str, float]]] = {"none": [], "docker": []}
    for _ in range(rounds):
        for runtime in ("none", "docker"):
            reset(topo, hosts)
            if runtime == "none":
                results[runtime].append(cluster_up(topo, topo.start_node))
            else:
                results[runtime].append(cluster_up(topo, hosts.start_node))
    reset(topo, hosts)

    def summary(runs: list[dict[str, float]]) -> dict[str, Any]:
        return {k: round(median([r[k] for r in runs]), 3) for k in runs[0]} | {
            "rounds_total_s": [round(r["total_s"], 3) for r in runs]}

    docker, none = summary(results["docker"]), summary(results["none"])
    up = {"hosts": len(topo.hosts), "rounds": rounds, **docker,
          "clock": {"start": "calicoctl node started on every host at once",
                    "stop": "every command returned (programs running) and every host has "
                            "all its BGP sessions Established"},
          "baseline": {"name": "calicoctl node --runtime=none (same programs, no Docker)",
                       **none},
          "ratio": ratio(docker["total_s"], none["total_s"]), "goal": {"max_ratio": 1.5}}
    up["goal_met"] = up["ratio"] <= up["goal"]["max_ratio"]
    return up


# --- (b) image rebuild -------------------------------------------------------------------------

def _build(engine: DockerEngine, source: Path, env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    proc = subprocess.run([calicoctl_path(), "node", "image", "build", "--source", str(source)],
                          env={**os.environ, **engine.env(), **(env or {})},
                          capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"image build failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.monotonic() - started


def rebuild(workdir: Path, cold: bool) -> dict[str, Any]:
    root = source_root()
    source = workdir / "src"
    for rel in [*packaged_files(root), Path("node-image/Dockerfile")]:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, source / rel)
    ns = Namespace("bimg")
    engine = None
    try:
        engine = DockerEngine.start(ns.name, parent=workdir)
        cold_s = None
        if cold:
            cold_s = _build(engine, source, {"CALICO_IMAGE_CACHE": str(workdir / "cache")})
            engine.docker("rmi", "-f", DEFAULT_IMAGE, check=False)
            engine.docker("image", "prune", "-af", check=False)
        first = _build(engine, source)
        module = source / "calicoctl" / "version.py"
        module.write_text(module.read_text() + "# a one-line change\n")
        changed = _build(engine, source)
        # The floor: Docker putting that one file into the image, nothing else.
        floor = workdir / "floor"
        floor.mkdir()
        shutil.copy2(module, floor / "version.py")
        (floor / "Dockerfile").write_text(
            f"FROM {DEFAULT_IMAGE}\nCOPY version.py "
            "/opt/calico/lib/python3.11/site-packages/calicoctl/version.py\n")
        module.write_text(module.read_text() + "# another\n")
        shutil.copy2(module, floor / "version.py")
        started = time.monotonic()
        engine.docker("build", "-q", "-t", "bench/floor:1", str(floor), timeout=300)
        floor_s = time.monotonic() - started
    finally:
        if engine is not None:
            engine.stop()
        ns.delete()
    result: dict[str, Any] = {
        "first_build_on_engine_s": round(first, 3), "rebuild_s": round(changed, 3),
        "clock": {"start": "calicoctl node image build started after a one-line change",
                  "stop": "the command returned with the image tagged"},
        "baseline": {"name": "docker build: FROM the node image + COPY of the changed file",
                     "build_s": round(floor_s, 3)},
        "ratio": ratio(changed, floor_s), "goal": {"max_s": 20.0}}
    if cold_s is not None:
        result["cold_build_s"] = round(cold_s, 3)
    result["goal_met"] = changed <= result["goal"]["max_s"]
    return result


# --- (c) restart gap ---------------------------------------------------------------------------

class Pinger:
    """`ping -D -i 0.01` from a namespace into a file; gaps come from the answers' times."""

    def __init__(self, ns: Namespace, address: str, path: Path) -> None:
        self.path = path
        with open(path, "w") as out:
            self.proc = subprocess.Popen(["ip", "netns", "exec", ns.name, "ping", "-D", "-n",
                                          "-i", str(PING_INTERVAL_S), "-W", "1", address],
                                         stdout=out, stderr=subprocess.STDOUT)

    def answers(self) -> list[float]:
        """The times (epoch seconds) of the answers so far."""
        text = self.path.read_text(errors="replace")
        return [float(t) for t in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", text, re.M)]

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=20)
        out = self.path.read_text(errors="replace")
        summary = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        if summary is None:
            raise RuntimeError(f"ping said: {out[-500:]}")
        sent, received = int(summary.group(1)), int(summary.group(2))
        times = self.answers()
        longest = max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)
        return {"sent": sent, "received": received, "lost": sent - received,
                "longest_gap_ms": round(longest * 1000, 1)}


def node_back(hosts: DockerHosts, host: Host, peers: int, graceful: bool) -> bool:
    if established(str(host.dir / "run" / "bird.ctl")) != peers:
        return False
    st = json.loads(hosts.calicoctl(host, "node", "status", "-o", "json").stdout)
    if not all(p["state"] == "RUNNING" for p in st["programs"]):
        return False
    log = (host.dir / "log" / "bird.log").read_text(errors="replace")
    return not graceful or log.count("Graceful restart done") >= 2


def restart_gap(topo: Topology, hosts: DockerHosts, made: list[Namespace],
                workdir: Path) -> dict[str, Any]:
    h1, h2 = topo.hosts[0], topo.hosts[1]
    parallel(hosts.start_node, topo.hosts)
    hosts.calicoctl(h1, "pool", "add", POOL)
    hosts.calicoctl(h1, "profile", "add", PROFILE)
    wls = []
    for h in (h1, h2):
        ns = Namespace("bndk-w")
        made.append(ns)
        out = hosts.calicoctl(h, "container", "add", ns.name, "ipv4").stdout
        hosts.calicoctl(h, "container", ns.name, "profile", "set", PROFILE)
        wls.append((ns, out.split()[1].split("/")[0]))
    (w1, _), (_, a2) = wls
    wait_for(lambda: w1.exec("ping", "-c", "1", "-W", "1", a2, check=False).returncode == 0,
             60, message="w1 reaching w2")
    peers = len(topo.hosts) - 1

    def measure(action: Callable[[], object], graceful: bool, name: str) -> dict[str, Any]:
        pinger = Pinger(w1, a2, workdir / f"ping-{name}.txt")
        wait_for(lambda: len(pinger.answers()) >= 100, 10, message="answers flowing")
        started = time.monotonic()
        action()
        wait_for(lambda: node_back(hosts, h2, peers, graceful), UP_DEADLINE_S,
                 message="host2's node back")
        back = time.monotonic() - started
        # ... and w1's ping answered again (after a withdrawal that takes BGP's time).
        back_at = time.time()
        wait_for(lambda: pinger.answers()[-1] > back_at, UP_DEADLINE_S,
                 message="answers flowing again")
        time.sleep(1.0)
        return {**pinger.stop(), "node_back_s": round(back, 3)}

    restart = measure(lambda: hosts.engine(h2).docker("restart", "calico-node", timeout=120),
                      graceful=True, name="restart")

    def stop_start() -> None:
        hosts.calicoctl(h2, "node", "stop", "--force")
        hosts.start_node(h2)

    withdrawn = measure(stop_start, graceful=False, name="stop-start")
    result = {"interval_ms": PING_INTERVAL_S * 1000, **restart,
              "clock": {"start": "100 answers to the ping before `docker restart "
                                 "calico-node`",
                        "stop": "1 s after host2's node runs again (BGP Established, BIRD's "
                                "graceful restart done) and the ping is answered again"},
              "baseline": {"name": "calicoctl node stop --force + calicoctl node "
                                   "(sessions closed, routes withdrawn)", **withdrawn},
              "goal": {"max_lost": 0}}
    result["goal_met"] = restart["lost"] <= 0
    return result


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    n, rounds = (2, 1) if args.quick else (3, 3)
    result: dict[str, Any] = {"benchmark": "node_docker", "quick": args.quick,
                              "machine": {"cpus": os.cpu_count(),
                                          "loadavg_1m_at_start": os.getloadavg()[0]}}
    started = time.monotonic()
    node_image_archive()
    result["image_archive_ready_s"] = round(time.monotonic() - started, 3)
    made: list[Namespace] = []
    with Topology("bndk", hosts=n) as topo, DockerHosts(topo) as hosts:
        try:
            result["cluster_up"] = cluster_up_rounds(topo, hosts, rounds)
            result["restart"] = restart_gap(topo, hosts, made, topo.dir)
        finally:
            for ns in made:
                ns.delete()
    with tempfile.TemporaryDirectory(prefix="bench-img-") as workdir:
        result["rebuild"] = rebuild(Path(workdir), cold=not args.quick)
    result["ratio"] = result["cluster_up"]["ratio"]
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
