"""Benchmark: CNI ADD and DEL latency of the `calico` plugin, against the reference
`bridge` + `host-local` plugins, and 20 parallel ADDs on one host.

Sets up one simulated host (a network namespace) and a private etcd (tmpfs, reached on
its unix socket, as a node's plugin would reach its etcd), then for N containers
(N=100; --quick 20), each with a fresh network namespace made beforehand as a runtime
does, runs ADD then later DEL through each plugin exactly as a runtime calls it: the
executable started with the CNI_* variables and the network configuration on stdin,
inside the host's namespace. Calls alternate between the two plugins so both see the
same load.
- clock (ADD, DEL): from starting the plugin process to its exit with the result read
  (where the runtime continues: it cannot start the container before ADD returns).
- baseline: the reference plugins (Debian containernetworking-plugins) set up like ours:
  `bridge` (a bridge in the host, the host as gateway, no masquerade) with `host-local`
  IPAM (its own data dir), the same spec version (1.0.0), same host, same namespaces.
  They are Go binaries; what remains between us is mostly Python's start-up and imports,
  reported apart (`startup_ms`: `python -I -S -c pass`, the launcher's interpreter, and
  the plugin's VERSION). Our side is the launcher `calicoctl cni install` writes.
- also reported: CPU time (user + system) of each plugin process, p50 (`cpu_p50_ms`,
  `ratio_cpu`): what wall time approaches on a quiet machine, and steadier than wall
  time on a shared one (note `load`).
- parallel: 20 ADDs on one host started at once (all calico), then 20 DELs at once:
  every ADD must succeed with distinct addresses, and after the DELs IPAM holds nothing.
Goals (issue 14): ADD p99 <= 2x the baseline's p99 and <= 300 ms; parallel: no duplicate
address. The dataplane side (felix's route, the first packet) is the node benchmark's
"workload reachable".
Prints one JSON object. Run as `python -m bench.cni [--quick]`.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import emit, parser, percentile, ratio
from libcalico import keyspace
from libcalico.model import IPPool
from netsim.etcd import EtcdServer, scratch_dir
from netsim.netns import Namespace

POOL = "198.18.128.0/18"
REF_SUBNET = "198.19.128.0/18"
GOAL_MAX_RATIO = 2.0
GOAL_MAX_P99_MS = 300.0
PARALLEL = 20
REFERENCE_DIR = "/usr/lib/cni"


def install_plugins(bin_dir: str) -> str:
    """The plugins as an operator installs them (`calicoctl cni install`); the path of
    the `calico` launcher."""
    from netsim.topology import calicoctl_path

    proc = subprocess.run([calicoctl_path(), "cni", "install", "--bin-dir", bin_dir],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"calicoctl cni install failed: {proc.stderr}")
    return os.path.join(bin_dir, "calico")


def calico_conf(etcd_url: str, log_file: str) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "bench-calico", "type": "calico",
            "etcd_endpoints": etcd_url, "nodename": "bench-node", "log_level": "info",
            "log_file_path": log_file, "ipam": {"type": "calico-ipam"}}


def reference_conf(data_dir: str) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "bench-ref", "type": "bridge",
            "bridge": "benchbr0", "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "subnet": REF_SUBNET, "dataDir": data_dir}}


def join_netns(name: str) -> None:
    """Move the calling thread into the namespace /run/netns/NAME (a thread pool's
    initializer: processes it starts are born there, as a runtime's plugins are, with
    no `nsenter` between the clock and the plugin)."""
    import ctypes

    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


def in_host(host: Namespace, workers: int = 1) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, initializer=join_netns, initargs=(host.name,))


def call(binary: str, command: str, conf: Mapping[str, Any], container: str, netns: str,
         ifname: str = "eth0", cpu: list[float] | None = None
         ) -> tuple[float, dict[str, Any] | None]:
    """One plugin call as a runtime makes it, from a thread inside the host's namespace;
    (seconds, parsed stdout)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": container, "CNI_NETNS": f"/run/netns/{netns}",
           "CNI_IFNAME": ifname, "CNI_PATH": f"{os.path.dirname(binary)}:{REFERENCE_DIR}",
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAME={container}"}
    data = json.dumps(conf).encode()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([binary], input=data, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{os.path.basename(binary)} {command} {container} failed: "
                           f"{proc.stdout.decode()} {proc.stderr.decode()}")
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    if cpu is not None:  # exact only while this is the one child running (sequential use)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return elapsed, out


def stats(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"count": len(ms), "p50_ms": round(percentile(ms, 50), 1),
            "p99_ms": round(percentile(ms, 99), 1), "max_ms": round(max(ms), 1)}


def startup(calico: str, conf: Mapping[str, Any]) -> dict[str, float]:
    """Median start-up floors: the interpreter alone, and the plugin's VERSION."""
    def median_of(cmd: list[str], env: Mapping[str, str], stdin: bytes) -> float:
        times = []
        for _ in range(7):
            start = time.perf_counter()
            subprocess.run(cmd, input=stdin, env=dict(env), capture_output=True, check=True)
            times.append(time.perf_counter() - start)
        return round(sorted(times)[3] * 1000, 1)

    return {"python_c_pass": median_of([sys.executable, "-I", "-S", "-c", "pass"], {}, b""),
            "calico_version": median_of([calico], {"CNI_COMMAND": "VERSION"},
                                        json.dumps(conf).encode())}


def parallel(host: Namespace, calico: str, conf: Mapping[str, Any], store: Any
             ) -> dict[str, Any]:
    from libcalico.ipam import IPAMClient

    names = [Namespace("cnib-p") for _ in range(PARALLEL)]
    try:
        def one(command: str, i: int) -> tuple[float, dict[str, Any] | None]:
            return call(calico, command, conf, f"par{i}", names[i].name)

        with in_host(host, PARALLEL) as pool:
            list(pool.map(lambda _: None, range(PARALLEL)))  # threads in the host first
            start = time.perf_counter()
            results = list(pool.map(lambda i: one("ADD", i), range(PARALLEL)))
            add_wall = time.perf_counter() - start
            addresses = [ip["address"] for _, out in results
                         for ip in (out or {}).get("ips", [])]
            start = time.perf_counter()
            list(pool.map(lambda i: one("DEL", i), range(PARALLEL)))
            del_wall = time.perf_counter() - start
        left = sum(u.allocated for u in IPAMClient(store).usage())
    finally:
        for ns in names:
            ns.delete()
    return {"adds": PARALLEL, "addresses": len(addresses),
            "distinct_addresses": len(set(addresses)),
            "duplicates": len(addresses) - len(set(addresses)),
            "add_wall_ms": round(add_wall * 1000, 1), "del_wall_ms": round(del_wall * 1000, 1),
            "add_p99_ms": stats([t for t, _ in results])["p99_ms"],
            "allocated_after_del": left,
            "goal_met": len(set(addresses)) == len(addresses) == PARALLEL and left == 0}


def run(quick: bool) -> dict[str, Any]:
    count = 20 if quick else 100
    bridge = os.path.join(REFERENCE_DIR, "bridge")
    if not os.access(bridge, os.X_OK):
        raise RuntimeError(f"{bridge} missing (apt-get install containernetworking-plugins)")
    tmp = tempfile.mkdtemp(prefix="cni-bench-")
    calico = install_plugins(os.path.join(tmp, "bin"))
    server = EtcdServer(unix_socket=True, data_dir=tempfile.mkdtemp(prefix="cni-bench-etcd-",
                                                                   dir=scratch_dir()))
    host = None
    containers: list[Namespace] = []
    try:
        server.start()
        store = server.client(timeout=30.0)
        store.put(keyspace.pool_key(POOL), json.dumps(IPPool(POOL).to_json()))
        host = Namespace("cnib-host")
        ours = calico_conf(server.client_url, os.path.join(tmp, "cni.log"))
        ref = reference_conf(os.path.join(tmp, "host-local"))
        containers = [Namespace("cnib-c") for _ in range(count)]
        times: dict[str, list[float]] = {"calico_add": [], "ref_add": [], "calico_del": [],
                                         "ref_del": []}
        cpu: dict[str, list[float]] = {k: [] for k in times}
        warm = Namespace("cnib-w")
        with in_host(host) as runner:
            def run_in_host(*a: Any) -> tuple[float, dict[str, Any] | None]:
                return runner.submit(call, *a).result()

            try:  # a warm-up call each (page cache, the bridge's creation), not counted
                for binary, conf in ((calico, ours), (bridge, ref)):
                    run_in_host(binary, "ADD", conf, "warmup", warm.name)
                    run_in_host(binary, "DEL", conf, "warmup", warm.name)
            finally:
                warm.delete()
            for command in ("ADD", "DEL"):
                for i, ns in enumerate(containers):
                    order = [("calico", calico, ours, "eth0"), ("ref", bridge, ref, "eth1")]
                    if i % 2:
                        order.reverse()
                    # Each container is attached to both networks, as eth0 and eth1.
                    for side, binary, conf, ifname in order:
                        key = f"{side}_{command.lower()}"
                        seconds, _ = run_in_host(binary, command, conf, f"c{i}", ns.name,
                                                 ifname, cpu[key])
                        times[key].append(seconds)
            floors = runner.submit(startup, calico, ours).result()
        par = parallel(host, calico, ours, store)
        left = sum(1 for _ in store.list(keyspace.host_workload_dir("bench-node"))[0])
        store.close()
    finally:
        for ns in containers:
            ns.delete()
        if host is not None:
            host.delete()
        server.cleanup()
        shutil.rmtree(server.data_dir, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    add, ref_add = stats(times["calico_add"]), stats(times["ref_add"])
    dele, ref_del = stats(times["calico_del"]), stats(times["ref_del"])
    for figures, key in ((add, "calico_add"), (ref_add, "ref_add"), (dele, "calico_del"),
                         (ref_del, "ref_del")):
        figures["cpu_p50_ms"] = round(percentile([c * 1000 for c in cpu[key]], 50), 1)
    add_ratio = ratio(add["p99_ms"], ref_add["p99_ms"], 2)
    return {
        "benchmark": "cni", "quick": quick, "containers": count, "load": os.getloadavg()[0],
        "clock": {"start": "the plugin process is started (CNI_* variables, config on stdin, "
                           "inside the host's namespace)",
                  "stop": "the process has exited and its stdout (the result) is read"},
        "add": add, "del": dele,
        "baseline": {"name": "reference bridge + host-local plugins (Go), same host, spec "
                             "1.0.0", "add": ref_add, "del": ref_del},
        "ratio": add_ratio,
        "ratio_p50": ratio(add["p50_ms"], ref_add["p50_ms"], 2),
        "ratio_del": ratio(dele["p99_ms"], ref_del["p99_ms"], 2),
        "ratio_cpu": ratio(add["cpu_p50_ms"], ref_add["cpu_p50_ms"], 2),
        "startup_ms": floors,
        "parallel": par,
        "endpoints_left": left,
        "goal": {"max_ratio": GOAL_MAX_RATIO, "max_add_p99_ms": GOAL_MAX_P99_MS},
        "goal_met": {"ratio": add_ratio <= GOAL_MAX_RATIO,
                     "add_p99": add["p99_ms"] <= GOAL_MAX_P99_MS,
                     "parallel": par["goal_met"]},
    }


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    emit(run(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
