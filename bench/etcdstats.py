"""What etcd itself reports, for the benchmarks: watch events delivered, bytes sent to
clients, and the size of what the cluster stores.

Owns: reading etcd's Prometheus `/metrics` through its unix socket (no process, no
namespace entered) - `etcd_debugging_mvcc_events_total` counts every event etcd hands
to a watcher (one write seen by 50 watchers counts 50; checked against a known number of
watchers by `tests/bench/test_etcdstats.py`), `etcd_network_client_grpc_sent_bytes_total`
the bytes etcd sent its clients (watch traffic included; the JSON gateway is a gRPC
client inside etcd, so it counts too), `etcd_debugging_mvcc_watcher_total` the watchers
open; and `key_sizes`: keys and bytes (key + value) under each prefix, at one revision.

Leaves to others: the etcd server (`netsim.etcd`), when to read and what a change is.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from libcalico.datastore import Datastore

EVENTS = "etcd_debugging_mvcc_events_total"
SENT_BYTES = "etcd_network_client_grpc_sent_bytes_total"
WATCHERS = "etcd_debugging_mvcc_watcher_total"
WATCH_STREAMS = "etcd_debugging_mvcc_watch_stream_total"
WANTED = (EVENTS, SENT_BYTES, WATCHERS, WATCH_STREAMS)


def metrics(socket_path: str, timeout: float = 5.0) -> dict[str, float]:
    """The counters above, read from etcd's /metrics over its unix socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket_path)
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    text = b"".join(chunks).decode(errors="replace")
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name in WANTED:
            out[name] = float(rest.split()[0])
    missing = set(WANTED) - set(out)
    if missing:
        raise RuntimeError(f"etcd /metrics has no {sorted(missing)}")
    return out


def delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in (EVENTS, SENT_BYTES)}


def key_sizes(store: Datastore, prefixes: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """name -> {"keys", "bytes", "bytes_per_key"} for each prefix (key + value bytes)."""
    out = {}
    for name, prefix in prefixes.items():
        kvs, _ = store.list(prefix)
        size = sum(len(kv.key.encode()) + len(kv.value.encode()) for kv in kvs)
        out[name] = {"keys": len(kvs), "bytes": size,
                     "bytes_per_key": round(size / len(kvs), 1) if kvs else 0}
    return out
