"""The reliability suite's quick mode on one running cluster (3 hosts, a 3-member etcd,
one workload per host, a 10 ms ping and a TCP stream per pair during every fault).

The full matrix (BIRD kill, node stop/start, leader kill, all of etcd down for 60 s,
compaction past a watcher, a restore from an older snapshot) and the 10-minute soak run
from `scripts/faults.sh`; here: felix kill -9 and one etcd member kill (goal: no packet
lost, converged within 10 s of recovery, `ipam check` clean, the dataplane what a fresh
felix programs), bad values written into etcd under a running cluster (no daemon
crashes or restarts; they keep following etcd), and a 30 s churn soak (no leaks, felix
and confd RSS growth under 10%, no datastore resyncs).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from faults.cluster import Cluster
from faults.converge import wait_converged
from faults.matrix import FAULTS_BY_NAME, run_fault
from faults.soak import soak
from libcalico import keyspace as ks

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

CONVERGE_GOAL_S = 10.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(prefix="rq")
    try:
        c.start()
        yield c
    finally:
        c.close()


def check_fault(result: dict[str, Any]) -> None:
    summary = {k: v for k, v in result.items() if k != "flows"}
    assert result["ping_sent"] > 100 and result["ping_lost"] == 0, summary
    assert result["tcp_records_lost"] == 0 and result["tcp_reconnects"] == 0, summary
    assert result["converge_after_recovery_s"] <= CONVERGE_GOAL_S, summary
    assert result["ipam_check_clean"], summary
    assert result["dataplane_matches_fresh_felix"], summary


@pytest.mark.parametrize("fault", ["felix-kill9", "etcd-member-kill"])
def test_fault_loses_no_packet_and_converges(cluster: Cluster, fault: str) -> None:
    result = run_fault(cluster, FAULTS_BY_NAME[fault], quick=True)
    print(json.dumps({k: v for k, v in result.items() if k != "flows"}))
    check_fault(result)
    if fault == "felix-kill9":
        assert result["restart_s"] < 30
    else:  # the daemons' own member died: they failed over and followed a change
        assert result["new_leader_elected"], result
        assert result["converge_while_down_s"] <= CONVERGE_GOAL_S, result


BAD_VALUES = {
    # felix: an endpoint of this host that is not JSON, one whose interface iptables
    # would read as a wildcard, a profile whose rules are garbage, a policy whose
    # selector nests too deep, a pool that is not a pool, config it cannot parse
    ks.workload_endpoint_key("host1", "netns", "bad1", "e1"): "{not json",
    ks.workload_endpoint_key("host1", "netns", "bad2", "e2"): json.dumps(
        {"state": "active", "name": "cali+", "mac": "ee:ee:ee:ee:ee:ee",
         "ipv4_nets": ["198.19.255.1/32"], "profile_ids": []}),
    ks.profile_key("badprof", "rules"): json.dumps({"inbound_rules": [{"action": "²"}]}),
    ks.policy_key("default", "deep"): json.dumps({"selector": "(" * 500 + "a == 'b'"
                                                  + ")" * 500, "order": 1}),
    ks.pool_dir(4) + "198.19.0.0-8": "[]",
    ks.global_config_key("DefaultEndpointToHostAction"): "MAYBE",
    ks.host_config_key("host1", "HealthPort"): "99999",
    # confd: a BGP host whose name is not a name, a peer that is not JSON, a bad AS
    ks.BGP_HOST_DIR + "\u0000bad/ip_addr_v4": "198.18.0.77",
    ks.bgp_peer_key("198.18.0.199"): "{",
    ks.bgp_global_key("as_num"): "-5",
}


def test_bad_datastore_values_crash_no_daemon(cluster: Cluster) -> None:
    """Values anyone could write into etcd: felix and confd log and ignore them, keep
    running (same pids) and keep following etcd (a canary converges)."""
    before = {h.name: cluster.pids(h) for h in cluster.hosts}
    store = cluster.store
    try:
        for key, value in BAD_VALUES.items():
            store.put(key, value)
        assert wait_converged(cluster, 60.0) <= CONVERGE_GOAL_S
        after = {h.name: cluster.pids(h) for h in cluster.hosts}
        assert after == before, "a daemon restarted after bad datastore values"
    finally:
        for key in BAD_VALUES:
            store.delete(key)
    log = cluster.log(cluster.hosts[0], "felix")
    h1 = cluster.hosts[0]
    assert "felix-from-+" not in h1.ns.exec("iptables-save", check=False).stdout
    assert "198.19.255.1" not in h1.ns.ip("route", "show", "table", "all").stdout
    assert "skipping invalid value" in log and "ignoring" in log


def test_churn_soak_leaks_nothing(cluster: Cluster) -> None:
    result = soak(cluster, 30.0)
    print(json.dumps(result))
    assert result["created"] >= 3 and result["deleted"] == result["created"], result
    assert result["error_count"] == 0, result
    assert result["leaks"] == {} and result["ipam_check_clean"], result
    assert result["daemons_restarted"] == [], result
    assert result["max_rss_growth_pct"] < 10.0, result
    assert all(n == 0 for n in result["datastore_resyncs"].values()), result
    assert result["ping_lost"] == 0 and result["tcp_records_lost"] == 0, result
