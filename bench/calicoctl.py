"""Benchmark: calicoctl start-up and data-command wall time, against baselines.

Starts a private etcd, writes N profiles (N=1,000; --quick 100, each with rules, tags
and labels keys) and one pool, then measures the median wall time of REPS runs of:
- `calicoctl version` and `calicoctl --help` (goal <= 150 ms),
- `calicoctl pool show` and `calicoctl profile show` (goal <= 400 ms),
against, in the same run, `python -c pass` (the interpreter's own start-up) and
`etcdctl get --prefix /calico/v1/policy/profile/` (ETCDCTL_API=3) over the same keys.
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


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    profiles = 100 if args.quick else 1000
    reps = 3 if args.quick else 7
    from netsim.etcd import EtcdServer
    from netsim.topology import calicoctl_path

    data_dir = tempfile.mkdtemp(prefix="ctl-bench-etcd-", dir="/dev/shm")
    with EtcdServer(data_dir=data_dir) as server:
        populate(server.url, profiles)
        base = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        env = {**base, "ETCD_ENDPOINTS": server.url}
        ctl = calicoctl_path()
        python = wall_ms([sys.executable, "-c", "pass"], base, reps)
        etcdctl = wall_ms(["etcdctl", "--endpoints", server.url, "get", "--prefix",
                           "/calico/v1/policy/profile/"], {**base, "ETCDCTL_API": "3"}, reps)
        results = {
            "version": wall_ms([ctl, "version"], env, reps),
            "help": wall_ms([ctl, "--help"], env, reps),
            "pool_show": wall_ms([ctl, "pool", "show"], env, reps),
            "profile_show": wall_ms([ctl, "profile", "show"], env, reps),
        }
        out = subprocess.run([ctl, "profile", "show", "-o", "json"], env=env,
                             capture_output=True, text=True, check=True).stdout
        shown = len(json.loads(out))
    shutil.rmtree(data_dir, ignore_errors=True)
    emit({
        "benchmark": "calicoctl",
        "quick": args.quick,
        "profiles": profiles,
        "profiles_shown": shown,
        "repetitions": reps,
        "wall_ms": results,
        "baseline_ms": {"python_c_pass": python, "etcdctl_get_prefix": etcdctl},
        # The headline: `profile show` against etcdctl reading the same keys.
        "ratio": ratio(results["profile_show"], etcdctl),
        "ratios": {
            "version_vs_python": ratio(results["version"], python),
            "help_vs_python": ratio(results["help"], python),
            "pool_show_vs_etcdctl": ratio(results["pool_show"], etcdctl),
            "profile_show_vs_etcdctl": ratio(results["profile_show"], etcdctl),
        },
        "goals_ms": {"startup": GOAL_STARTUP_MS, "data": GOAL_DATA_MS},
        "goals_met": {
            "version": results["version"] <= GOAL_STARTUP_MS,
            "help": results["help"] <= GOAL_STARTUP_MS,
            "pool_show": results["pool_show"] <= GOAL_DATA_MS,
            "profile_show": results["profile_show"] <= GOAL_DATA_MS,
        },
    })


if __name__ == "__main__":
    main()
