"""Felix's status in etcd: a liveness key per host and the status of each endpoint.

Owns, on a thread of its own (so a slow or absent etcd never stalls the dataplane):
  - the liveness key `keyspace.felix_status_key(host)`, written every
    ReportingIntervalSecs with a lease of ReportingTTLSecs, and the same JSON without a
    lease at `felix_last_status_key(host)`: `{"time", "uptime", "first_update"}`;
  - per-endpoint status at `keyspace.endpoint_status_key(...)`: `{"status": "up" |
    "down" | "error", "reason": ...}`, written only when it changed and at most once
    per EndpointReportingDelaySecs (changes in between are batched, up to 100 keys
    per transaction; the latest wins);
    statuses of endpoints that went away are deleted.
Failures are logged and retried at the next tick; nothing here raises into the driver.

Values are written with `libcalico.codec.dumps` (sorted keys, one byte form).

Leaves to others: deciding each endpoint's status (`felix.endpoint_status`), key layout
(`libcalico.keyspace`), etcd access (`libcalico.datastore`).
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from collections.abc import Mapping

from libcalico import keyspace
from libcalico.codec import dumps
from libcalico.datastore import Datastore, Delete, Lease, Put
from libcalico.errors import DatastoreError

_log = logging.getLogger(__name__)

EndpointStatus = Mapping[str, str]  # {"status": ..., "reason": ...}
TXN_OPS = 100  # status writes per etcd transaction (etcd's default limit is 128)


class StatusReporter:
    """See the module docstring. `set_endpoints()` may be called from any thread."""

    def __init__(self, store: Datastore, hostname: str, interval: float, ttl: float,
                 endpoints_enabled: bool = True, endpoint_delay: float = 1.0) -> None:
        self.store = store
        self.hostname = hostname
        self.interval = interval
        self.ttl = max(int(ttl), 1)
        self.endpoints_enabled = endpoints_enabled
        self.endpoint_delay = endpoint_delay
        self._started = time.monotonic()
        self._lease: Lease | None = None
        self._first = True
        self._wanted: dict[str, dict[str, str]] = {}  # key -> status
        self._written: dict[str, dict[str, str]] = {}
        self._dirty: set[str] = set()  # keys whose wanted status may differ from _written
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_status = 0.0
        self._next_endpoints = 0.0
        self._cleaned = False

    def set_endpoints(self, statuses: Mapping[keyspace.WorkloadEndpointKey,
                                              EndpointStatus | None]) -> None:
        """Record the latest status of some endpoints (None: the endpoint is gone)."""
        if not self.endpoints_enabled:
            return
        with self._lock:
            for key, status in statuses.items():
                skey = keyspace.endpoint_status_key(key.hostname, key.orchestrator,
                                                    key.workload, key.endpoint_id)
                if status is None:
                    self._wanted.pop(skey, None)
                else:
                    self._wanted[skey] = dict(status)
                self._dirty.add(skey)
        self._wake.set()

    def start(self) -> StatusReporter:
        if self.interval <= 0 and not self.endpoints_enabled:
            return self
        self._thread = threading.Thread(target=self._run, name="status", daemon=True)
        self._thread.start()
        return self

    def stop(self, revoke: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        if revoke and self._lease is not None:
            try:
                self._lease.revoke()
            except DatastoreError as exc:
                _log.info("could not revoke the status lease: %s", exc)

    # --- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            if self.interval > 0 and now >= self._next_status:
                self._next_status = now + (self.interval if self._report() else 1.0)
            dirty = self.endpoints_enabled and (bool(self._dirty) or not self._cleaned)
            if dirty and now >= self._next_endpoints:
                ok = self._write_endpoints()
                self._next_endpoints = now + (self.endpoint_delay if ok else 1.0)
                dirty = bool(self._dirty) or not ok
            deadlines = [self._next_status] if self.interval > 0 else []
            if dirty:
                deadlines.append(self._next_endpoints)
            timeout = max(min(deadlines) - time.monotonic(), 0.0) if deadlines else None
            self._wake.wait(timeout)
            self._wake.clear()

    def _report(self) -> bool:
        value = dumps({
            "time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "uptime": round(time.monotonic() - self._started, 1),
            "first_update": self._first})
        try:
            if self._lease is None or self.store.refresh_lease(self._lease.id) <= 0:
                self._lease = self.store.grant_lease(self.ttl)
            self.store.put(keyspace.felix_status_key(self.hostname), value,
                           lease=self._lease.id)
            self.store.put(keyspace.felix_last_status_key(self.hostname), value)
        except DatastoreError as exc:
            _log.warning("could not write felix status: %s", exc)
            self._lease = None  # it may have expired; grant a new one next time
            return False
        self._first = False
        return True

    def _write_endpoints(self) -> bool:
        """Write the statuses that changed since the last write (all of them, compared
        with what etcd holds, the first time)."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            changed = {k: self._wanted.get(k) for k in dirty}
        try:
            if not self._cleaned:
                # Statuses left by an earlier run for endpoints that are gone.
                prefix = keyspace.felix_status_dir(self.hostname) + "workload/"
                kvs, _ = self.store.list(prefix)
                self._written = {kv.key: json.loads(kv.value) for kv in kvs}
                with self._lock:
                    changed = {k: self._wanted.get(k)
                               for k in set(self._written) | set(self._wanted)}
                self._cleaned = True
            ops = [(k, v) for k, v in changed.items() if self._written.get(k) != v]
            for i in range(0, len(ops), TXN_OPS):
                chunk = ops[i:i + TXN_OPS]
                self.store.txn([], [Delete(k) if v is None
                                    else Put(k, dumps(v))
                                    for k, v in chunk])
                for k, v in chunk:
                    if v is None:
                        self._written.pop(k, None)
                    else:
                        self._written[k] = v
                    changed.pop(k)
        except (DatastoreError, ValueError) as exc:
            _log.warning("could not write endpoint status: %s", exc)
            with self._lock:
                self._dirty.update(changed)
            return False
        return True
