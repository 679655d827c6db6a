"""Part of the scale benchmark: felix's own work for one change on another host, against
the size of the cluster.

Every felix follows every endpoint of the cluster (tags and selectors need cluster-wide
membership), so its work per remote change must not grow with the cluster. Measured in
one process, with no kernel: felix's calculation (`CalcGraph`) and its ipset owner
(`IPSets`, whose `ipset restore` input is recorded instead of run) holding N remote
endpoints on 1,000 other hosts, all in one profile whose tag the local endpoint's
inbound rule uses, so one ipset holds every one of them. Timed, per update (median of
`updates`): parse, calculation, flush, the hand-over to the owner and the owner
rendering its restore input, for (1) a remote endpoint joining the shared tag and (2)
one in a profile that no set in use refers to. Baseline: the same at 1,000 endpoints;
ratio = cost at N / cost at 1,000; goal <= 2 (O(1) per change, noise allowed). Also the
resident memory per remote endpoint (calculation and owner; the syncer's index and the
interpreter's own come on top).

Leaves to others: the kernel side (`bench.felix`, `bench.felix_dataplane`).
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

from felix.calc.graph import CalcGraph, CalcSettings
from felix.dataplane.ipsets import IPSets
from libcalico import keyspace

LOCAL = "local"
SHARED = "shared"  # the profile (and tag) every remote endpoint has


class RecordingRunner:
    """Stands in for `CommandRunner`: an empty kernel; records what would be run."""

    def __init__(self) -> None:
        self.inputs: list[str] = []

    def run(self, cmd: Sequence[str], input: str | None = None) -> str:  # noqa: A002
        if input is not None:
            self.inputs.append(input)
        return ""


def _endpoint(host: str, i: int, profile: str) -> tuple[str, str]:
    ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    key = keyspace.workload_endpoint_key(host, "k8s", f"w{i}", "eth0")
    return key, json.dumps({"state": "active", "name": f"cali{i:011x}"[:15],
                            "mac": "02:00:00:00:00:01", "profile_ids": [profile],
                            "labels": {}, "ipv4_nets": [f"{ip}/32"], "ipv6_nets": []})


def _graph(n: int) -> tuple[CalcGraph, IPSets, RecordingRunner]:
    g = CalcGraph(CalcSettings(LOCAL, ipv6=False))
    runner = RecordingRunner()
    owner = IPSets(4, runner)  # type: ignore[arg-type]  # the runner's shape
    g.on_update(keyspace.profile_key(SHARED, "tags"), json.dumps([SHARED]))
    g.on_update(keyspace.profile_key(SHARED, "rules"), json.dumps(
        {"inbound_rules": [{"action": "allow", "src_tag": SHARED}],
         "outbound_rules": [{"action": "allow"}]}))
    g.on_update(*_endpoint(LOCAL, 1 << 23, SHARED))
    for i in range(n):
        g.on_update(*_endpoint(f"host{i % 1000}", i, SHARED))
    _hand_over(g, owner)
    owner.apply()
    return g, owner, runner


def _hand_over(g: CalcGraph, owner: IPSets) -> None:
    changes = g.flush()
    for name, state in changes.ipsets.get(4, {}).items():
        if state is None:
            owner.remove_ipset(name)
        else:
            owner.set_ipset(state)
    for name, (added, removed) in changes.ipset_deltas.get(4, {}).items():
        owner.update_members(name, added, removed)


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def per_update(n: int, updates: int) -> dict[str, Any]:
    """Median seconds per remote change, tagged and untagged, with `n` endpoints, and
    the resident memory the endpoints take (calculation and ipset owner)."""
    gc.collect()
    before = _rss_kb()
    g, owner, runner = _graph(n)
    runner.inputs.clear()
    gc.collect()
    out: dict[str, Any] = {"endpoints": n,
                           "rss_bytes_per_endpoint": round((_rss_kb() - before) * 1024 / n)}
    for kind, profile in (("tagged", SHARED), ("untagged", "unused")):
        times = []
        lines = []
        for j in range(updates):
            key, value = _endpoint("hostx", n + (j if kind == "tagged" else updates + j),
                                   profile)
            before = len(runner.inputs)
            t0 = time.perf_counter()
            g.on_update(key, value)
            _hand_over(g, owner)
            owner.apply()
            times.append(time.perf_counter() - t0)
            lines.append(sum(len(i.splitlines()) for i in runner.inputs[before:]))
        out[kind] = {"median_ms": round(statistics.median(times) * 1000, 4),
                     "restore_lines_per_update": max(lines)}
    return out


def run(large: int, updates: int = 200, small: int = 1000) -> dict[str, Any]:
    base, big = per_update(small, updates), per_update(large, updates)
    ratios = {kind: round(big[kind]["median_ms"] / base[kind]["median_ms"], 3)
              for kind in ("tagged", "untagged")}
    return {"clock": "per remote endpoint change (median of "
                     f"{updates}): parse, calculation, flush, hand-over to the ipset owner "
                     "and its restore input (recorded, not run)",
            "large": big, "baseline": {"name": f"the same with {small} endpoints", **base},
            "ratio": max(ratios.values()), "ratios": ratios,
            "goal": {"max_ratio": 2.0}, "goal_met": max(ratios.values()) <= 2.0}


if __name__ == "__main__":
    print(json.dumps(run(100_000), indent=2))
