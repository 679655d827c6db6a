"""Benchmark: what one watch event costs etcd, delivered over the JSON gateway (the
daemons' transport) and over gRPC (the baseline), as the number of watchers grows.

One etcd (`netsim.etcd`, on its unix socket, no namespaces) and W watchers of
`/calico/v1/` in this process, as W felixes would hold (one watch request each); K
writes of a 250-byte endpoint value below it. Clock: from the first write until every
watcher has every event. Figures per transport and W: etcd's CPU (its /proc stat) per
event delivered, the watchers' CPU per event (this process's CPU minus the writing
thread's), events per second, etcd's own count of events delivered
(`etcd_debugging_mvcc_events_total`) and the bytes it sent per event. Full run: W = 10,
100, 300 and K = 300; `--quick`: W = 10, 30 and K = 100. Ratio: etcd's CPU per event over
the gateway against gRPC at the largest W. No goal: docs/scale.md turns the figures into
the limit of one etcd at 1,000 hosts.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from bench import etcdstats
from bench.common import emit, parser, ratio
from libcalico.datastore import Datastore, EtcdSettings, WatchStream
from netsim.etcd import EtcdServer
from netsim.wait import wait_for

PREFIX = "/calico/v1/"
VALUE = json.dumps({"state": "active", "name": "cali0123456789a", "mac": "ee:ee:ee:ee:ee:ee",
                    "profile_ids": ["prof-web"], "ipv4_nets": ["198.18.3.17/32"],
                    "ipv6_nets": [], "labels": {"app": "web", "tier": "frontend"},
                    "orchestrator": "k8s", "workload": "default.web-7f9c5d-00001"})


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _key(i: int) -> str:
    return f"{PREFIX}host/h{i % 50}/workload/k8s/w{i}/endpoint/eth0"


def measure(server: EtcdServer, transport: str, watchers: int, writes: int) -> dict[str, Any]:
    writer = Datastore(EtcdSettings.from_env({}, endpoints=server.client_url, transport="http"))
    stores = [Datastore(EtcdSettings.from_env({}, endpoints=server.client_url,
                                              transport=transport))
              for _ in range(1 if transport == "grpc" else watchers)]
    assert server.proc is not None
    got = [0]
    lock = threading.Lock()
    try:
        start = writer.put(PREFIX + "mark", str(time.time()))
        # gRPC: one channel carries every stream (as etcd3 does); the gateway: a
        # connection per watch, as each felix has its own
        streams: list[WatchStream] = [stores[i % len(stores)].watch([PREFIX], start + 1)
                                      for i in range(watchers)]

        def follow(stream: WatchStream) -> None:
            for batch in stream:
                with lock:
                    got[0] += len(batch.events)

        readers = [threading.Thread(target=follow, args=(s,), daemon=True) for s in streams]
        for t in readers:
            t.start()
        time.sleep(0.5)  # every watch created before the first write
        before = etcdstats.metrics(server.socket_path)
        etcd0, proc0, thread0 = _cpu_s(server.proc.pid), time.process_time(), time.thread_time()
        t0 = time.monotonic()
        for i in range(writes):
            writer.put(_key(i), VALUE)
        writer_cpu = time.thread_time() - thread0
        wanted = watchers * writes
        wait_for(lambda: got[0] >= wanted, timeout=300, interval=0.02,
                 message=f"{wanted} watch events")
        seconds = time.monotonic() - t0
        etcd_cpu, proc_cpu = _cpu_s(server.proc.pid) - etcd0, time.process_time() - proc0
        after = etcdstats.metrics(server.socket_path)
        for stream in streams:
            stream.cancel()
        for t in readers:
            t.join(5)
        events = got[0]
        delta = etcdstats.delta(before, after)
        return {"transport": transport, "watchers": watchers, "writes": writes,
                "events": events, "etcd_events_counted": int(delta.get(etcdstats.EVENTS, 0)),
                "etcd_cpu_us_per_event": round(etcd_cpu / events * 1e6, 1),
                "watchers_cpu_us_per_event": round(max(proc_cpu - writer_cpu, 0.0) / events
                                                   * 1e6, 1),
                "events_per_s": round(events / seconds),
                "etcd_sent_bytes_per_event": round(delta.get(etcdstats.SENT_BYTES, 0)
                                                   / events, 1)}
    finally:
        writer.delete_prefix(PREFIX)
        writer.close()
        for store in stores:
            store.close()


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    counts = (10, 30) if args.quick else (10, 100, 300)
    writes = 100 if args.quick else 300
    result: dict[str, Any] = {"benchmark": "etcd_fanout", "quick": args.quick,
                              "machine": {"cpus": os.cpu_count(),
                                          "loadavg_1m_at_start": os.getloadavg()[0]},
                              "value_bytes": len(VALUE),
                              "clock": "from the first write until every watcher has every "
                                       "event",
                              "baseline": {"name": "the same watchers over gRPC (etcd3)"},
                              "runs": []}
    with EtcdServer(unix_socket=True) as server:
        for watchers in counts:
            for transport in ("http", "grpc"):
                result["runs"].append(measure(server, transport, watchers, writes))
    largest = [r for r in result["runs"] if r["watchers"] == counts[-1]]
    gateway, grpc = (next(r for r in largest if r["transport"] == t) for t in ("http", "grpc"))
    result["ratio"] = ratio(gateway["etcd_cpu_us_per_event"], grpc["etcd_cpu_us_per_event"])
    result["headline"] = {"watchers": counts[-1],
                          "gateway_etcd_cpu_us_per_event": gateway["etcd_cpu_us_per_event"],
                          "grpc_etcd_cpu_us_per_event": grpc["etcd_cpu_us_per_event"],
                          "gateway_watchers_cpu_us_per_event":
                              gateway["watchers_cpu_us_per_event"],
                          "grpc_watchers_cpu_us_per_event": grpc["watchers_cpu_us_per_event"]}
    result["machine"]["loadavg_1m_at_end"] = os.getloadavg()[0]
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
