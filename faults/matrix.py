"""The fault matrix: each fault applied to a running 3-host cluster with traffic flowing,
and what it cost.

Owns the faults, each a function that breaks something, brings it back, and returns the
moment it was back (`recovered`):
  felix-kill9        kill -9 felix on host1; supervisord restarts it
  confd-kill9        kill -9 confd on host1; supervisord restarts it
  bird-kill9         kill -9 BIRD on host1; supervisord restarts it (`bird -R`: BGP
                     graceful restart, so the peers keep host1's routes meanwhile, and
                     BIRD's kernel protocol keeps host1's own routes: `persist`)
  node-stop-start    `calicoctl node stop --force` on host2, then `calicoctl node run`
  etcd-member-kill   kill -9 one etcd follower, a canary while it is down, start it again
  etcd-leader-kill   the same with the leader
  etcd-all-down      every etcd member killed for 60 s (10 s in the quick mode), daemons
                     watched meanwhile (they must stay up), then all started again
  etcd-compaction    felix and confd on host1 stopped (SIGSTOP) while a burst of writes
                     and a change they must see go by and etcd compacts past their
                     watch's revision; continued (SIGCONT): they must resync
  etcd-restore       etcd restored from a snapshot taken before the last changes (a deny
                     rule, a policy, a BGP filter): the hosts must drop those changes
and `run_fault`, which wraps each one: traffic on (`faults.traffic`), the fault, the
time to converge after recovery (`faults.converge.wait_converged`: a canary that felix and
confd must both apply, BGP, routes, full ping matrix), traffic off, then `calicoctl ipam
check` and felix's dataplane compared with what a fresh felix programs.

Leaves to others: the cluster (`faults.cluster`), the checks (`faults.converge`), the
command line (`faults.__main__`), the assertions (tests/reliability).
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from faults.cluster import PROFILE, Cluster
from faults.converge import (
    Canary,
    fresh_felix_matches,
    ipam_check,
    wait_converged,
)
from faults.traffic import Traffic, summarise
from libcalico import keyspace as ks
from netsim.etcd import EtcdCluster
from netsim.wait import wait_for

CONVERGE_TIMEOUT = 90.0
OBSERVE_S = 1.0  # traffic kept running before a fault and after convergence


def observe(seconds: float) -> None:
    """Let the traffic run for a measured window (the observation itself, not a wait
    for some condition)."""
    time.sleep(seconds)


@dataclass
class Fault:
    name: str
    run: Callable[[Cluster, dict[str, Any], bool], float]  # (cluster, extra, quick) -> recovered
    lossless: bool  # the goal: no packet lost
    quick: bool  # part of the quick mode (the test suite)
    hosts: tuple[int, ...] = (0,)  # hosts whose dataplane is compared with a fresh felix's


# --- the faults ---------------------------------------------------------------------------

def _kill_program(program: str, host_index: int = 0) -> Callable[..., float]:
    def run(cluster: Cluster, extra: dict[str, Any], quick: bool) -> float:
        host = cluster.hosts[host_index]
        old = cluster.kill(host, program, signal.SIGKILL)
        recovered = cluster.wait_restarted(host, program, old)
        extra["restart_s"] = round(recovered - extra["fault_at"], 2)
        return recovered
    return run


def node_stop_start(cluster: Cluster, extra: dict[str, Any], quick: bool) -> float:
    host = cluster.hosts[1]
    cluster.calicoctl(host, "node", "stop", "--force")
    stopped = time.monotonic()
    assert cluster.topo is not None
    cluster.topo.start_node(host)
    recovered = time.monotonic()
    extra["node_down_s"] = round(recovered - stopped, 2)
    return recovered


def _etcd(cluster: Cluster) -> EtcdCluster:
    etcd = cluster.etcd
    if not isinstance(etcd, EtcdCluster):
        raise RuntimeError("this fault needs a cluster of etcd members (etcd_members=3)")
    return etcd


def _member_kill(leader: bool) -> Callable[..., float]:
    def run(cluster: Cluster, extra: dict[str, Any], quick: bool) -> float:
        # The victim is the member every daemon is connected to (the first of their
        # ETCD_ENDPOINTS): as a follower for one fault, made the leader for the other.
        etcd = _etcd(cluster)
        victim = 0
        if leader:
            etcd.move_leader(victim)
        elif etcd.leader() == victim:
            etcd.move_leader(1)
        etcd.kill(victim)
        killed = time.monotonic()
        # The cluster keeps a quorum: the daemons must fail over and follow a change.
        extra["converge_while_down_s"] = round(wait_converged(cluster, CONVERGE_TIMEOUT,
                                                              since=killed), 2)
        extra["new_leader_elected"] = etcd.leader() != victim
        etcd.start_member(victim)
        return time.monotonic()
    return run


def etcd_all_down(cluster: Cluster, extra: dict[str, Any], quick: bool) -> float:
    etcd = _etcd(cluster)
    hold = 10.0 if quick else 60.0
    before = {h.name: cluster.pids(h) for h in cluster.hosts}
    etcd.stop_all(signal.SIGKILL)
    down = time.monotonic()
    restarted: set[str] = set()
    while time.monotonic() - down < hold:  # the outage, watching the daemons through it
        for h in cluster.hosts:
            now = cluster.pids(h)
            restarted |= {f"{h.name}/{p}" for p, pid in before[h.name].items()
                          if now.get(p) != pid}
        time.sleep(1.0)
    etcd.start_all()
    extra["etcd_down_s"] = round(time.monotonic() - down, 1)
    extra["daemons_restarted_during_outage"] = sorted(restarted)
    return time.monotonic()


# Enough writes that etcd gives up queueing for a watcher that does not read (128 queued
# responses, plus what the HTTP/2 windows and the sockets hold): it becomes a "victim"
# and, once it reads again, resumes from etcd's history - which the compaction removed.
# 40 MB does it here (4 MB did not).
FILL_KEYS = 400
FILL_VALUE = "x" * 100_000
FILL_PREFIX = f"{ks.pool_dir(4)}fill-"  # followed by felix and confd; not a pool key


def etcd_compaction(cluster: Cluster, extra: dict[str, Any], quick: bool) -> float:
    host = cluster.hosts[0]
    store = cluster.store
    pids = cluster.pids(host)
    logs = {p: len(cluster.log(host, p)) for p in ("felix", "confd")}
    for p in ("felix", "confd"):
        os.kill(pids[p], signal.SIGSTOP)
    try:
        for i in range(FILL_KEYS):
            store.put(f"{FILL_PREFIX}{i}", FILL_VALUE)
        canary = Canary.write(cluster)  # a change they must not miss
        store.compact(store.revision())
    finally:
        for p in ("felix", "confd"):
            os.kill(pids[p], signal.SIGCONT)
    recovered = time.monotonic()
    try:
        wait_for(canary.seen, CONVERGE_TIMEOUT, interval=0.1,
                 message="the change made while felix and confd were stopped")
        extra["missed_change_applied_s"] = round(time.monotonic() - recovered, 2)
    finally:
        canary.remove()
        store.delete_prefix(FILL_PREFIX)
    text = {p: cluster.log(host, p)[logs[p]:] for p in logs}
    extra["watchers_compacted"] = sorted(p for p, t in text.items() if "compacted" in t)
    return recovered


def etcd_restore(cluster: Cluster, extra: dict[str, Any], quick: bool) -> float:
    etcd = _etcd(cluster)
    host = cluster.hosts[0]
    snap = os.path.join(tempfile.mkdtemp(prefix="flt-snap-"), "snap.db")
    etcd.snapshot(snap)
    # Changes after the snapshot: a deny rule (felix), a tier and policy (felix), a BGP
    # custom filter comment (confd).
    cluster.calicoctl(host, "profile", PROFILE, "rule", "add", "inbound", "deny", "tcp", "to",
                      "ports", "9999")
    cluster.store.put(ks.tier_metadata_key("after"), '{"order": 1}')
    cluster.store.put(ks.policy_key("after", "p"), '{"selector": "all()", "order": 1, '
                      '"inbound_rules": [{"action": "deny", "protocol": "udp", '
                      '"dst_ports": [9998]}], "outbound_rules": []}')
    cluster.store.put(ks.custom_filter_key(4, "after"), "# after the snapshot")

    def applied(host: Any) -> tuple[bool, bool, bool]:
        text = host.ns.exec("iptables-save", "-t", "filter", check=False).stdout
        bird = (host.dir / "run" / "bird.cfg").read_text(errors="replace")
        return ("9999" in text, "9998" in text, "# after the snapshot" in bird)

    wait_for(lambda: all(all(applied(h)) for h in cluster.hosts), CONVERGE_TIMEOUT,
             message="the post-snapshot changes applied everywhere")
    etcd.restore(snap)
    recovered = time.monotonic()
    try:
        wait_for(lambda: not any(any(applied(h)) for h in cluster.hosts), CONVERGE_TIMEOUT,
                 interval=0.2, message="the post-snapshot changes gone after the restore")
        extra["post_snapshot_changes_gone_s"] = round(time.monotonic() - recovered, 2)
    finally:
        os.unlink(snap)
    return recovered


FAULTS: list[Fault] = [
    Fault("felix-kill9", _kill_program("felix"), lossless=True, quick=True),
    Fault("confd-kill9", _kill_program("confd"), lossless=True, quick=True),
    Fault("bird-kill9", _kill_program("bird"), lossless=False, quick=False),
    Fault("node-stop-start", node_stop_start, lossless=False, quick=False, hosts=(1,)),
    Fault("etcd-member-kill", _member_kill(leader=False), lossless=True, quick=True,
          hosts=(0, 1, 2)),
    Fault("etcd-leader-kill", _member_kill(leader=True), lossless=True, quick=False,
          hosts=(0, 1, 2)),
    Fault("etcd-all-down", etcd_all_down, lossless=True, quick=False, hosts=(0, 1, 2)),
    Fault("etcd-compaction", etcd_compaction, lossless=True, quick=False),
    Fault("etcd-restore", etcd_restore, lossless=True, quick=False, hosts=(0, 1, 2)),
]
FAULTS_BY_NAME = {f.name: f for f in FAULTS}


def run_fault(cluster: Cluster, fault: Fault, quick: bool) -> dict[str, Any]:
    """Traffic on, the fault, convergence, traffic off, then IPAM and dataplane checks."""
    extra: dict[str, Any] = {}
    traffic = Traffic(cluster.pairs())
    try:
        observe(OBSERVE_S)
        extra["fault_at"] = time.monotonic()
        recovered = fault.run(cluster, extra, quick)
        converge_s = wait_converged(cluster, CONVERGE_TIMEOUT, since=recovered)
        observe(OBSERVE_S)
    finally:
        figures = summarise(traffic.stop(), traffic.seconds)
    extra.pop("fault_at")
    ipam_ok, ipam_out = ipam_check(cluster)
    hosts = [cluster.hosts[i] for i in fault.hosts] if quick else cluster.hosts
    fresh = fresh_felix_matches(cluster, hosts)
    result: dict[str, Any] = {
        "fault": fault.name,
        "goal_lossless": fault.lossless,
        "converge_after_recovery_s": round(converge_s, 2),
        **extra,
        **{k: v for k, v in figures.items() if k != "flows"},
        "ipam_check_clean": ipam_ok,
        "dataplane_matches_fresh_felix": all(not d for d in fresh.values()),
        "flows": figures["flows"],
    }
    if not ipam_ok:
        result["ipam_check_output"] = ipam_out
    if not result["dataplane_matches_fresh_felix"]:
        result["dataplane_diffs"] = {h: d[:10] for h, d in fresh.items() if d}
    return result


def run_matrix(cluster: Cluster, quick: bool, only: list[str] | None = None
               ) -> list[dict[str, Any]]:
    chosen = [FAULTS_BY_NAME[n] for n in only] if only else \
        [f for f in FAULTS if f.quick or not quick]
    return [run_fault(cluster, f, quick) for f in chosen]
