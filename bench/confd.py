"""Benchmark: confd's render time and its latency from a datastore change to BIRD
reconfigured, against a bare `birdc configure` of the same file.

- render: `build_view` + `render` of one host's configuration in an N-node full mesh
  (N=500; --quick 100), each node with an affine block; median and p99 of repeated runs.
  Goal: <= 200 ms.
- change -> reconfigured: a real etcd and a real BIRD in throw-away network namespaces
  (netsim.topology), the N-node cluster in etcd, confd's loop (`ConfdDaemon`, the
  same code `calico-confd` runs) following etcd. Each change adds a global peer; the time
  is from just before the etcd write to `birdc configure` having answered "Reconfigured"
  for a render that includes the change. 100 changes (--quick 10).
  Baseline, in the same run: a bare `birdc configure` of the same live file after each
  change. Goal: p50 <= 300 ms + the baseline's p50.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import threading
import time
from typing import Any

from confd.apply import ApplyResult, BirdApplier
from confd.daemon import ConfdDaemon
from confd.render import render
from confd.view import build_view
from libcalico import keyspace as ks
from libcalico.model.network import BGPPeer
from netsim.topology import Topology
from netsim.wait import wait_for

POOL = "198.19.0.0/16"


def node_ip(i: int) -> str:
    return f"198.18.{1 + i // 250}.{1 + i % 250}"


def cluster_values(nodes: int) -> dict[str, str]:
    values = {
        ks.BGP_GLOBAL_AS_KEY: "64512",
        ks.BGP_GLOBAL_MESH_KEY: json.dumps({"enabled": True}),
        ks.pool_key(POOL): json.dumps({"cidr": POOL}),
    }
    for i in range(nodes):
        host = f"node{i}"
        values[ks.bgp_host_key(host, "ip_addr_v4")] = node_ip(i)
        block = f"198.19.{i // 4}.{(i % 4) * 64}/26"
        values[ks.affinity_key(host, block)] = ""
        values[ks.block_key(block)] = json.dumps({
            "cidr": block, "affinity": f"host:{host}", "allocations": [0] + [None] * 63,
            "unallocated": list(range(1, 64)),
            "attributes": [{"handle_id": "x", "secondary": {"host": host}}]})
    return values


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def summary(samples: list[float]) -> dict[str, float]:
    return {"p50": pct(samples, 0.5), "p99": pct(samples, 0.99),
            "mean": round(statistics.fmean(samples), 2), "n": len(samples)}


def bench_render(nodes: int, runs: int) -> dict[str, Any]:
    values = cluster_values(nodes)
    view_ms, render_ms, total_ms = [], [], []
    text = ""
    for _ in range(runs):
        t0 = time.perf_counter()
        view = build_view(values)
        t1 = time.perf_counter()
        text = render(view, "node0", include_dir="/etc/calico/bird.d")
        t2 = time.perf_counter()
        view_ms.append((t1 - t0) * 1000)
        render_ms.append((t2 - t1) * 1000)
        total_ms.append((t2 - t0) * 1000)
    return {"nodes": nodes, "sessions": text.count("protocol bgp "),
            "config_bytes": len(text), "build_view_ms": summary(view_ms),
            "render_ms": summary(render_ms), "view_and_render_ms": summary(total_ms)}


class Recorder(ConfdDaemon):
    """The daemon, noting when each apply that reloaded BIRD finished."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reloads: list[tuple[int, float]] = []  # (generation applied, time)
        self.cond = threading.Condition()

    def render_and_apply(self) -> ApplyResult | None:
        result = super().render_and_apply()
        if result is not None and result.reloaded:
            with self.cond:
                self.reloads.append((self.applied_generation, time.perf_counter()))
                self.cond.notify_all()
        return result


def bench_latency(nodes: int, changes: int) -> dict[str, Any]:
    with Topology("cfb", hosts=1) as topo:
        host = topo.hosts[0]
        store = topo.datastore()
        values = cluster_values(nodes)
        values[ks.bgp_host_key("node0", "ip_addr_v4")] = host.ip
        for key, value in values.items():
            store.put(key, value)
        conf, sock = host.dir / "bird.cfg", host.dir / "bird.ctl"
        applier = BirdApplier(str(conf), str(sock), include_dir=str(host.dir / "bird.d"))
        daemon = Recorder(store, "node0", applier, include_dir=str(host.dir / "bird.d"))
        daemon.start_syncer()
        loop = threading.Thread(target=daemon.run, daemon=True)
        loop.start()
        try:
            wait_for(conf.exists, 60, message="confd's first config")
            topo.spawn(host, ["bird", "-f", "-c", str(conf), "-s", str(sock)], name="bird")
            wait_for(lambda: not applier.reload_pending, 60, message="BIRD loading the config")
            latency, bare = [], []
            for i in range(changes):
                with daemon.cond:
                    seen = len(daemon.reloads)
                ip = f"198.18.200.{1 + i}"

                def reconfigured(ip: str = ip, seen: int = seen) -> bool:
                    # Only this change is in flight: a reload after `seen` whose file
                    # holds the new peer is the one for this change.
                    return len(daemon.reloads) > seen and f"neighbor {ip} as" in conf.read_text()

                t0 = time.perf_counter()
                store.put(ks.bgp_peer_key(ip), json.dumps(BGPPeer(ip, 65000).to_json()))
                with daemon.cond:
                    ok = daemon.cond.wait_for(reconfigured, timeout=30)
                    done = daemon.reloads[-1][1]
                if not ok:
                    raise RuntimeError(f"change {i} not reconfigured within 30 s")
                latency.append((done - t0) * 1000)
                t1 = time.perf_counter()
                out = subprocess.run(["birdc", "-s", str(sock), "configure", f'"{conf}"'],
                                     capture_output=True, text=True, check=True).stdout
                bare.append((time.perf_counter() - t1) * 1000)
                if "Reconfigured" not in out and "Reconfiguration" not in out:
                    raise RuntimeError(f"bare configure failed: {out}")
        finally:
            daemon.stop()
            loop.join(10)
            store.close()
    lat, base = summary(latency), summary(bare)
    return {"nodes": nodes, "changes": changes, "change_to_reconfigured_ms": lat,
            "bare_birdc_configure_ms": base,
            "overhead_p50_ms": round(lat["p50"] - base["p50"], 2),
            "overhead_p99_ms": round(lat["p99"] - base["p99"], 2),
            "ratio_p50": round(lat["p50"] / base["p50"], 2) if base["p50"] else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (for the tests)")
    args = parser.parse_args(argv)
    nodes = 100 if args.quick else 500
    render_part = bench_render(nodes, 10 if args.quick else 30)
    latency_part = bench_latency(nodes, 10 if args.quick else 100)
    render_p50 = render_part["view_and_render_ms"]["p50"]
    overhead = latency_part["overhead_p50_ms"]
    result = {
        "benchmark": "confd",
        "quick": args.quick,
        "render": render_part,
        "latency": latency_part,
        "clock": {"render": "build_view + render of one host's config, in process",
                  "change": "from just before the etcd write to BIRD answering `configure` "
                            "for a render that holds the change (confd's own reload record)"},
        "baseline": "bare `birdc configure` of the same file, after each change",
        "ratio": latency_part["ratio_p50"],
        "goals": {"render_ms_max": 200, "change_overhead_over_bare_ms_max": 300},
        "goals_met": {"render": render_p50 <= 200, "change_to_reconfigured": overhead <= 300},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
