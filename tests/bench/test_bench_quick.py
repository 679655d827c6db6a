"""Runs the quick mode of every benchmark so none of them rots.

Checks the shape and sanity of each benchmark's JSON (fields present, numbers finite and
positive, ratios against the baseline they name, goals checked per figure, clocks
described), never its timings: speed is judged by running the benchmarks, not by tests.
The felix benchmarks fail unless felix and the raw-tool floor ended with the same
dataplane (iptables-save, routes, ipsets, sysctls), which is asserted here too.
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


def _clocks_named(r: dict[str, Any], *paths: str) -> None:
    """Each benchmark says where its clocks start and stop, and names its baselines."""
    for path in paths:
        value = _get(r, path)
        assert isinstance(value, str | dict) and value, path


def _check_syncer(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "syncer" and r["quick"] is True
    assert (r["keys"], r["updates"]) == (2000, 500)
    for side in ("syncer", "baseline"):
        s = r[side]
        assert math.isclose(s["snapshot_keys_per_s"], r["keys"] / s["snapshot_s"], rel_tol=0.05)
        assert math.isclose(s["updates_per_s"], r["updates"] / s["updates_s"], rel_tol=0.05)
        assert len(s["rounds_total_s"]) == r["rounds"]
    # each phase has its own goal, checked and reported; the headline is the worse phase
    for phase in ("snapshot", "updates"):
        measured = r["syncer"][f"{phase}_s"] / r["baseline"][f"{phase}_s"]
        assert math.isclose(r[f"ratio_{phase}"], measured, rel_tol=0.05)
        assert r["goals_met"][phase] == (r[f"ratio_{phase}"] <= r["goal"]["max_ratio"])
    assert r["ratio"] == max(r["ratio_snapshot"], r["ratio_updates"])
    assert r["goal_met"] == all(r["goals_met"].values())
    _clocks_named(r, "clock.snapshot", "clock.updates", "baseline.name")


def _check_ipam(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "ipam" and r["quick"] is True and r["assignments"] == 300
    assert r["one_client"]["count"] == 300 and r["four_clients"]["count"] == 300
    for side in ("one_client", "four_clients"):
        assert r[side]["p50_ms"] <= r[side]["p99_ms"] <= r[side]["max_ms"]
    assert math.isclose(r["ratio"], r["one_client"]["per_s"] / r["baseline"]["cas_per_s"],
                        rel_tol=0.05)
    # four clients against four raw CAS clients, not against one
    four = r["baseline"]["four_raw_cas_clients"]
    assert four["count"] == 300
    assert math.isclose(r["ratio_four_clients"], r["four_clients"]["per_s"] / four["per_s"],
                        rel_tol=0.05)
    assert r["goals_met"]["ratio"] == (r["ratio"] >= r["goals"]["one_client_ratio_min"])
    assert r["etcd_data"]["filesystem"] == "tmpfs"  # the default; --disk is checked apart
    _clocks_named(r, "clock", "baseline.name", "baseline.four_raw_cas_clients.name")


def _check_calicoctl(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "calicoctl" and r["quick"] is True
    assert r["profiles"] == r["profiles_shown"] == 100
    # each data command against etcdctl reading the same keys
    pairs = {"pool_show": "etcdctl_get_pool_keys",
             "profile_show": "etcdctl_get_profile_keys_only",
             "profile_show_detailed": "etcdctl_get_profile_keys_and_values"}
    for command, baseline in pairs.items():
        assert math.isclose(r["ratios"][f"{command}_vs_etcdctl"],
                            r["wall_ms"][command] / r["baseline_ms"][baseline], rel_tol=0.05)
        assert r["goals_met"][command] == (r["wall_ms"][command] <= r["goals_ms"]["data"])
    assert "(1 key," in r["baseline_names"]["etcdctl_get_pool_keys"]
    assert "(300 keys" in r["baseline_names"]["etcdctl_get_profile_keys_only"]
    assert r["ratio"] == r["ratios"]["profile_show_vs_etcdctl"]
    assert r["goals_met"]["version"] == (r["wall_ms"]["version"] <= r["goals_ms"]["startup"])
    _clocks_named(r, "clock", "baseline_names.python_c_pass")


def _same_state(same: dict[str, Any]) -> None:
    """Both sides were read back and held the same dataplane."""
    assert same["identical"] is True
    assert set(same["compared"]) >= {"iptables-save", "routes", "ipset save"}
    assert same["normalised"] and same["iptables_save_lines"] > 0


def _check_felix_dataplane(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "felix_dataplane" and r["quick"] is True
    assert r["endpoints"] == r["routes"] == 300
    assert r["programmed"] == {"rules": r["iptables_rules"], "routes": r["routes"],
                               "ipset_members": r["endpoints"]}
    cold = r["cold_start"]
    # the headline is against the floor, not the naive single restore
    assert math.isclose(r["ratio"], cold["felix"]["total_s"] / cold["floor"]["total_s"],
                        rel_tol=0.05)
    assert cold["floor"]["iptables_restores"] >= 1  # chunking itself: test_felix_floor.py
    _same_state(cold["same_state"])
    assert cold["same_state"]["felix_routes"] == 300
    assert cold["extra_not_a_floor"]["naive_single_iptables_restore_s"] > 0
    assert cold["goal_met"]["max_ratio"] == (r["ratio"] <= cold["goal"]["max_ratio"])
    assert r["per_rule"]["commands"] >= r["per_rule"]["rules"]
    _clocks_named(r, "cold_start.clock", "cold_start.floor.name")


def _check_felix(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "felix" and r["quick"] is True
    cold = r["cold_start"]
    assert cold["routes"] == cold["endpoint_chains"] == r["endpoints"] == 300
    assert math.isclose(r["ratio"], cold["felix_s"] / cold["floor"]["with_sysctls_s"],
                        rel_tol=0.05)
    _same_state(cold["same_state"])
    assert cold["goal_met"]["max_ratio"] == (cold["ratio"] <= cold["goal"]["max_ratio"])
    add = r["endpoint_add"]
    assert add["additions"] == add["new_interfaces"] == 30 and add["new_profiles"] == 10
    assert add["p50_ms"] <= add["p99_ms"] <= add["max_ms"]
    # the prober was sending before each write: its first probes went unanswered
    assert add["min_unanswered_probes_before_first"] >= 1
    assert add["floor"]["additions"] == 10
    assert math.isclose(add["ratio_p99"], add["p99_ms"] / add["floor"]["p99_ms"], rel_tol=0.05)
    assert add["goal_met"] == (add["p99_ms"] <= add["goal"]["max_p99_ms"])
    assert r["shared_profile_rule"]["endpoints"] == 100
    _clocks_named(r, "cold_start.clock", "cold_start.floor.name", "endpoint_add.clock",
                  "endpoint_add.floor.name", "shared_profile_rule.clock")


def _check_node(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "node" and r["quick"] is True
    up, reach, bgp = r["cluster_up"], r["workload_reachable"], r["bgp_propagation"]
    assert up["hosts"] == 3 and reach["workloads"] == 5
    assert up["first_host_s"] <= up["total_s"]
    assert math.isclose(r["ratio"], up["total_s"] / up["baseline"]["total_s"], rel_tol=0.05)
    assert up["goal_met"] == (up["total_s"] <= up["goal"]["max_s"])
    for side in (reach["reachable"], reach["baseline"], reach["from_profile_set"]):
        assert side["p50_s"] <= side["p99_s"] <= side["max_s"]
    # pings were running before the workload could answer
    assert reach["min_unanswered_pings_before_first_reply"] >= 1
    assert reach["reachable_new_block"]["count"] + reach["reachable_known_block"]["count"] == 5
    assert reach["reachable_new_block"]["count"] >= 1  # blocks of 2: some additions claim one
    assert math.isclose(reach["ratio"], reach["reachable"]["p99_s"] / reach["baseline"]["p99_s"],
                        rel_tol=0.05)
    assert reach["goal_met"] == (reach["reachable"]["p99_s"] <= reach["goal"]["max_p99_s"])
    assert reach["watch_delay"]["count"] == 5  # the watch-based clock start is calibrated
    # BGP propagation: two blocks claimed per other host, against plain BIRD as often
    assert bgp["blocks"] == bgp["count"] == bgp["baseline"]["count"] == 4
    assert math.isclose(bgp["ratio"], bgp["p99_s"] / bgp["baseline"]["p99_s"], rel_tol=0.05)
    _clocks_named(r, "cluster_up.clock", "workload_reachable.clock",
                  "workload_reachable.baseline.name", "bgp_propagation.clock",
                  "bgp_propagation.baseline.name", "cluster_up.baseline.name")


def _check_confd(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "confd" and r["quick"] is True
    lat = r["latency"]
    assert r["render"]["nodes"] == lat["nodes"] == 100 and lat["changes"] == 10
    assert math.isclose(r["ratio"], lat["change_to_reconfigured_ms"]["p50"]
                        / lat["bare_birdc_configure_ms"]["p50"], rel_tol=0.05)
    assert r["goals_met"]["render"] == (r["render"]["view_and_render_ms"]["p50"]
                                        <= r["goals"]["render_ms_max"])
    _clocks_named(r, "clock.render", "clock.change", "baseline")


def _check_node_docker(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "node_docker" and r["quick"] is True
    up, rb, rs = r["cluster_up"], r["rebuild"], r["restart"]
    assert up["hosts"] == 2 and up["rounds"] == 1
    for side in (up, up["baseline"]):
        assert side["total_s"] == max(side["commands_returned_s"], side["bgp_established_s"])
    assert math.isclose(r["ratio"], up["total_s"] / up["baseline"]["total_s"], rel_tol=0.05)
    assert up["goal_met"] == (up["ratio"] <= up["goal"]["max_ratio"])
    assert math.isclose(rb["ratio"], rb["rebuild_s"] / rb["baseline"]["build_s"], rel_tol=0.05)
    assert rb["goal_met"] == (rb["rebuild_s"] <= rb["goal"]["max_s"])
    for side in (rs, rs["baseline"]):
        assert side["received"] + side["lost"] == side["sent"]
    assert rs["goal_met"] == (rs["lost"] == 0)


def _check_routing(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "routing" and r["quick"] is True
    assert "veth" in r["baseline"]["name"] and r["clock"]["throughput"]
    pairs = [("native", "same_segment"), ("vxlan_always", "same_segment"),
             ("vxlan_always", "across_router"), ("vxlan_cross_subnet", "same_segment"),
             ("vxlan_cross_subnet", "across_router")]
    for mode, where in pairs:
        m = r["modes"][mode][where]
        assert m["to"] == ("host2" if where == "same_segment" else "host3")
        assert m["mtu"] == (1500 if mode == "native" else 1450)  # calicoctl's MTU per pool
        assert math.isclose(m["throughput_ratio"], m["gbit_s"] / m["baseline"]["gbit_s"],
                            rel_tol=0.01)
        assert math.isclose(m["rtt_ratio"], m["baseline"]["rtt_ms"] / m["rtt_ms"],
                            rel_tol=0.01)
    assert r["ratio"] == r["throughput_ratios"]["vxlan_always"]
    assert r["goals_met"]["native"] == (r["throughput_ratios"]["native"]
                                        >= r["goals"]["native_min"])


def _check_cni(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "cni" and r["quick"] is True and r["containers"] == 20
    for side in (r, r["baseline"]):
        for op in ("add", "del"):
            s = side[op]
            assert s["count"] == 20 and s["p50_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert math.isclose(r["ratio"], r["add"]["p99_ms"] / r["baseline"]["add"]["p99_ms"],
                        rel_tol=0.05)
    par = r["parallel"]
    assert par["adds"] == par["addresses"] == par["distinct_addresses"] == 20
    assert par["duplicates"] == 0 and par["allocated_after_del"] == 0 and par["goal_met"]
    assert r["endpoints_left"] == 0
    assert r["goal_met"]["ratio"] == (r["ratio"] <= r["goal"]["max_ratio"])
    assert r["goal_met"]["add_p99"] == (r["add"]["p99_ms"] <= r["goal"]["max_add_p99_ms"])


def _check_scale(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "scale" and r["quick"] is True
    assert [(c["hosts"], c["mode"]) for c in r["clusters"]] == [(3, "rr"), (3, "mesh")]
    for c in r["clusters"]:
        n, cv, bgp = c["hosts"], c["converge"], c["converge"]["bgp"]
        assert cv["first_host_s"] <= cv["p50_host_s"] <= cv["total_s"]
        assert math.isclose(cv["ratio"], cv["total_s"] / cv["baseline"]["total_s"], rel_tol=0.05)
        # 3 hosts: a full mesh, or two reflectors and a client: two sessions each either way
        assert bgp["sessions_per_host"] == {"min": 2, "max": 2, "mean": 2.0}
        assert bgp["sessions_total"] == 3
        assert bgp["bird_routes_per_host"] == {"min": bgp["blocks"], "max": bgp["blocks"]}
        programs = c["idle"]["per_program"]
        for name in ("felix", "confd", "bird", "supervisord"):
            assert programs[name]["processes_per_host"] == {"mean": 1.0, "p50": 1.0, "max": 1.0}
        pc, nw = c["profile_change"], c["new_workload"]
        assert pc["count"] == pc["samples"] * n and nw["count"] == nw["samples"] == 2
        assert pc["p50_s"] <= pc["p99_s"] <= pc["max_s"]
        assert pc["baseline"]["count"] == pc["count"]
        # etcd's own count: one event per felix for a rule added to a profile (one key
        # written); a new workload's block reaches every confd (felix follows blocks only
        # with an encapsulated pool), its endpoint every felix, the host's new affinity
        # its own confd
        assert pc["watch_events_per_change"] == n
        assert nw["watch_events_per_addition"] == 2 * n + 1
        assert c["etcd"]["watchers"] == 6 * n  # felix 2 prefixes, confd 4
        host, goal, met = c["idle"]["per_host"], c["goal"], c["goal_met"]
        assert met["idle_cpu_per_host"] == (
            host["cpu_percent_of_core"]["max"] <= goal["idle_cpu_per_host_max_percent"])
        assert met["profile_p99"] == (pc["p99_s"] <= goal["profile_change_max_p99_s"])
        assert met.get("converge") == (None if c["mode"] == "mesh"
                                       else cv["total_s"] <= goal["converge_max_s"])
        # Memory does not depend on the machine's load: the goal holds at any size, and
        # neither daemon carries grpc/protobuf (~30 MB each) nor, without an encapsulated
        # pool, pyroute2 (~12 MB; felix is ~30 MB without them).
        assert met["rss_per_host"] and host["rss_mb"]["max"] <= goal["rss_per_host_max_mb"]
        assert programs["felix"]["rss_mb"]["max"] <= 38
        assert programs["confd"]["rss_mb"]["max"] <= 35
        per_host = cv["cpu_s_per_host"]
        for what in ("programs_when_converged", "calicoctl_node_run"):
            assert per_host[what] > 0 and math.isclose(per_host[what] * n, cv["cpu_s"][what],
                                                       abs_tol=0.1)
    both = r["mesh_vs_rr"]["3"]
    assert both["mesh"]["converge_s"] == r["clusters"][1]["converge"]["total_s"]
    assert both["rr"]["converge_s"] == r["clusters"][0]["converge"]["total_s"]
    assert both["mesh"]["sessions_total"] == both["rr"]["sessions_total"] == 3
    assert math.isclose(both["converge_ratio_mesh_to_rr"],
                        both["mesh"]["converge_s"] / both["rr"]["converge_s"], rel_tol=0.01)
    calc = r["felix_per_remote_change"]
    assert calc["large"]["endpoints"] == 20000 and calc["baseline"]["endpoints"] == 1000
    assert calc["large"]["tagged"]["restore_lines_per_update"] == 1
    assert calc["goal_met"] == (calc["ratio"] <= calc["goal"]["max_ratio"])
    _clocks_named(r["clusters"][0], "converge.clock", "converge.baseline.name", "idle.clock",
                  "profile_change.clock", "profile_change.baseline.name",
                  "new_workload.clock", "new_workload.baseline.name")


def _check_etcd_fanout(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "etcd_fanout" and r["quick"] is True
    assert [(x["watchers"], x["transport"]) for x in r["runs"]] == [
        (10, "http"), (10, "grpc"), (30, "http"), (30, "grpc")]
    for x in r["runs"]:
        # every watcher got every write, and etcd's own counter agrees
        assert x["events"] == x["etcd_events_counted"] == x["watchers"] * x["writes"] == \
            x["watchers"] * 100
        assert x["etcd_sent_bytes_per_event"] > r["value_bytes"]  # each carries the value
    gateway, grpc = r["runs"][2], r["runs"][3]
    assert math.isclose(r["ratio"], gateway["etcd_cpu_us_per_event"]
                        / grpc["etcd_cpu_us_per_event"], rel_tol=0.01)
    assert r["headline"]["gateway_etcd_cpu_us_per_event"] == gateway["etcd_cpu_us_per_event"]
    _clocks_named(r, "clock", "baseline.name")


def _check_policy_trace(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "policy_trace" and r["quick"] is True
    assert (r["endpoints"], r["profiles"], r["policies"]) == (1000, 100, 20)
    assert r["queries"] == 6 and sum(r["verdicts"].values()) == 6
    assert r["verdicts"]["allow"] and r["verdicts"]["deny"]  # the queries ask both ways
    assert r["wall_ms"]["p50"] <= r["wall_ms"]["p90"] <= r["wall_ms"]["p99"] \
        <= r["wall_ms"]["max"]
    assert r["cpu_ms"]["p50"] <= r["cpu_ms"]["p99"] <= r["cpu_ms"]["max"]
    assert math.isclose(r["ratio"], r["wall_ms"]["p50"] / r["baseline_ms"]["etcdctl_get_prefix"],
                        rel_tol=0.05)
    assert r["goal_met"] == (r["wall_ms"]["max"] <= r["goal_ms"])
    assert r["goal_met_p99"] == (r["wall_ms"]["p99"] <= r["goal_ms"])
    assert "clock" in r and "etcdctl_get_prefix" in r["baseline_names"]


def _check_docker(r: dict[str, Any]) -> None:
    assert r["benchmark"] == "docker" and r["quick"] is True
    run, par = r["run"], r["parallel"]
    assert run["rounds"] == 3 and run["p90_s"] >= run["median_s"]
    assert math.isclose(run["ratio"], run["median_s"] / run["baseline"]["median_s"],
                        rel_tol=0.05)
    assert run["goal_met"] == (run["ratio"] <= run["goal"]["max_ratio"])
    assert r["ratio"] == run["ratio"]
    # every container got its own address and was reached from the other host
    assert par["containers"] == 5 and par["distinct_addresses"] == 5
    assert par["duplicate_addresses"] == 0
    reach, base = par["reachable"], par["baseline"]["reachable"]
    assert reach["p50_s"] <= reach["p99_s"] <= reach["max_s"]
    assert par["goal_met"] == (reach["p99_s"] <= par["goal"]["max_p99_s"])
    # the baseline is timed to its first packet too, and the ratio compares the two
    assert base["p50_s"] <= base["p99_s"] <= base["max_s"]
    assert math.isclose(par["ratio"], reach["p99_s"] / base["p99_s"], rel_tol=0.05)
    # where the time goes: the endpoint written (probing starts) and the container's veth
    # up (Docker) both come before its first reply, for every container
    steps = par["breakdown"]
    for stage in ("endpoint_written", "veth_up"):
        assert steps[stage]["max_s"] <= steps["reachable"]["max_s"], stage
    assert steps["reachable"] == reach
    assert steps["felix_route_after_veth_up"]["p50_s"] >= 0
    assert steps["reply_after_felix_route"]["p50_s"] >= 0
    _clocks_named(r, "run.clock", "run.baseline.name", "parallel.clock",
                  "parallel.baseline.name")


BENCHMARKS = [
    Bench("syncer",
          fields=("keys", "updates", "rounds", "ratio", "ratio_snapshot", "ratio_updates",
                  "ratio_total", "goal.max_ratio", "syncer.snapshot_s", "syncer.updates_s",
                  "syncer.total_s", "syncer.writer_s", "syncer.keys_per_s",
                  "baseline.snapshot_s", "baseline.updates_s", "baseline.total_s",
                  "baseline.writer_s", "baseline.keys_per_s"),
          extra_fields=("goal_met", "goals_met.snapshot", "goals_met.updates", "baseline.name"),
          marks=(pytest.mark.etcd,), check=_check_syncer),
    Bench("ipam",
          fields=("assignments", "ratio_four_clients", "baseline.cas_per_s",
                  "baseline.raw_cas.per_s", "baseline.raw_cas.p99_ms",
                  "baseline.four_raw_cas_clients.per_s", "one_client.per_s",
                  "one_client.p50_ms", "one_client.p99_ms", "four_clients.per_s",
                  "four_clients.p50_ms", "four_clients.p99_ms",
                  "goals.one_client_p99_ms_max", "goals.one_client_ratio_min"),
          extra_fields=("goals_met.p99", "goals_met.ratio", "etcd_data.dir"),
          marks=(pytest.mark.etcd,), check=_check_ipam),
    Bench("calicoctl",
          fields=("profiles", "wall_ms.version", "wall_ms.help", "wall_ms.pool_show",
                  "wall_ms.profile_show", "wall_ms.profile_show_detailed",
                  "baseline_ms.python_c_pass", "baseline_ms.etcdctl_get_pool_keys",
                  "baseline_ms.etcdctl_get_profile_keys_only",
                  "baseline_ms.etcdctl_get_profile_keys_and_values",
                  "ratios.version_vs_python", "ratios.help_vs_python",
                  "ratios.pool_show_vs_etcdctl", "ratios.profile_show_vs_etcdctl",
                  "ratios.profile_show_detailed_vs_etcdctl", "goals_ms.startup",
                  "goals_ms.data"),
          extra_fields=("goals_met.version", "goals_met.help", "goals_met.pool_show",
                        "goals_met.profile_show", "goals_met.profile_show_detailed"),
          marks=(pytest.mark.etcd,), check=_check_calicoctl),
    Bench("felix_dataplane",
          fields=("endpoints", "iptables_rules", "routes", "cold_start.felix.total_s",
                  "cold_start.felix.iptables_s", "cold_start.felix.routes_s",
                  "cold_start.felix.ipsets_s", "cold_start.felix.sysctls_s",
                  "cold_start.floor.total_s", "cold_start.floor.iptables_restores_s",
                  "cold_start.floor.ip_batch_s", "cold_start.floor.ipset_restore_s",
                  "cold_start.floor.sysctl_s", "cold_start.ratio_with_sysctls",
                  "cold_start.iptables_ratio",
                  "cold_start.extra_not_a_floor.naive_single_iptables_restore_s",
                  "after_cold_start.noop_refresh_s",
                  "after_cold_start.endpoint_add_p50_s", "per_rule.ratio",
                  "per_rule.per_rule_commands_s", "per_rule.felix_owner_s",
                  "per_rule.commands"),
          extra_fields=("cold_start.goal.max_s", "cold_start.goal.max_ratio",
                        "cold_start.goal_met.max_s"),
          marks=(pytest.mark.root,), check=_check_felix_dataplane),
    Bench("felix",
          fields=("endpoints", "cold_start.felix_s", "cold_start.floor.with_sysctls_s",
                  "cold_start.floor.iptables_restores_s",
                  "idle.rss_mb", "endpoint_add.p50_ms", "endpoint_add.p99_ms",
                  "endpoint_add.floor.p99_ms", "endpoint_add.ratio_p99",
                  "endpoint_add.extra_felix_status_up.p99_ms",
                  "shared_profile_rule.p99_ms", "per_rule_iptables.ratio"),
          extra_fields=("idle.cpu_percent_of_core", "cold_start.goal.max_s",
                        "endpoint_add.goal.max_p99_ms", "endpoint_add.goal_met",
                        "idle.goal_met.cpu", "shared_profile_rule.goal_met"),
          marks=(pytest.mark.root, pytest.mark.etcd), check=_check_felix),
    Bench("policy_trace",
          fields=("endpoints", "profiles", "policies", "keys", "queries", "wall_ms.p50",
                  "wall_ms.p90", "wall_ms.p99", "wall_ms.max", "cpu_ms.p50", "cpu_ms.p99",
                  "trace_program_ms.p50", "baseline_ms.etcdctl_get_prefix",
                  "baseline_ms.etcdctl_get_host_dir", "baseline_ms.python_c_pass", "goal_ms"),
          extra_fields=("goal_met", "goal_met_p99", "goal_met_p50", "clock", "baseline_names",
                        "load_average_1m", "truth"),
          marks=(pytest.mark.etcd,), check=_check_policy_trace),
    Bench("node",
          fields=("cluster_up.hosts", "cluster_up.total_s", "cluster_up.first_host_s",
                  "cluster_up.node_run_returned_s", "cluster_up.baseline.total_s",
                  "cluster_up.cpu_s.programs_when_up", "cluster_up.cpu_s.calicoctl_node_run",
                  "machine.cpus",
                  "cluster_up.ratio", "cluster_up.goal.max_s", "workload_reachable.workloads",
                  "workload_reachable.reachable.p50_s", "workload_reachable.reachable.p99_s",
                  "workload_reachable.baseline.p50_s", "workload_reachable.baseline.p99_s",
                  "workload_reachable.from_profile_set.p99_s", "workload_reachable.ratio",
                  "workload_reachable.goal.max_p99_s", "workload_reachable.watch_delay.p99_ms",
                  "bgp_propagation.p50_s",
                  "bgp_propagation.p99_s", "bgp_propagation.baseline.p99_s",
                  "bgp_propagation.ratio"),
          extra_fields=("cluster_up.goal_met", "workload_reachable.goal_met",
                        "cluster_up.baseline.name", "workload_reachable.baseline.name",
                        "bgp_propagation.goal"),
          marks=(pytest.mark.root, pytest.mark.etcd), check=_check_node),
    Bench("node_docker",
          fields=("cluster_up.total_s", "cluster_up.commands_returned_s",
                  "cluster_up.bgp_established_s", "cluster_up.baseline.total_s",
                  "cluster_up.baseline.commands_returned_s",
                  "cluster_up.baseline.bgp_established_s", "cluster_up.ratio",
                  "cluster_up.goal.max_ratio", "rebuild.first_build_on_engine_s",
                  "rebuild.rebuild_s", "rebuild.baseline.build_s", "rebuild.ratio",
                  "rebuild.goal.max_s", "restart.interval_ms", "restart.sent",
                  "restart.node_back_s", "restart.longest_gap_ms", "restart.baseline.sent",
                  "restart.baseline.node_back_s"),
          extra_fields=("cluster_up.goal_met", "rebuild.goal_met", "restart.goal_met",
                        "restart.lost", "restart.baseline.lost", "cluster_up.baseline.name",
                        "rebuild.baseline.name", "restart.baseline.name", "cluster_up.clock",
                        "rebuild.clock", "restart.clock"),
          marks=(pytest.mark.root, pytest.mark.etcd), check=_check_node_docker,
          timeout=600.0),
    Bench("scale",
          fields=("ratio", "headline.converge_s", "headline.profile_change_p99_s",
                  "headline.rss_per_host_max_mb",
                  "clusters.0.converge.total_s", "clusters.0.converge.baseline.total_s",
                  "clusters.0.converge.cpu_s.programs_when_converged",
                  "clusters.0.idle.per_host.rss_mb.max", "clusters.0.idle.per_host.pss_mb.max",
                  "clusters.0.idle.per_program.felix.rss_mb.mean",
                  "clusters.0.idle.per_program.confd.rss_mb.mean",
                  "clusters.0.profile_change.p99_s", "clusters.0.profile_change.baseline.p99_s",
                  "clusters.0.new_workload.p99_s", "clusters.0.new_workload.baseline.p99_s",
                  "clusters.0.etcd.bytes_per_workload", "clusters.1.converge.total_s",
                  "clusters.0.converge.cpu_s_per_host.calicoctl_node_run",
                  "clusters.0.converge.cpu_s_per_host.programs_when_converged",
                  "mesh_vs_rr.3.converge_ratio_mesh_to_rr",
                  "felix_per_remote_change.large.tagged.median_ms",
                  "felix_per_remote_change.baseline.tagged.median_ms"),
          extra_fields=("clusters.0.goal_met", "clusters.0.goal", "headline.cluster",
                        "felix_per_remote_change.goal_met"),
          marks=(pytest.mark.root, pytest.mark.etcd), check=_check_scale),
    Bench("etcd_fanout",
          fields=("runs.0.etcd_cpu_us_per_event", "runs.1.etcd_cpu_us_per_event",
                  "runs.2.etcd_cpu_us_per_event", "runs.3.etcd_cpu_us_per_event",
                  "runs.2.watchers_cpu_us_per_event", "runs.3.watchers_cpu_us_per_event",
                  "runs.2.events_per_s", "runs.3.events_per_s",
                  "runs.2.etcd_sent_bytes_per_event"),
          marks=(pytest.mark.etcd,), check=_check_etcd_fanout),
    Bench("docker",
          fields=("run.median_s", "run.p90_s", "run.baseline.median_s", "run.ratio",
                  "run.goal.max_ratio", "parallel.containers", "parallel.reachable.p50_s",
                  "parallel.reachable.p99_s", "parallel.docker_run_returned.p99_s",
                  "parallel.baseline.reachable.p99_s",
                  "parallel.baseline.docker_run_returned.p99_s", "parallel.ratio",
                  "parallel.goal.max_p99_s", "parallel.breakdown.endpoint_written.p99_s",
                  "parallel.breakdown.veth_up.p99_s", "parallel.breakdown.felix_route.p99_s"),
          extra_fields=("run.goal_met", "parallel.goal_met", "parallel.duplicate_addresses",
                        "parallel.breakdown.felix_route_after_veth_up.p99_s",
                        "parallel.breakdown.reply_after_felix_route.p99_s",
                        "parallel.breakdown.block_route_at_host2.containers",
                        "machine.loadavg_1m_at_start", "machine.loadavg_1m_at_end"),
          marks=(pytest.mark.root, pytest.mark.etcd), check=_check_docker),
    Bench("confd",
          fields=("render.view_and_render_ms.p50", "render.view_and_render_ms.p99",
                  "latency.change_to_reconfigured_ms.p50",
                  "latency.change_to_reconfigured_ms.p99",
                  "latency.bare_birdc_configure_ms.p50", "goals.render_ms_max",
                  "goals.change_overhead_over_bare_ms_max"),
          extra_fields=("goals_met.render", "goals_met.change_to_reconfigured"),
          marks=(pytest.mark.root, pytest.mark.etcd), check=_check_confd),
    Bench("routing",
          fields=("modes.native.same_segment.gbit_s", "modes.native.same_segment.rtt_ms",
                  "modes.native.same_segment.baseline.gbit_s",
                  "modes.native.same_segment.baseline.rtt_ms",
                  "modes.vxlan_always.same_segment.gbit_s",
                  "modes.vxlan_always.across_router.gbit_s",
                  "modes.vxlan_cross_subnet.same_segment.gbit_s",
                  "modes.vxlan_cross_subnet.across_router.gbit_s",
                  "throughput_ratios.native", "throughput_ratios.vxlan_always",
                  "throughput_ratios.vxlan_cross_subnet_across_router",
                  "goals.native_min", "goals.vxlan_min"),
          extra_fields=("goals_met.native", "goals_met.vxlan", "clock.rtt"),
          marks=(pytest.mark.root, pytest.mark.etcd), check=_check_routing),
    Bench("cni",
          fields=("containers", "add.p50_ms", "add.p99_ms", "del.p50_ms", "del.p99_ms",
                  "baseline.add.p50_ms", "baseline.add.p99_ms", "baseline.del.p99_ms",
                  "ratio_p50", "ratio_del", "ratio_cpu", "add.cpu_p50_ms",
                  "baseline.add.cpu_p50_ms", "startup_ms.python_c_pass",
                  "startup_ms.calico_version", "parallel.add_wall_ms",
                  "goal.max_ratio", "goal.max_add_p99_ms"),
          extra_fields=("baseline.name", "clock.start", "clock.stop", "goal_met.ratio",
                        "goal_met.add_p99", "goal_met.parallel"),
          marks=(pytest.mark.root, pytest.mark.etcd), check=_check_cni),
]


def _get(result: dict[str, Any], path: str) -> Any:
    value: Any = result
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit():  # "clusters.0.converge"
            assert int(part) < len(value), f"missing field {path!r}"
            value = value[int(part)]
            continue
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


def test_ipam_disk_refuses_a_memory_filesystem() -> None:
    """`--disk` must really be on disk: pointed at tmpfs it fails loudly, before any etcd."""
    proc = subprocess.run([sys.executable, "-m", "bench.ipam", "--quick", "--disk",
                           "--disk-dir", "/dev/shm"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "--disk-dir /dev/shm is on tmpfs" in proc.stderr
