"""Benchmark: IPAM single-address assignment latency and throughput, against raw CAS.

Starts a private etcd and measures, in one run:
- one client: N single-address `auto_assign` calls (N=5,000; --quick 300), each with its
  own handle, for one host, from a /16 pool (latency p50/p99, throughput); baseline: one
  raw compare-and-swap client - a transaction comparing one key's mod_revision and
  putting it (exactly what `Datastore.cas` sends), in a loop, measured before and after;
- four clients at once: N assignments split over 4 processes (each its own Datastore
  client and its own host), started together; baseline: 4 raw CAS processes at once,
  each on its own key (the best 4 writers can do), same start signal.
Clocks: each call's latency from call to return; throughput = calls / wall time from the
start signal to the last process finishing.
Goals (issue 3): one client's p99 <= 50 ms and throughput >= 40% of one raw CAS client's.
The four-client ratio has no goal; it is reported.
etcd keeps its data on tmpfs (/dev/shm) by default: the figures then show the client's
own cost and do not depend on other disk I/O on the machine. `--disk` puts it on a real
filesystem (`--disk-dir`, default /var/tmp), checked with statfs: the run fails if that
is tmpfs or ramfs. The JSON names the filesystem used.
Prints one JSON object. Run as `python -m bench.ipam [--quick] [--disk [--disk-dir D]]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import emit, parser, percentile, rate, ratio
from libcalico import keyspace
from libcalico.datastore import Datastore, EtcdSettings, ModRevisionIs, Put
from libcalico.ipam import IPAMClient
from libcalico.model import IPPool

ROOT = Path(__file__).resolve().parents[1]
POOL = "198.18.0.0/16"
GOAL_P99_MS = 50.0
GOAL_RATIO = 0.4
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")


def summarize(latencies: list[float], wall: float) -> dict[str, float]:
    return {"count": len(latencies), "p50_ms": round(percentile(latencies, 50) * 1000, 3),
            "p99_ms": round(percentile(latencies, 99) * 1000, 3),
            "max_ms": round(max(latencies) * 1000, 3), "per_s": rate(len(latencies), wall)}


def cas_loop(store: Datastore, count: int, name: str) -> tuple[list[float], float]:
    """`count` compare-and-swaps of one key, each on the revision the last one made."""
    key = f"{keyspace.ROOT}/bench/cas/{name}"
    revision = store.put(key, "0")
    latencies = []
    start = time.perf_counter()
    for i in range(count):
        t = time.perf_counter()
        result = store.txn_result([ModRevisionIs(key, revision)], [Put(key, str(i))])
        latencies.append(time.perf_counter() - t)
        if not result.succeeded:
            raise RuntimeError(f"raw CAS on {key} lost: another writer on a private key")
        revision = result.revision
    return latencies, time.perf_counter() - start


def raw_cas(store: Datastore, count: int) -> dict[str, float]:
    return summarize(*cas_loop(store, count, "single"))


def assign_loop(store: Datastore, count: int, host: str, prefix: str) -> tuple[list[float], float]:
    client = IPAMClient(store)
    latencies = []
    start = time.perf_counter()
    for i in range(count):
        t = time.perf_counter()
        result = client.auto_assign(1, 0, f"{prefix}-{i}", host=host)
        latencies.append(time.perf_counter() - t)
        if len(result.ipv4s) != 1:
            raise RuntimeError(f"assignment {i} failed: {result.messages}")
    return latencies, time.perf_counter() - start


def worker(mode: str, count: int, host: str) -> None:
    """Child process: wait for "go" on stdin, assign (or raw CAS on a key of its own),
    print the latencies as JSON."""
    store = Datastore(EtcdSettings.from_env(timeout=30.0))
    IPAMClient(store).state.pool_map(4)  # connect before the start signal
    print("ready", flush=True)
    sys.stdin.readline()
    if mode == "cas":
        latencies, wall = cas_loop(store, count, host)
    else:
        latencies, wall = assign_loop(store, count, host, host)
    print(json.dumps({"latencies": latencies, "wall": wall}), flush=True)


def four_clients(env: dict[str, str], total: int, mode: str = "assign") -> dict[str, float]:
    """`total` operations split over 4 processes started together (assign or raw CAS)."""
    each = total // 4
    procs = [subprocess.Popen(
        [sys.executable, "-m", "bench.ipam", "--worker", mode, "--count", str(each),
         "--host", f"bench-client-{i}"], cwd=ROOT, env=dict(os.environ, **env,
                                                           PYTHONPATH=str(ROOT)),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for i in range(4)]
    try:
        for p in procs:  # children import and connect outside the timing
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("benchmark worker failed to start")
        start = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.communicate(timeout=600)[0]) for p in procs]
        wall = time.perf_counter() - start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    latencies = [x for r in results for x in r["latencies"]]
    return summarize(latencies, wall)


def filesystem(path: str) -> str:
    """The type of the filesystem holding `path`, from statfs (`stat -f`)."""
    out = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True,
                         check=True).stdout.strip()
    return out


def run(quick: bool, data_dir: str) -> dict[str, object]:
    from netsim.etcd import EtcdServer

    count = 300 if quick else 5000
    cas_count = min(count, 2000)
    with EtcdServer(data_dir=data_dir) as server:
        store = server.client(timeout=30.0)
        fs = filesystem(os.path.join(server.data_dir, "data"))
        store.put(keyspace.pool_key(POOL), json.dumps(IPPool(POOL).to_json()))
        baseline = raw_cas(store, cas_count)
        latencies, wall = assign_loop(store, count, "bench-single", "single")
        single = summarize(latencies, wall)
        store.delete_prefix(keyspace.IPAM_DIR)
        cas_four = four_clients(server.env(), cas_count, "cas")
        multi = four_clients(server.env(), count)
        baseline_after = raw_cas(store, cas_count // 2)
        store.close()
    cas_rate = (baseline["per_s"] + baseline_after["per_s"]) / 2
    one_ratio = ratio(single["per_s"], cas_rate)
    return {
        "benchmark": "ipam", "quick": quick, "assignments": count,
        "etcd_data": {"dir": data_dir, "filesystem": fs},
        "clock": "each call from call to return; throughput = calls / wall time from the "
                 "start (signal) to the last call returning",
        "baseline": {
            "name": "raw compare-and-swap of one key per client (the transaction "
                    "Datastore.cas sends), in a loop",
            "raw_cas": baseline, "raw_cas_after": baseline_after,
            "cas_per_s": round(cas_rate, 1),
            "four_raw_cas_clients": {"name": "4 processes at once, each CAS-ing a key of "
                                             "its own", **cas_four}},
        "one_client": single, "four_clients": multi,
        "ratio": one_ratio,
        "ratio_four_clients": ratio(multi["per_s"], cas_four["per_s"]),
        "goals": {"one_client_p99_ms_max": GOAL_P99_MS, "one_client_ratio_min": GOAL_RATIO,
                  "four_clients": None},
        "goals_met": {"p99": single["p99_ms"] <= GOAL_P99_MS, "ratio": one_ratio >= GOAL_RATIO},
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--disk", action="store_true",
                   help="keep etcd's data on a real filesystem (fsync-bound and at the mercy "
                        "of other I/O on the machine) instead of /dev/shm")
    p.add_argument("--disk-dir", default="/var/tmp",
                   help="where --disk puts etcd's data (must not be tmpfs; default /var/tmp)")
    p.add_argument("--worker", choices=("assign", "cas"), help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--host", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.count, args.host)
        return 0
    parent = args.disk_dir if args.disk else "/dev/shm"
    fs = filesystem(parent)
    if args.disk and fs in MEMORY_FILESYSTEMS:
        print(f"error: --disk-dir {parent} is on {fs}, not a disk; give a directory on a "
              "real filesystem", file=sys.stderr)
        return 2
    data_dir = tempfile.mkdtemp(prefix="ipam-bench-etcd-", dir=parent)
    try:
        result = run(args.quick, data_dir)
        used = result["etcd_data"]["filesystem"]  # type: ignore[index]
        if args.disk and used in MEMORY_FILESYSTEMS:
            raise RuntimeError(f"etcd's data ended up on {used}")
        emit(result)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
