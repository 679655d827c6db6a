"""Benchmark: calicoctl start-up and data-command wall time, against baselines.

Starts a private etcd, writes N profiles (N=1,000; --quick 100, each with rules, tags
and labels keys) and one pool, then measures the median wall time (clock: from starting
the process to its exit) of REPS runs of:
- `calicoctl version` and `calicoctl --help` (goal <= 150 ms), against `python -c pass`
  (the interpreter's own start-up);
- `calicoctl pool show`, `calicoctl profile show` and `calicoctl profile show --detailed`
  (goal <= 400 ms each), each against `etcdctl get` (ETCDCTL_API=3) reading exactly the
  keys the command reads: the pool keys (`--prefix /calico/v1/ipam/`), the profile keys
  without values (`--prefix --keys-only`: `profile show` lists names) and the profile
  keys with values (`--prefix`: `--detailed` decodes every profile). Each baseline's key
  count is checked against what was written.
Prints one JSON object with the figures, the baselines and the ratios.
Run as `python -m bench.calicoctl [--quick]`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from bench.common import emit, median, parser, ratio, timed

GOAL_STARTUP_MS = 150.0
GOAL_DATA_MS = 400.0


def wall_ms(cmd: Sequence[str], env: dict[str, str], reps: int) -> float:
    """Median wall time of `cmd` over `reps` runs (after one warm-up), in ms."""
    times = []
    for i in range(reps + 1):
        with timed() as sw:
            proc = subprocess.run(list(cmd), env=env, capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode()[-500:]}")
        if i:
            times.append(sw.seconds * 1000)
    return round(median(times), 1)


def populate(url: str, profiles: int) -> None:
    from libcalico.client import CalicoClient
    from libcalico.datastore import Datastore, EtcdSettings
    from libcalico.model import IPPool, Profile, Rule, Rules
    from libcalico.model.rules import parse_ports

    store = Datastore(EtcdSettings.from_env({"ETCD_ENDPOINTS": url}))
    try:
        client = CalicoClient(store)
        client.add_pool(IPPool("198.18.0.0/16", nat_outgoing=True))
        batch = []
        for i in range(profiles):
            name = f"bench-profile-{i:05d}"
            rules = Rules((Rule(action="allow", src_tag=name),
                           Rule(action="deny", protocol="tcp",
                                dst_ports=parse_ports("dst_ports", "22"))),
                          (Rule(action="allow"),))
            batch.append(Profile(name, rules, (name,), {"app": f"a{i % 10}"}))
        client.apply_resources(batch, "apply")
    finally:
        store.close()


def etcdctl_keys(url: str, env: dict[str, str], *args: str) -> list[str]:
    """The keys `etcdctl get ARGS` returns (to check a baseline reads the right keys)."""
    out = subprocess.run(["etcdctl", "--endpoints", url, "get", "--keys-only", *args],
                         env=env, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    profiles = 100 if args.quick else 1000
    reps = 3 if args.quick else 7
    from libcalico import keyspace as ks
    from netsim.etcd import EtcdServer
    from netsim.topology import calicoctl_path

    data_dir = tempfile.mkdtemp(prefix="ctl-bench-etcd-", dir="/dev/shm")
    with EtcdServer(data_dir=data_dir) as server:
        populate(server.url, profiles)
        base = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        env = {**base, "ETCD_ENDPOINTS": server.url}
        ctl_env = {**base, "ETCDCTL_API": "3"}
        etcdctl = ["etcdctl", "--endpoints", server.url, "get", "--prefix"]
        # the baselines read exactly the keys the commands read
        pool_keys = etcdctl_keys(server.url, ctl_env, "--prefix", ks.POOL_DIR)
        profile_keys = etcdctl_keys(server.url, ctl_env, "--prefix", ks.PROFILE_DIR)
        if len(pool_keys) != 1 or not all(isinstance(ks.parse_key(k), ks.PoolKey)
                                          for k in pool_keys):
            raise RuntimeError(f"{ks.POOL_DIR} holds more than the one pool: {pool_keys[:5]}")
        if len(profile_keys) != 3 * profiles:
            raise RuntimeError(f"{len(profile_keys)} profile keys, not {3 * profiles}")
        ctl = calicoctl_path()
        python = wall_ms([sys.executable, "-c", "pass"], base, reps)
        baselines = {
            "pool_show": wall_ms([*etcdctl, ks.POOL_DIR], ctl_env, reps),
            "profile_show": wall_ms([*etcdctl, "--keys-only", ks.PROFILE_DIR], ctl_env, reps),
            "profile_show_detailed": wall_ms([*etcdctl, ks.PROFILE_DIR], ctl_env, reps),
        }
        results = {
            "version": wall_ms([ctl, "version"], env, reps),
            "help": wall_ms([ctl, "--help"], env, reps),
            "pool_show": wall_ms([ctl, "pool", "show"], env, reps),
            "profile_show": wall_ms([ctl, "profile", "show"], env, reps),
            "profile_show_detailed": wall_ms([ctl, "profile", "show", "--detailed"], env, reps),
        }
        out = subprocess.run([ctl, "profile", "show", "-o", "json"], env=env,
                             capture_output=True, text=True, check=True).stdout
        shown = len(json.loads(out))
    shutil.rmtree(data_dir, ignore_errors=True)
    goals = {"version": GOAL_STARTUP_MS, "help": GOAL_STARTUP_MS, "pool_show": GOAL_DATA_MS,
             "profile_show": GOAL_DATA_MS, "profile_show_detailed": GOAL_DATA_MS}
    emit({
        "benchmark": "calicoctl",
        "quick": args.quick,
        "profiles": profiles,
        "profiles_shown": shown,
        "repetitions": reps,
        "clock": "wall time of each process from start to exit, median of the repetitions "
                 "after one warm-up run",
        "wall_ms": results,
        "baseline_ms": {"python_c_pass": python,
                        "etcdctl_get_pool_keys": baselines["pool_show"],
                        "etcdctl_get_profile_keys_only": baselines["profile_show"],
                        "etcdctl_get_profile_keys_and_values":
                            baselines["profile_show_detailed"]},
        "baseline_names": {
            "python_c_pass": "python -c pass (the interpreter's start-up)",
            "etcdctl_get_pool_keys": f"etcdctl get --prefix {ks.POOL_DIR} "
                                     f"({len(pool_keys)} key, what pool show reads)",
            "etcdctl_get_profile_keys_only": f"etcdctl get --prefix --keys-only "
                                             f"{ks.PROFILE_DIR} ({len(profile_keys)} keys, "
                                             "what profile show reads)",
            "etcdctl_get_profile_keys_and_values": f"etcdctl get --prefix {ks.PROFILE_DIR} "
                                                   f"({len(profile_keys)} keys with values, "
                                                   "what profile show --detailed reads)"},
        # The headline: `profile show` against etcdctl reading the same keys.
        "ratio": ratio(results["profile_show"], baselines["profile_show"]),
        "ratios": {
            "version_vs_python": ratio(results["version"], python),
            "help_vs_python": ratio(results["help"], python),
            "pool_show_vs_etcdctl": ratio(results["pool_show"], baselines["pool_show"]),
            "profile_show_vs_etcdctl": ratio(results["profile_show"],
                                             baselines["profile_show"]),
            "profile_show_detailed_vs_etcdctl": ratio(results["profile_show_detailed"],
                                                      baselines["profile_show_detailed"]),
        },
        "goals_ms": {"startup": GOAL_STARTUP_MS, "data": GOAL_DATA_MS},
        "goals_met": {name: results[name] <= goal for name, goal in goals.items()},
    })


if __name__ == "__main__":
    main()
