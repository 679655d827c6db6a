"""Benchmark: `calicoctl policy trace` on a large datastore, against etcdctl reading it.

Starts a private etcd (on tmpfs) and writes a cluster of H hosts with E workload
endpoints (IPv4 and IPv6, one or two of P profiles each, labels), a host endpoint and a
registered address per host, P profiles (rules with tags, selectors and ports, tags,
labels) and Q tiered policies in 4 tiers (selectors on labels; allow, deny, next-tier):
E=10,000, P=1,000, Q=200, H=50 (--quick: 1,000 / 100 / 20 / 10). Then it runs N
different `calicoctl policy trace` queries (workload to workload by name and by address,
on one host and across hosts; workload to host; outside to workload; host to outside;
N=100, --quick 6), one process each.

Clock: wall time of each command, from process start to exit (the trace reads the keys
under /calico/v1/host/, the config, tiers, policies and pools, and the profiles of the
flow's endpoints, and computes the hosts' chains), p50/p90/p99 and max over the queries
after one warm-up. Baseline, same run: `etcdctl get --prefix /calico/v1/` (ETCDCTL_API=3),
every key of the datastore (a superset of what the trace reads; the ratio is against
it, as in earlier runs), and `etcdctl get --prefix /calico/v1/host/`, the bulk of what
the trace reads (10,100 of the keys), medians of the same number of runs; also
`python -c pass` and `calico-felix-trace` run directly (the part of the time that is the
trace program, without calicoctl's start). CPU time (user + system of each process and
its children) is reported beside the wall times: on a shared machine it shows the cost
apart from waiting for a core, as does the load average, read before and after the
queries. Goal: <= 500 ms per query.
At full size it then runs the randomized real-packet proof at a larger size than the
test suite does (tests/integration/test_policy_trace_truth.py with TRUTH_SEEDS seeds of
TRUTH_FLOWS flows, `--no-truth` to skip) and reports how many flows it checked and
whether every trace verdict matched its packet.
Prints one JSON object. Run as `python -m bench.policy_trace [--quick] [--no-truth]`.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import emit, median, parser, percentile, ratio, timed

GOAL_MS = 500.0
TRUTH_SEEDS, TRUTH_FLOWS = 12, 50
ROOT = Path(__file__).resolve().parents[1]
TXN_BATCH = 100  # etcd's default --max-txn-ops is 128
TIERS = ("security", "platform", "apps", "default-ish")


def cluster_items(hosts: int, endpoints: int, profiles: int, policies: int,
                  rng: random.Random) -> list[tuple[str, str]]:
    """Every key and value of the benchmark's datastore."""
    from libcalico import keyspace as ks

    items: list[tuple[str, str]] = []
    for p in range(profiles):
        name = f"prof-{p:04d}"
        inbound = [
            {"action": "allow", "protocol": "tcp", "src_tag": f"prof-{(p + 1) % profiles:04d}",
             "dst_ports": [80, 443]},
            {"action": "allow", "protocol": "tcp", "src_selector": f'app == "a{p % 20}"',
             "dst_ports": ["8000:8100"]},
            {"action": "deny", "protocol": "tcp", "dst_ports": [22]},
            {"action": "allow", "protocol": "icmp"}]
        items.append((ks.profile_key(name, "rules"),
                      json.dumps({"inbound_rules": inbound,
                                  "outbound_rules": [{"action": "allow"}]})))
        items.append((ks.profile_key(name, "tags"), json.dumps([name])))
        items.append((ks.profile_key(name, "labels"), json.dumps({"team": f"t{p % 7}"})))
    for t, tier in enumerate(TIERS):
        items.append((ks.tier_metadata_key(tier), json.dumps({"order": t * 10})))
    for q in range(policies):
        tier = TIERS[q % len(TIERS)]
        items.append((ks.policy_key(tier, f"pol-{q:03d}"), json.dumps({
            "selector": rng.choice([f'app == "a{q % 20}"', f'team == "t{q % 7}"',
                                    f'app in {{"a{q % 20}", "a{(q + 3) % 20}"}} && has(team)']),
            "order": q % 10,
            "inbound_rules": [
                {"action": "deny", "protocol": "tcp", "dst_ports": [1000 + q]},
                {"action": "allow", "protocol": "udp", "src_selector": f'app == "a{q % 20}"'},
                {"action": "next-tier"}],
            "outbound_rules": [{"action": "next-tier"}]})))
    for h in range(hosts):
        host = f"host{h:02d}"
        items.append((ks.host_bird_ip_key(host), f"198.18.0.{h + 1}"))
        items.append((ks.host_endpoint_key(host, "fabric"), json.dumps({
            "name": "eth0", "profile_ids": [f"prof-{h % profiles:04d}"],
            "labels": {"role": "host"}})))
    for e in range(endpoints):
        host = f"host{e % hosts:02d}"
        prof = [f"prof-{rng.randrange(profiles):04d}" for _ in range(rng.choice([1, 2]))]
        items.append((ks.workload_endpoint_key(host, "k8s", f"pod-{e:05d}", "eth0"),
                      json.dumps({
                          "state": "active", "name": f"cali{e:011d}",
                          "mac": f"ee:ee:ee:{e >> 16 & 255:02x}:{e >> 8 & 255:02x}:"
                                 f"{e & 255:02x}",
                          "profile_ids": sorted(set(prof)),
                          "ipv4_nets": [f"198.19.{e >> 8}.{e & 255}/32"],
                          "ipv6_nets": [f"fd00:19::{e:x}/128"],
                          "labels": {"app": f"a{e % 20}"}})))
    return items


def write(url: str, items: Sequence[tuple[str, str]]) -> None:
    from libcalico.datastore import Datastore, EtcdSettings, Put

    store = Datastore(EtcdSettings.from_env({"ETCD_ENDPOINTS": url}))
    try:
        batches = [items[i:i + TXN_BATCH] for i in range(0, len(items), TXN_BATCH)]
        with ThreadPoolExecutor(4) as pool:
            for ok in pool.map(lambda b: store.txn([], [Put(k, v) for k, v in b]), batches):
                if not ok:
                    raise RuntimeError("an unconditional write transaction failed")
    finally:
        store.close()


def queries(hosts: int, endpoints: int, count: int, rng: random.Random) -> list[list[str]]:
    """`--from ... --to ...` argument lists of different kinds, `count` of them."""
    def pod(e: int, by_address: bool) -> str:
        return f"198.19.{e >> 8}.{e & 255}" if by_address else f"pod-{e:05d}"

    out: list[list[str]] = []
    while len(out) < count:
        a, b = rng.sample(range(endpoints), 2)
        kind = len(out) % 6
        if kind == 0:  # same host, by name
            b = a + hosts if a + hosts < endpoints else a - hosts
            out.append(["--from", pod(a, False), "--to", pod(b, False), "--port", "80"])
        elif kind == 1:  # across hosts, by address
            out.append(["--from", pod(a, True), "--to", pod(b, True), "--port", "443"])
        elif kind == 2:  # to a host (its host endpoint)
            out.append(["--from", pod(a, False), "--to", f"host:host{b % hosts:02d}",
                        "--port", "22"])
        elif kind == 3:  # from outside
            out.append(["--from", "203.0.113.7", "--to", pod(b, True), "--port", "8050"])
        elif kind == 4:  # from a host to outside
            out.append(["--from", f"host:host{a % hosts:02d}", "--to", "203.0.113.7",
                        "--port", "443"])
        else:  # IPv6, UDP
            out.append(["--from", f"fd00:19::{a:x}", "--to", f"fd00:19::{b:x}",
                        "--protocol", "udp", "--port", "53"])
    return out


def wall_ms(cmd: Sequence[str], env: dict[str, str]) -> tuple[float, str]:
    ms, _, out = timed_run(cmd, env)
    return ms, out


def timed_run(cmd: Sequence[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall ms, CPU ms of the process and its children, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with timed() as sw:
        proc = subprocess.run(list(cmd), env=env, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-500:]}")
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return sw.seconds * 1000, cpu, proc.stdout


def truth_run(seeds: int, flows: int) -> dict[str, object]:
    """The real-packet proof, larger: seeds x flows traced flows sent as packets."""
    env = {**os.environ, "CALICO_TRACE_SEEDS": str(seeds), "CALICO_TRACE_FLOWS": str(flows),
           "CALICO_TRACE_SEED": "9000"}
    with timed() as sw:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "tests/integration/test_policy_trace_truth.py"], cwd=ROOT,
                              env=env, capture_output=True, text=True, check=False)
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    return {"seeds": seeds, "flows": seeds * flows, "all_matched": proc.returncode == 0,
            "pytest": summary, "seconds": round(sw.seconds, 1)}


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--no-truth", action="store_true",
                   help="skip the larger real-packet proof of the full run")
    args = p.parse_args()
    quick = args.quick
    hosts, endpoints, profiles, policies = (10, 1000, 100, 20) if quick else \
        (50, 10_000, 1000, 200)
    count = 6 if quick else 100
    rng = random.Random(7)
    from netsim.etcd import EtcdServer
    from netsim.topology import calicoctl_path

    data_dir = tempfile.mkdtemp(prefix="trace-bench-etcd-", dir="/dev/shm")
    try:
        with EtcdServer(data_dir=data_dir) as server:
            items = cluster_items(hosts, endpoints, profiles, policies, rng)
            write(server.url, items)
            base = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
            env = {**base, "ETCD_ENDPOINTS": server.url}
            ctl_env = {**base, "ETCDCTL_API": "3"}
            etcdctl = ["etcdctl", "--endpoints", server.url, "get", "--prefix", "/calico/v1/"]
            etcdctl_host = [*etcdctl[:-1], "/calico/v1/host/"]
            keys = subprocess.run([*etcdctl, "--keys-only"], env=ctl_env, capture_output=True,
                                  text=True, check=True).stdout.split()
            if len(keys) != len(items):
                raise RuntimeError(f"etcdctl sees {len(keys)} keys, {len(items)} written")
            ctl = calicoctl_path()
            program = str(Path(ctl).with_name("calico-felix-trace"))
            flows = queries(hosts, endpoints, count, rng)
            wall_ms([ctl, "policy", "trace", *flows[0]], env)  # warm-up (page cache)
            load_before = os.getloadavg()[0]
            times, cpu, verdicts = [], [], {"allow": 0, "deny": 0}
            for flow in flows:
                ms, cpu_ms, out = timed_run([ctl, "policy", "trace", *flow, "-o", "json"], env)
                times.append(ms)
                cpu.append(cpu_ms)
                verdicts[json.loads(out)["verdict"]] += 1
            direct = [timed_run([program, *flow], env) for flow in flows[:max(3, count // 3)]]
            load = os.getloadavg()[0]
            baseline = [timed_run(etcdctl, ctl_env) for _ in range(count)]
            baseline_host = [timed_run(etcdctl_host, ctl_env) for _ in range(count)]
            python = [wall_ms([sys.executable, "-c", "pass"], base)[0] for _ in range(5)]
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    p50, p99, worst = median(times), percentile(times, 99), max(times)
    truth = None if quick or args.no_truth else truth_run(TRUTH_SEEDS, TRUTH_FLOWS)
    emit({
        "benchmark": "policy_trace",
        "quick": quick,
        "hosts": hosts, "endpoints": endpoints, "profiles": profiles, "policies": policies,
        "keys": len(items),
        "queries": len(times),
        "verdicts": verdicts,
        "clock": "wall time of each `calicoctl policy trace` process from start to exit "
                 "(one query per process, different flows), after one warm-up run",
        "wall_ms": {"p50": round(p50, 1), "p90": round(percentile(times, 90), 1),
                    "p99": round(p99, 1), "max": round(worst, 1)},
        "cpu_ms": {"p50": round(median(cpu), 1), "p90": round(percentile(cpu, 90), 1),
                   "p99": round(percentile(cpu, 99), 1), "max": round(max(cpu), 1)},
        "trace_program_ms": {"p50": round(median([d[0] for d in direct]), 1),
                             "cpu_p50": round(median([d[1] for d in direct]), 1)},
        "baseline_ms": {"etcdctl_get_prefix": round(median([b[0] for b in baseline]), 1),
                        "etcdctl_get_prefix_cpu": round(median([b[1] for b in baseline]), 1),
                        "etcdctl_get_host_dir": round(median([b[0] for b in baseline_host]),
                                                      1),
                        "python_c_pass": round(median(python), 1)},
        "load_average_1m": round(load, 2),
        "load_average_1m_before": round(load_before, 2),
        "baseline_names": {
            "etcdctl_get_prefix": f"etcdctl get --prefix /calico/v1/ ({len(keys)} keys with "
                                  "values: every key, a superset of what the trace reads), "
                                  "median",
            "etcdctl_get_host_dir": "etcdctl get --prefix /calico/v1/host/ (the endpoints, "
                                    "host config and node addresses: the bulk of what the "
                                    "trace reads), median",
            "python_c_pass": "python -c pass (the interpreter's start-up)"},
        "ratio": ratio(p50, median([b[0] for b in baseline])),
        "goal_ms": GOAL_MS,
        "goal_met": worst <= GOAL_MS,
        "goal_met_p99": p99 <= GOAL_MS,
        "goal_met_p50": p50 <= GOAL_MS,
        "truth": truth,
    })


if __name__ == "__main__":
    main()
