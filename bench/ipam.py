"""Benchmark: IPAM single-address assignment latency and throughput, against raw CAS.

Starts a private etcd and measures, in one run:
- baseline: the raw compare-and-swap rate of the same client - a transaction comparing
  one key's mod_revision and putting it (exactly what `Datastore.cas` sends), in a loop;
- one client: N single-address `auto_assign` calls (N=5,000; --quick 300), each with its
  own handle, for one host, from a /16 pool (latency p50/p99, throughput);
- four clients at once: N assignments split over 4 processes (each its own Datastore
  client and its own host), started together.
Goals (issue 3): one client's p99 <= 50 ms and throughput >= 40% of the raw CAS rate.
etcd keeps its data in /dev/shm by default: the figures then show the client's own
cost (the stricter comparison, as the baseline gets faster) and do not depend on other
disk I/O on the machine; `--disk` measures with real fsyncs.
Prints one JSON object. Run as `python -m bench.ipam [--quick] [--disk]`.
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


def summarize(latencies: list[float], wall: float) -> dict[str, float]:
    return {"count": len(latencies), "p50_ms": round(percentile(latencies, 50) * 1000, 3),
            "p99_ms": round(percentile(latencies, 99) * 1000, 3),
            "max_ms": round(max(latencies) * 1000, 3), "per_s": rate(len(latencies), wall)}


def raw_cas(store: Datastore, count: int) -> dict[str, float]:
    key = f"{keyspace.ROOT}/bench/cas"
    revision = store.put(key, "0")
    latencies = []
    start = time.perf_counter()
    for i in range(count):
        t = time.perf_counter()
        result = store.txn_result([ModRevisionIs(key, revision)], [Put(key, str(i))])
        latencies.append(time.perf_counter() - t)
        assert result.succeeded
        revision = result.revision
    return summarize(latencies, time.perf_counter() - start)


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


def worker(count: int, host: str) -> None:
    """Child process: wait for "go" on stdin, assign, print the latencies as JSON."""
    store = Datastore(EtcdSettings.from_env(timeout=30.0))
    IPAMClient(store).state.pool_map(4)  # connect before the start signal
    print("ready", flush=True)
    sys.stdin.readline()
    latencies, wall = assign_loop(store, count, host, host)
    print(json.dumps({"latencies": latencies, "wall": wall}), flush=True)


def four_clients(env: dict[str, str], total: int) -> dict[str, float]:
    each = total // 4
    procs = [subprocess.Popen(
        [sys.executable, "-m", "bench.ipam", "--worker", "--count", str(each),
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


def run(quick: bool, data_dir: str | None) -> dict[str, object]:
    from netsim.etcd import EtcdServer

    count = 300 if quick else 5000
    with EtcdServer(data_dir=data_dir) as server:
        store = server.client(timeout=30.0)
        store.put(keyspace.pool_key(POOL), json.dumps(IPPool(POOL).to_json()))
        baseline = raw_cas(store, min(count, 2000))
        latencies, wall = assign_loop(store, count, "bench-single", "single")
        single = summarize(latencies, wall)
        store.delete_prefix(keyspace.IPAM_DIR)
        multi = four_clients(server.env(), count)
        baseline_after = raw_cas(store, min(count, 2000) // 2)
        store.close()
    cas_rate = (baseline["per_s"] + baseline_after["per_s"]) / 2
    one_ratio = ratio(single["per_s"], cas_rate)
    return {
        "benchmark": "ipam", "quick": quick, "assignments": count,
        "etcd_data": "tmpfs" if data_dir else "disk",
        "baseline": {"raw_cas": baseline, "raw_cas_after": baseline_after,
                     "cas_per_s": round(cas_rate, 1)},
        "one_client": single, "four_clients": multi,
        "ratio": one_ratio,
        "ratio_four_clients": ratio(multi["per_s"], cas_rate),
        "goals": {"one_client_p99_ms_max": GOAL_P99_MS, "one_client_ratio_min": GOAL_RATIO},
        "goals_met": {"p99": single["p99_ms"] <= GOAL_P99_MS, "ratio": one_ratio >= GOAL_RATIO},
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--disk", action="store_true",
                   help="keep etcd's data on disk (fsync-bound and at the mercy of other "
                        "I/O on the machine) instead of /dev/shm")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--host", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.count, args.host)
        return 0
    if args.disk:
        emit(run(args.quick, None))
        return 0
    data_dir = tempfile.mkdtemp(prefix="ipam-bench-etcd-", dir="/dev/shm")
    try:
        emit(run(args.quick, data_dir))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
