"""The syncer: a consistent snapshot of some prefixes, then every change, forever.

Owns: the snapshot-then-watch protocol and its recovery. It reads the prefixes at one
revision, delivers that snapshot, says it is in sync, then follows a watch from the
snapshot's revision + 1. When the watch breaks (compaction, disconnect, etcd restarted)
it backs off, takes a new snapshot and delivers only the difference from what the
consumer was last told, deletes included. The consumer therefore never misses a delete
and ends with exactly etcd's content.

State: `_known` maps every key the consumer holds to the (mod_revision, hash of the value)
it was told; it is what a resnapshot is diffed against. The value is part of the
comparison because an etcd that was wiped or restored from a backup reuses revisions for
different content; its hash stands in for it because a consumer such as felix keeps
only what it parsed from 100,000 values, and holding each text here would double that.

A consumer whose callback raises does not stop the syncer: the failure is logged, and
after a back-off the next snapshot is delivered in full (plus deletes of every key the
consumer may still hold), so the consumer can rebuild its view.

Leaves to others: what the keys mean (consumers parse them with `libcalico.keyspace`) and
what to do with them. Callbacks run on the syncer's own thread, in order; a consumer that
needs to coalesce does so itself.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Sequence
from typing import Protocol

from libcalico.datastore import Datastore, WatchEvent, WatchStream
from libcalico.errors import DatastoreError, DatastoreUnavailable
from libcalico.retry import Backoff

_log = logging.getLogger(__name__)

SNAPSHOT_CHUNK = 5000


class SyncStatus(enum.Enum):
    WAIT_FOR_DATASTORE = "wait-for-datastore"  # never yet reached etcd
    RESYNC = "resync"  # reading a snapshot (first one, or after a broken watch)
    IN_SYNC = "in-sync"  # consumer holds a consistent view and follows changes


# One change as the consumer sees it: key, value (None: deleted) and mod_revision. It is
# the datastore's watch event type itself, so following a watch copies nothing.
Update = WatchEvent


class SyncerCallbacks(Protocol):
    def on_status(self, status: SyncStatus) -> None: ...

    def on_updates(self, updates: Sequence[Update]) -> None: ...


class Syncer:
    """Follows `prefixes` of `datastore` and feeds `callbacks` from its own thread."""

    def __init__(self, datastore: Datastore, prefixes: Sequence[str],
                 callbacks: SyncerCallbacks, *, min_backoff: float = 0.1,
                 max_backoff: float = 5.0, name: str = "syncer") -> None:
        self._store = datastore
        self._prefixes = tuple(prefixes)
        self._callbacks = callbacks
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._name = name
        self._known: dict[str, tuple[int, int]] = {}  # key -> (mod_revision, hash(value))
        self._redeliver = False  # the next snapshot goes out in full (consumer failed)
        self._stop = threading.Event()
        self._in_sync = threading.Event()
        self._stream: WatchStream | None = None
        self._stream_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.status = SyncStatus.WAIT_FOR_DATASTORE
        self.resyncs = 0  # completed snapshots, for metrics and tests
        self.revision = 0  # highest revision delivered

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> Syncer:
        self._thread = threading.Thread(target=self.run, name=self._name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._stream_lock:
            if self._stream is not None:
                self._stream.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wait_in_sync(self, timeout: float | None = None) -> bool:
        return self._in_sync.wait(timeout)

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        backoff = Backoff(self._min_backoff, self._max_backoff)
        while not self._stop.is_set():
            try:
                revision = self._resync()
                backoff.reset()
                self._follow(revision)
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any failure
                if self._stop.is_set():
                    break
                if isinstance(exc, DatastoreError):
                    _log.warning("%s: datastore error (%s); resyncing in %.1fs",
                                 self._name, exc, backoff.current)
                else:
                    # The consumer failed part-way through a delivery: what it holds is
                    # unknown, so the next snapshot is delivered in full.
                    _log.exception("%s: the consumer failed; redelivering everything in "
                                   "%.1fs", self._name, backoff.current)
                    self._redeliver = True
                self._in_sync.clear()
                if self.status is SyncStatus.IN_SYNC:
                    self._set_status(SyncStatus.RESYNC)
                self._stop.wait(backoff.next())

    def _set_status(self, status: SyncStatus) -> None:
        self.status = status
        self._callbacks.on_status(status)

    def _resync(self) -> int:
        """Snapshot, deliver the difference from `_known`, report in-sync."""
        kvs, revision = self._store.list_many(self._prefixes)
        if self.status is not SyncStatus.RESYNC:
            self._set_status(SyncStatus.RESYNC)
        known = self._known
        full, self._redeliver = self._redeliver, False
        updates = [Update(kv.key, kv.value, kv.mod_revision) for kv in kvs
                   if full or known.get(kv.key) != (kv.mod_revision, hash(kv.value))]
        if known:  # keys the consumer holds that the snapshot no longer has
            gone = known.keys() - {kv.key for kv in kvs}
            updates.extend(Update(k, None, revision) for k in sorted(gone))
        for i in range(0, len(updates), SNAPSHOT_CHUNK):
            self._deliver(updates[i:i + SNAPSHOT_CHUNK])
        self.revision = revision
        self.resyncs += 1
        _log.info("%s: in sync at revision %d (%d keys, %d changed)", self._name,
                  revision, len(kvs), len(updates))
        self._set_status(SyncStatus.IN_SYNC)
        self._in_sync.set()
        return revision

    def _follow(self, revision: int) -> None:
        stream = self._store.watch(self._prefixes, revision + 1)
        with self._stream_lock:
            if self._stop.is_set():
                stream.cancel()
                return
            self._stream = stream
        try:
            for batch in stream:
                if batch.events:
                    self._deliver(list(batch.events))
                self.revision = max(self.revision, batch.revision)
            if not self._stop.is_set():
                raise DatastoreError("watch stream ended")
        except DatastoreUnavailable:
            self._store.fail_over_watch(stream)
            raise
        finally:
            with self._stream_lock:
                self._stream = None
            stream.cancel()

    def _deliver(self, updates: list[Update]) -> None:
        """Hand `updates` to the consumer; only once it has taken them do they count as
        known, so a consumer that fails is offered the same changes again."""
        if not updates:
            return
        self._callbacks.on_updates(updates)
        known = self._known
        for u in updates:
            if u.value is None:
                known.pop(u.key, None)
            else:
                known[u.key] = (u.mod_revision, hash(u.value))
