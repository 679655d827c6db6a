"""Runs the quick mode of every benchmark so none of them rots.

Checks the shape and sanity of each benchmark's JSON (fields present, numbers finite and
positive), never its timings: speed is judged by running the benchmarks, not by tests.
To add a benchmark, add one `Bench(...)` to BENCHMARKS.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Bench:
    module: str  # runs as `python -m bench.<module> --quick`
    fields: tuple[str, ...]  # dotted paths that must hold positive finite numbers
    marks: tuple[pytest.MarkDecorator, ...] = ()
    check: Callable[[dict[str, Any]], None] | None = None  # extra sanity checks
    timeout: float = 300.0
    extra_fields: tuple[str, ...] = field(default=())  # paths that must merely exist


def _check_syncer(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "syncer" and r["quick"] is True
    assert (r["keys"], r["updates"]) == (2000, 500)
    for side in ("syncer", "baseline"):
        s = r[side]
        assert math.isclose(s["snapshot_keys_per_s"], r["keys"] / s["snapshot_s"], rel_tol=0.05)
        assert math.isclose(s["updates_per_s"], r["updates"] / s["updates_s"], rel_tol=0.05)
        assert len(s["rounds_total_s"]) == r["rounds"]
    assert math.isclose(r["ratio"], r["syncer"]["total_s"] / r["baseline"]["total_s"],
                        rel_tol=0.05)
    assert r["goal_met"] == (r["ratio"] <= r["goal"]["max_ratio"])


def _check_ipam(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "ipam" and r["quick"] is True and r["assignments"] == 300
    assert r["one_client"]["count"] == 300 and r["four_clients"]["count"] == 300
    for side in ("one_client", "four_clients"):
        assert r[side]["p50_ms"] <= r[side]["p99_ms"] <= r[side]["max_ms"]
    assert math.isclose(r["ratio"], r["one_client"]["per_s"] / r["baseline"]["cas_per_s"],
                        rel_tol=0.05)
    assert r["goals_met"]["ratio"] == (r["ratio"] >= r["goals"]["one_client_ratio_min"])


def _check_calicoctl(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "calicoctl" and r["quick"] is True
    assert r["profiles"] == r["profiles_shown"] == 100
    assert math.isclose(r["ratio"], r["wall_ms"]["profile_show"]
                        / r["baseline_ms"]["etcdctl_get_prefix"], rel_tol=0.05)
    assert r["goals_met"]["version"] == (r["wall_ms"]["version"] <= r["goals_ms"]["startup"])


def _check_felix_dataplane(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "felix_dataplane" and r["quick"] is True
    assert r["endpoints"] == r["routes"] == 300
    assert r["programmed"] == {"rules": r["iptables_rules"], "routes": r["routes"],
                               "ipset_members": r["endpoints"]}
    cold = r["cold_start"]
    assert math.isclose(r["ratio"], cold["felix"]["total_s"] / cold["baseline"]["total_s"],
                        rel_tol=0.05)
    assert r["per_rule"]["commands"] >= r["per_rule"]["rules"]


def _check_felix(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "felix" and r["quick"] is True
    cold = r["cold_start"]
    assert cold["routes"] == cold["endpoint_chains"] == r["endpoints"] == 300
    assert math.isclose(r["ratio"], cold["felix_s"] / r["baseline"]["total_s"], rel_tol=0.05)
    add = r["endpoint_add"]
    assert add["additions"] == 30 and add["p50_ms"] <= add["p99_ms"] <= add["max_ms"]
    assert r["shared_profile_rule"]["endpoints"] == 100


def _check_node(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "node" and r["quick"] is True
    up, reach = r["cluster_up"], r["workload_reachable"]
    assert up["hosts"] == 3 and reach["workloads"] == 5
    assert up["first_host_s"] <= up["total_s"]
    assert math.isclose(r["ratio"], up["total_s"] / up["baseline"]["total_s"], rel_tol=0.05)
    assert up["goal_met"] == (up["total_s"] <= up["goal"]["max_s"])
    for side in ("reachable", "baseline", "ping_only"):
        assert reach[side]["p50_s"] <= reach[side]["p99_s"] <= reach[side]["max_s"]
    # Reachable means the commands returned and a ping answered afterwards.
    assert reach["reachable"]["max_s"] >= reach["baseline"]["max_s"]
    assert math.isclose(reach["ratio"], reach["reachable"]["p99_s"] / reach["baseline"]["p99_s"],
                        rel_tol=0.05)


def _check_policy_trace(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "policy_trace" and r["quick"] is True
    assert (r["endpoints"], r["profiles"], r["policies"]) == (1000, 100, 20)
    assert r["queries"] == 6 and sum(r["verdicts"].values()) == 6
    assert r["verdicts"]["allow"] and r["verdicts"]["deny"]  # the queries ask both ways
    assert r["wall_ms"]["p50"] <= r["wall_ms"]["p90"] <= r["wall_ms"]["max"]
    assert math.isclose(r["ratio"], r["wall_ms"]["p50"] / r["baseline_ms"]["etcdctl_get_prefix"],
                        rel_tol=0.05)
    assert r["goal_met"] == (r["wall_ms"]["max"] <= r["goal_ms"])
    assert "clock" in r and "etcdctl_get_prefix" in r["baseline_names"]


BENCHMARKS = [
    Bench("syncer",
          fields=("keys", "updates", "rounds", "ratio", "ratio_snapshot", "ratio_updates",
                  "goal.max_ratio", "syncer.snapshot_s", "syncer.updates_s", "syncer.total_s",
                  "syncer.keys_per_s", "baseline.snapshot_s", "baseline.updates_s",
                  "baseline.total_s", "baseline.keys_per_s"),
          extra_fields=("goal_met", "baseline.name"),
          marks=(pytest.mark.etcd,), check=_check_syncer),
    Bench("ipam",
          fields=("assignments", "ratio_four_clients", "baseline.cas_per_s",
                  "baseline.raw_cas.per_s", "baseline.raw_cas.p99_ms", "one_client.per_s",
                  "one_client.p50_ms", "one_client.p99_ms", "four_clients.per_s",
                  "four_clients.p50_ms", "four_clients.p99_ms",
                  "goals.one_client_p99_ms_max", "goals.one_client_ratio_min"),
          extra_fields=("goals_met.p99", "goals_met.ratio", "etcd_data"),
          marks=(pytest.mark.etcd,), check=_check_ipam),
    Bench("calicoctl",
          fields=("profiles", "wall_ms.version", "wall_ms.help", "wall_ms.pool_show",
                  "wall_ms.profile_show", "baseline_ms.python_c_pass",
                  "baseline_ms.etcdctl_get_prefix", "ratios.version_vs_python",
                  "ratios.help_vs_python", "ratios.pool_show_vs_etcdctl",
                  "ratios.profile_show_vs_etcdctl", "goals_ms.startup", "goals_ms.data"),
          extra_fields=("goals_met.version", "goals_met.help", "goals_met.pool_show",
                        "goals_met.profile_show"),
          marks=(pytest.mark.etcd,), check=_check_calicoctl),
    Bench("felix_dataplane",
          fields=("endpoints", "iptables_rules", "routes", "cold_start.felix.total_s",
                  "cold_start.felix.iptables_s", "cold_start.felix.routes_s",
                  "cold_start.felix.ipsets_s", "cold_start.felix.sysctls_s",
                  "cold_start.baseline.total_s", "cold_start.baseline.iptables_restore_s",
                  "cold_start.baseline.ip_batch_s", "cold_start.baseline.ipset_restore_s",
                  "cold_start.iptables_chunked_restores_s", "after_cold_start.noop_refresh_s",
                  "after_cold_start.endpoint_add_p50_s", "per_rule.ratio",
                  "per_rule.per_rule_commands_s", "per_rule.felix_owner_s",
                  "per_rule.commands"),
          extra_fields=("cold_start.goal.max_s", "cold_start.goal.max_ratio"),
          marks=(pytest.mark.root,), check=_check_felix_dataplane),
    Bench("felix",
          fields=("endpoints", "baseline.total_s", "baseline.iptables_restore_s",
                  "cold_start.felix_s", "idle.rss_mb", "endpoint_add.p50_ms",
                  "endpoint_add.p99_ms", "shared_profile_rule.p99_ms",
                  "per_rule_iptables.ratio"),
          extra_fields=("idle.cpu_percent_of_core", "cold_start.goal.max_s",
                        "endpoint_add.goal.max_p99_ms"),
          marks=(pytest.mark.root, pytest.mark.etcd), check=_check_felix),
    Bench("policy_trace",
          fields=("endpoints", "profiles", "policies", "keys", "queries", "wall_ms.p50",
                  "wall_ms.p90", "wall_ms.max", "cpu_ms.p50", "trace_program_ms.p50",
                  "baseline_ms.etcdctl_get_prefix", "baseline_ms.python_c_pass", "goal_ms"),
          extra_fields=("goal_met", "goal_met_p50", "clock", "baseline_names", "truth"),
          marks=(pytest.mark.etcd,), check=_check_policy_trace),
    Bench("node",
          fields=("cluster_up.hosts", "cluster_up.total_s", "cluster_up.first_host_s",
                  "cluster_up.node_run_returned_s", "cluster_up.baseline.total_s",
                  "cluster_up.cpu_s.programs_when_up", "cluster_up.cpu_s.calicoctl_node_run",
                  "machine.cpus",
                  "cluster_up.ratio", "cluster_up.goal.max_s", "workload_reachable.workloads",
                  "workload_reachable.reachable.p50_s", "workload_reachable.reachable.p99_s",
                  "workload_reachable.baseline.p50_s", "workload_reachable.baseline.p99_s",
                  "workload_reachable.ping_only.p99_s", "workload_reachable.ratio",
                  "workload_reachable.goal.max_p99_s"),
          extra_fields=("cluster_up.goal_met", "workload_reachable.goal_met",
                        "cluster_up.baseline.name", "workload_reachable.baseline.name"),
          marks=(pytest.mark.root, pytest.mark.etcd), check=_check_node),
]


def _get(result: dict[str, Any], path: str) -> Any:
    value: Any = result
    for part in path.split("."):
        assert isinstance(value, dict) and part in value, f"missing field {path!r}"
        value = value[part]
    return value


@pytest.mark.slow
@pytest.mark.parametrize("bench", [pytest.param(b, id=b.module, marks=b.marks)
                                   for b in BENCHMARKS])
def test_quick_mode_prints_sane_json(bench: Bench) -> None:
    proc = subprocess.run([sys.executable, "-m", f"bench.{bench.module}", "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=bench.timeout,
                          check=False)
    assert proc.returncode == 0, f"bench.{bench.module} failed:\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout)
    assert isinstance(result, dict)
    for path in ("ratio", *bench.fields):
        value = _get(result, path)
        assert isinstance(value, int | float) and not isinstance(value, bool), (path, value)
        assert math.isfinite(value) and value > 0, (path, value)
    for path in bench.extra_fields:
        _get(result, path)
    if bench.check is not None:
        bench.check(result)
