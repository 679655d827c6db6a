"""The churn soak: workloads created and deleted continuously on every host, then a check
that nothing leaked and that felix and confd did not grow.

Owns: one churn worker per host, each looping until the deadline: add a workload through
`calicoctl container add` (IPv4 only, IPv6 only, or both, in turn), move it to another
profile or back (`container NS profile set`), now and then add and remove a rule on the
churn profile, remove the workload; while the long-lived workloads keep a ping and a TCP
stream running between hosts. Then, after the churn stops and the cluster converges:
- leaks (`faults.converge.leaks`): IPAM allocations and endpoints in etcd, cali veths,
  felix routes, endpoint chains and ipset members beyond the long-lived workloads, plus
  `calicoctl ipam check --grace-period 0`;
- felix's and confd's resident memory on every host, after a warm-up (the first fifth
  of the run, at least 10 s: caches fill, imports finish) and at the end;
- datastore resyncs: the syncers' "in sync at revision" log lines of felix and confd
  during the run (one per resnapshot; a storm would show as many).

Leaves to others: the cluster (`faults.cluster`), the checks (`faults.converge`).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from faults.cluster import PROFILE, Cluster, Workload
from faults.converge import ipam_check, leaks, wait_converged
from faults.traffic import Traffic, summarise
from netsim.topology import Host
from netsim.wait import wait_for

CHURN_PROFILES = ("flt-a", "flt-b")
RESYNC_LINE = "in sync at revision"


@dataclass
class HostChurn:
    created: int = 0
    deleted: int = 0
    profile_changes: int = 0
    rule_changes: int = 0
    errors: list[str] = field(default_factory=list)


def rss_kib(host: Host, pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def memory(cluster: Cluster) -> dict[str, tuple[int, int | None]]:
    """'host/program' -> (pid, RSS in KiB) for felix and confd."""
    out: dict[str, tuple[int, int | None]] = {}
    for host in cluster.hosts:
        pids = cluster.pids(host)
        for program in ("felix", "confd"):
            if program in pids:
                out[f"{host.name}/{program}"] = (pids[program], rss_kib(host, pids[program]))
    return out


def resync_counts(cluster: Cluster) -> dict[str, int]:
    return {f"{h.name}/{p}": cluster.log(h, p).count(RESYNC_LINE)
            for h in cluster.hosts for p in ("felix", "confd")}


def _churn(cluster: Cluster, host: Host, deadline: float, stats: HostChurn,
           rng: random.Random) -> None:
    kinds = [(True, False), (False, True), (True, True)]  # (ipv4, ipv6)
    i = rng.randrange(len(kinds))
    while time.monotonic() < deadline:
        ipv4, ipv6 = kinds[i % len(kinds)]
        i += 1
        profile = CHURN_PROFILES[i % 2]
        # Every fourth workload goes through calicoctl (the CLI end to end); the others
        # through the shared workload plumbing in-process (no CLI start-up: more churn).
        via = "calicoctl" if i % 4 == 0 else "library"
        try:
            wl = cluster.add_workload(host, ipv4=ipv4, ipv6=ipv6, profile=profile,
                                      label=f"{host.name}/churn{i}", via=via)
            stats.created += 1
            if rng.random() < 0.5:
                other = CHURN_PROFILES[(i + 1) % 2]
                if via == "calicoctl":
                    cluster.calicoctl(host, "container", wl.ns.name, "profile", "set", other)
                else:
                    cluster.set_profiles(wl, [other])
                stats.profile_changes += 1
            if rng.random() < 0.2:
                rule = ["inbound", "allow", "tcp", "to", "ports", str(20000 + i % 1000)]
                cluster.calicoctl(host, "profile", profile, "rule", "add", *rule)
                cluster.calicoctl(host, "profile", profile, "rule", "remove", *rule,
                                  check=False)
                stats.rule_changes += 1
            cluster.remove_workload(wl, via=via)
            stats.deleted += 1
        except Exception as exc:  # noqa: BLE001 - counted and reported, the soak goes on
            stats.errors.append(str(exc).splitlines()[0][:200])
            time.sleep(0.5)


def soak(cluster: Cluster, seconds: float, seed: int = 16) -> dict[str, Any]:
    """Churn for `seconds`; the figures (see the module docstring)."""
    h1 = cluster.hosts[0]
    for name in CHURN_PROFILES:
        if cluster.calicoctl(h1, "profile", "show").stdout.find(name) < 0:
            cluster.calicoctl(h1, "profile", "add", name)
    keep: list[Workload] = list(cluster.workloads)
    resyncs_before = resync_counts(cluster)
    mem_start = memory(cluster)
    rng = random.Random(seed)
    stats = {h.name: HostChurn() for h in cluster.hosts}
    traffic = Traffic(cluster.pairs())
    started = time.monotonic()
    deadline = started + seconds
    try:
        workers = [threading.Thread(target=_churn, args=(cluster, h, deadline, stats[h.name],
                                                         random.Random(rng.random())),
                                    daemon=True) for h in cluster.hosts]
        for w in workers:
            w.start()
        warm = max(10.0, seconds / 5)
        wait_for(lambda: time.monotonic() - started >= warm or time.monotonic() > deadline,
                 warm + 5, interval=0.5, message="the warm-up")
        mem_warm = memory(cluster)
        for w in workers:
            w.join(seconds + 120)
        churned = time.monotonic() - started
        converge_s = wait_converged(cluster, 120.0)
    finally:
        figures = summarise(traffic.stop(), traffic.seconds)
    # Felix removes what a deleted workload left asynchronously: poll, bounded.
    found: dict[str, list[str]] = {}

    def clean() -> bool:
        nonlocal found
        found = leaks(cluster, keep)
        return not found

    with contextlib.suppress(TimeoutError):  # what is left is reported in "leaks"
        wait_for(clean, 30.0, interval=1.0, message="no leftovers of the churned workloads")
    ipam_ok, ipam_out = ipam_check(cluster, grace_period=0.0)
    mem_end = memory(cluster)
    resyncs_after = resync_counts(cluster)
    growth: dict[str, Any] = {}
    for key, (pid, warm_rss) in mem_warm.items():
        end_pid, end_rss = mem_end.get(key, (None, None))
        start_rss = mem_start.get(key, (None, None))[1]
        if end_pid != pid or not warm_rss or not end_rss:
            growth[key] = {"restarted": True}
            continue
        growth[key] = {"start_kib": start_rss, "after_warmup_kib": warm_rss,
                       "end_kib": end_rss,
                       "growth_after_warmup_pct": round(100.0 * (end_rss - warm_rss) / warm_rss,
                                                        1)}
    total = {k: sum(getattr(s, k) for s in stats.values())
             for k in ("created", "deleted", "profile_changes", "rule_changes")}
    return {
        "seconds": round(churned, 1),
        **total,
        "workload_cycles_per_minute": round(60 * total["deleted"] / max(churned, 1e-9), 1),
        "errors": [e for s in stats.values() for e in s.errors][:20],
        "error_count": sum(len(s.errors) for s in stats.values()),
        "leaks": found,
        "ipam_check_clean": ipam_ok,
        **({} if ipam_ok else {"ipam_check_output": ipam_out}),
        "rss": growth,
        "max_rss_growth_pct": max((g.get("growth_after_warmup_pct", 0.0)
                                   for g in growth.values()), default=0.0),
        "daemons_restarted": sorted(k for k, g in growth.items() if g.get("restarted")),
        "datastore_resyncs": {k: resyncs_after.get(k, 0) - resyncs_before.get(k, 0)
                              for k in resyncs_after},
        "converge_after_churn_s": round(converge_s, 2),
        **{k: v for k, v in figures.items() if k != "flows"},
    }


__all__ = ["PROFILE", "soak"]
