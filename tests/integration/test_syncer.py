"""Integration tests for libcalico.syncer against a real etcd: a consumer that keeps a dict
must end with exactly the datastore's content after the snapshot, live changes, etcd being
killed and restarted mid-watch, a compacted resume revision, a large burst and over TLS;
a resync delivers only the difference. Every test runs over both transports (grpc, and
etcd's JSON gateway, which felix and confd use)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from libcalico.datastore import Datastore, Delete, EtcdSettings, Put, WatchStream
from libcalico.errors import DatastoreError
from libcalico.syncer import Syncer, SyncStatus, Update
from netsim.etcd import EtcdServer, make_tls_material
from netsim.wait import wait_for

pytestmark = pytest.mark.etcd

P = "/calico/test-sync/"
TXN_BATCH = 100  # etcd's default --max-txn-ops is 128


class DictConsumer:
    """Keeps what the syncer says in a dict; records statuses and update counts in order."""

    def __init__(self, hold_on_break: threading.Event | None = None) -> None:
        self.lock = threading.Lock()
        self.data: dict[str, str] = {}
        self.log: list[tuple[str, object]] = []  # ("status", SyncStatus) | ("updates", n)
        self.delivered = 0
        # A slow consumer: when told the watch broke, it holds the syncer's thread until
        # the event is set, so a test can change etcd while the syncer is not watching.
        self.hold_on_break = hold_on_break
        self.held = threading.Event()

    def on_status(self, status: SyncStatus) -> None:
        with self.lock:
            self.log.append(("status", status))
            resyncing_again = status is SyncStatus.RESYNC and len(self.statuses_locked()) > 2
        if resyncing_again and self.hold_on_break is not None:
            self.held.set()
            assert self.hold_on_break.wait(30)

    def statuses_locked(self) -> list[SyncStatus]:
        return [s for kind, s in self.log if kind == "status"]  # type: ignore[misc]

    def on_updates(self, updates: Sequence[Update]) -> None:
        with self.lock:
            for u in updates:
                if u.value is None:
                    assert u.key in self.data, f"delete of unknown key {u.key}"
                    del self.data[u.key]
                else:
                    self.data[u.key] = u.value
            self.delivered += len(updates)
            self.log.append(("updates", len(updates)))

    def snapshot(self) -> dict[str, str]:
        with self.lock:
            return dict(self.data)

    def statuses(self) -> list[SyncStatus]:
        with self.lock:
            return self.statuses_locked()


def content(store: Datastore, prefix: str = P) -> dict[str, str]:
    return {kv.key: kv.value for kv in store.list(prefix)[0]}


def put_many(store: Datastore, items: dict[str, str]) -> None:
    pairs = list(items.items())
    for i in range(0, len(pairs), TXN_BATCH):
        assert store.txn([], [Put(k, v) for k, v in pairs[i:i + TXN_BATCH]])


def delete_many(store: Datastore, keys: list[str]) -> None:
    for i in range(0, len(keys), TXN_BATCH):
        assert store.txn([], [Delete(k) for k in keys[i:i + TXN_BATCH]])


def wait_converged(consumer: DictConsumer, store: Datastore, prefix: str = P,
                   timeout: float = 15) -> dict[str, str]:
    """Poll until the consumer's dict equals etcd's content, which is returned."""
    expected: dict[str, str] = {}

    def same() -> bool:
        nonlocal expected
        expected = content(store, prefix)
        return consumer.snapshot() == expected

    wait_for(same, timeout, message="the consumer to hold the datastore's content")
    return expected


@pytest.fixture(params=["grpc", "http"], autouse=True)
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Clients made from a test etcd (`EtcdServer.client()`, `.settings()`, the
    `datastore` fixture) use this transport."""
    def settings(self: EtcdServer, timeout: float = 5.0) -> EtcdSettings:
        return EtcdSettings.from_env(self.env(), timeout=timeout, transport=request.param)

    monkeypatch.setattr(EtcdServer, "settings", settings)
    return str(request.param)


@pytest.fixture
def syncers() -> Iterator[Callable[..., Syncer]]:
    """Makes and starts syncers; stops every one of them at the end, even on failure."""
    made: list[Syncer] = []

    def make(store: Datastore, consumer: DictConsumer, prefixes: Sequence[str] = (P,),
             **kwargs: float) -> Syncer:
        kwargs.setdefault("min_backoff", 0.05)
        kwargs.setdefault("max_backoff", 0.5)
        syncer = Syncer(store, prefixes, consumer, name=f"test-syncer-{len(made)}", **kwargs)
        made.append(syncer)
        return syncer.start()

    try:
        yield make
    finally:
        for s in made:
            s.stop()


# --- snapshot and live updates --------------------------------------------------------------

def test_initial_snapshot_then_live_updates(datastore: Datastore, etcd_server: EtcdServer,
                                            syncers: Callable[..., Syncer]) -> None:
    put_many(datastore, {f"{P}k{i:03d}": f"v{i}" for i in range(150)})
    datastore.put("/calico/test-sync-outside", "not followed")
    consumer = DictConsumer()
    syncer = syncers(datastore, consumer)
    assert syncer.wait_in_sync(10)
    assert consumer.snapshot() == content(datastore)
    assert consumer.delivered == 150
    assert syncer.resyncs == 1

    writer = etcd_server.client()
    try:
        writer.put(P + "k000", "changed")
        writer.put(P + "new", "added")
        writer.delete(P + "k001")
        writer.txn([], [Delete(P + "k01", prefix=True), Put(P + "k149", "in txn")])
        writer.put("/calico/test-sync-outside", "still not followed")
        expected = wait_converged(consumer, datastore)
    finally:
        writer.close()
    assert expected[P + "k000"] == "changed" and P + "k001" not in expected
    assert "/calico/test-sync-outside" not in consumer.snapshot()

    # RESYNC, the snapshot, IN_SYNC exactly once, and only then the live updates.
    log = consumer.log
    statuses = consumer.statuses()
    assert statuses == [SyncStatus.RESYNC, SyncStatus.IN_SYNC]
    in_sync_at = log.index(("status", SyncStatus.IN_SYNC))
    assert sum(n for kind, n in log[:in_sync_at] if kind == "updates") == 150  # type: ignore[misc]
    live = [n for kind, n in log[in_sync_at + 1:] if kind == "updates"]
    assert sum(live) == 1 + 1 + 1 + 10 + 1  # type: ignore[arg-type]
    assert syncer.status is SyncStatus.IN_SYNC
    assert syncer.revision == datastore.revision() or syncer.revision > 0


def test_several_prefixes(datastore: Datastore, syncers: Callable[..., Syncer]) -> None:
    put_many(datastore, {P + "a/1": "1", P + "b/1": "2", P + "c/1": "not followed"})
    consumer = DictConsumer()
    syncer = syncers(datastore, consumer, prefixes=[P + "a/", P + "b/"])
    assert syncer.wait_in_sync(10)
    assert consumer.snapshot() == {P + "a/1": "1", P + "b/1": "2"}
    datastore.txn([], [Put(P + "a/2", "3"), Delete(P + "b/1"), Put(P + "c/2", "no")])
    wait_for(lambda: consumer.snapshot() == {P + "a/1": "1", P + "a/2": "3"}, 10,
             message="both prefixes followed")


def test_empty_prefix_reports_in_sync(datastore: Datastore,
                                      syncers: Callable[..., Syncer]) -> None:
    consumer = DictConsumer()
    syncer = syncers(datastore, consumer)
    assert syncer.wait_in_sync(10)
    assert consumer.statuses() == [SyncStatus.RESYNC, SyncStatus.IN_SYNC]
    assert consumer.delivered == 0
    datastore.put(P + "first", "1")
    wait_converged(consumer, datastore)


def test_stop_ends_deliveries(datastore: Datastore, syncers: Callable[..., Syncer]) -> None:
    consumer = DictConsumer()
    syncer = syncers(datastore, consumer)
    assert syncer.wait_in_sync(10)
    syncer.stop()
    assert syncer._thread is not None and not syncer._thread.is_alive()
    datastore.put(P + "after-stop", "x")
    # A marker written afterwards proves etcd moved on; the stopped syncer saw neither.
    datastore.put(P + "marker", "y")
    assert consumer.delivered == 0 and consumer.snapshot() == {}


def test_burst_arrives_in_full(datastore: Datastore, etcd_server: EtcdServer,
                               syncers: Callable[..., Syncer]) -> None:
    put_many(datastore, {f"{P}burst/{i:05d}": "old" for i in range(0, 3000, 2)})
    consumer = DictConsumer()
    syncer = syncers(datastore, consumer)
    assert syncer.wait_in_sync(10)
    before = consumer.delivered
    writer = etcd_server.client()
    try:
        put_many(writer, {f"{P}burst/{i:05d}": f"new{i}" for i in range(3000)})
        delete_many(writer, [f"{P}burst/{i:05d}" for i in range(0, 3000, 3)])
    finally:
        writer.close()
    expected = wait_converged(consumer, datastore, timeout=30)
    assert len(expected) == 2000
    assert consumer.delivered - before == 3000 + 1000
    assert syncer.resyncs == 1  # followed by the watch, no resync needed


# --- recovery ---------------------------------------------------------------------------------

def test_waits_for_datastore_then_syncs(own_etcd: EtcdServer,
                                        syncers: Callable[..., Syncer]) -> None:
    own_etcd.client().put(P + "k", "v")
    own_etcd.stop()
    store = own_etcd.client(timeout=0.5)
    consumer = DictConsumer()
    syncer = syncers(store, consumer, min_backoff=0.05, max_backoff=0.2)
    assert not syncer.wait_in_sync(0.5)
    assert syncer.status is SyncStatus.WAIT_FOR_DATASTORE
    assert consumer.log == []
    own_etcd.start()
    assert syncer.wait_in_sync(15)
    assert consumer.snapshot() == {P + "k": "v"}
    assert consumer.statuses() == [SyncStatus.RESYNC, SyncStatus.IN_SYNC]
    store.close()


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_etcd_restarted_mid_watch_with_changes(own_etcd: EtcdServer, how: str,
                                               syncers: Callable[..., Syncer]) -> None:
    """etcd goes away under the watch; changes (deletes included) are made after it comes
    back, while the syncer is not watching; the syncer resyncs and delivers exactly the
    difference."""
    setup = own_etcd.client()
    put_many(setup, {f"{P}k{i:03d}": f"v{i}" for i in range(200)})
    setup.close()
    store = own_etcd.client(timeout=1.0)
    release = threading.Event()
    consumer = DictConsumer(hold_on_break=release)
    syncer = syncers(store, consumer)
    try:
        assert syncer.wait_in_sync(10)
        assert consumer.delivered == 200

        own_etcd.kill() if how == "kill" else own_etcd.stop()
        assert consumer.held.wait(15), "the syncer did not notice etcd went away"
        assert not syncer.wait_in_sync(0)
        own_etcd.start()
        writer = own_etcd.client()
        try:
            delete_many(writer, [f"{P}k{i:03d}" for i in range(0, 50)])  # 50 deletes
            put_many(writer, {f"{P}k{i:03d}": "changed" for i in range(50, 70)})  # 20 changes
            put_many(writer, {f"{P}n{i:03d}": "new" for i in range(10)})  # 10 creates
            assert syncer.resyncs == 1
            release.set()
            expected = wait_converged(consumer, writer)
        finally:
            writer.close()
    finally:
        release.set()
    assert len(expected) == 200 - 50 + 10
    assert consumer.delivered == 200 + 50 + 20 + 10  # only the difference, once each
    assert syncer.wait_in_sync(5)
    assert syncer.resyncs == 2
    assert consumer.statuses() == [SyncStatus.RESYNC, SyncStatus.IN_SYNC,
                                   SyncStatus.RESYNC, SyncStatus.IN_SYNC]
    # The second snapshot delivered the 80 differences as one batch.
    assert consumer.log[-2:] == [("updates", 80), ("status", SyncStatus.IN_SYNC)]
    store.close()


def test_resync_without_changes_delivers_nothing(own_etcd: EtcdServer,
                                                 syncers: Callable[..., Syncer]) -> None:
    setup = own_etcd.client()
    put_many(setup, {f"{P}k{i:03d}": f"v{i}" for i in range(100)})
    setup.close()
    store = own_etcd.client(timeout=1.0)
    consumer = DictConsumer()
    syncer = syncers(store, consumer)
    assert syncer.wait_in_sync(10)
    own_etcd.kill()
    wait_for(lambda: syncer.status is SyncStatus.RESYNC, 15, message="the break noticed")
    own_etcd.start()
    wait_for(lambda: syncer.resyncs >= 2 and syncer.wait_in_sync(0), 15,
             message="the syncer to resync")
    assert consumer.delivered == 100
    assert [kind for kind, _ in consumer.log].count("updates") == 1  # only the first snapshot
    assert consumer.snapshot() == content(store)
    store.close()


def test_etcd_replaced_by_an_empty_one_reusing_revisions(own_etcd: EtcdServer,
                                                        syncers: Callable[..., Syncer]) -> None:
    """etcd is wiped (or restored from an old backup) under the syncer: the new content
    reuses mod_revisions the consumer already holds, with other values; the consumer must
    still end with etcd's content."""
    writer = own_etcd.client()
    for i in range(5):
        writer.put(f"{P}k{i}", f"old{i}")
    writer.close()
    store = own_etcd.client(timeout=1.0)
    release = threading.Event()
    consumer = DictConsumer(hold_on_break=release)
    syncer = syncers(store, consumer)
    try:
        assert syncer.wait_in_sync(10)
        before = {u: consumer.snapshot()[u] for u in consumer.snapshot()}
        own_etcd.kill()
        assert consumer.held.wait(15), "the syncer did not notice etcd went away"
        shutil.rmtree(os.path.join(own_etcd.data_dir, "data"))
        own_etcd.start()
        writer = own_etcd.client()
        try:
            for i in range(4):  # same keys, same order: same mod_revisions, new values
                writer.put(f"{P}k{i}", f"new{i}")
            release.set()
            expected = wait_converged(consumer, writer)
        finally:
            writer.close()
    finally:
        release.set()
    assert before[P + "k0"] == "old0"
    assert expected == {f"{P}k{i}": f"new{i}" for i in range(4)}
    store.close()


class CompactBeforeWatch(Datastore):
    """A Datastore whose first watch is preceded by changes (from another client) and a
    compaction of the revision the syncer asks to resume from: the watch is refused as
    compacted, exercising the syncer's resync path."""

    def __init__(self, settings: EtcdSettings, change: Callable[[], int]) -> None:
        super().__init__(settings)
        self._change = change
        self.compacted_at = 0

    def watch(self, prefixes: Sequence[str], start_revision: int) -> WatchStream:
        if not self.compacted_at:
            self.compacted_at = self._change()
            assert self.compacted_at > start_revision
        return super().watch(prefixes, start_revision)


def test_compacted_resume_revision_resyncs_with_only_the_difference(
        own_etcd: EtcdServer, syncers: Callable[..., Syncer]) -> None:
    setup = own_etcd.client()
    put_many(setup, {f"{P}k{i:03d}": f"v{i}" for i in range(100)})

    def change_and_compact() -> int:
        delete_many(setup, [f"{P}k{i:03d}" for i in range(10)])
        put_many(setup, {f"{P}k{i:03d}": "changed" for i in range(10, 15)})
        setup.put(P + "added", "x")
        setup.put(P + "added", "y")  # two revisions, one delivered update
        rev = setup.revision()
        setup.compact(rev)
        return rev

    store = CompactBeforeWatch(own_etcd.settings(), change_and_compact)
    consumer = DictConsumer()
    syncer = syncers(store, consumer)
    try:
        wait_for(lambda: syncer.resyncs >= 2 and syncer.wait_in_sync(0), 15,
                 message="the resync after compaction")
        expected = wait_converged(consumer, setup)
    finally:
        setup.close()
    assert store.compacted_at > 0
    assert len(expected) == 100 - 10 + 1 and expected[P + "added"] == "y"
    assert consumer.delivered == 100 + 10 + 5 + 1
    assert consumer.statuses() == [SyncStatus.RESYNC, SyncStatus.IN_SYNC,
                                   SyncStatus.RESYNC, SyncStatus.IN_SYNC]
    store.close()


# --- TLS --------------------------------------------------------------------------------------

@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    material = make_tls_material(str(tmp_path / "tls"))
    server = EtcdServer(tls=material)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def test_tls_with_client_certificates(tls_etcd: EtcdServer,
                                      syncers: Callable[..., Syncer]) -> None:
    assert tls_etcd.url.startswith("https://")
    store = tls_etcd.client()
    assert store.settings.cert_file and store.settings.key_file and store.settings.ca_cert
    try:
        store.put(P + "secure", "1")
        consumer = DictConsumer()
        syncer = syncers(store, consumer)
        assert syncer.wait_in_sync(10)
        assert consumer.snapshot() == {P + "secure": "1"}
        store.put(P + "secure2", "2")
        wait_converged(consumer, store)
    finally:
        store.close()


def test_tls_client_without_certificate_is_refused(tls_etcd: EtcdServer) -> None:
    assert tls_etcd.tls is not None
    settings = EtcdSettings.from_env({"ETCD_ENDPOINTS": tls_etcd.url,
                                      "ETCD_CA_CERT_FILE": tls_etcd.tls.ca}, timeout=2)
    with Datastore(settings) as store:
        with pytest.raises(DatastoreError) as info:
            store.get(P + "secure")
        assert type(info.value).__module__ == "libcalico.errors"
    plain = EtcdSettings.from_env({"ETCD_ENDPOINTS": f"http://{tls_etcd.host}:{tls_etcd.port}"},
                                  timeout=2)
    with Datastore(plain) as store:
        with pytest.raises(DatastoreError) as info:
            store.put(P + "plain", "x")
        assert type(info.value).__module__ == "libcalico.errors"


# --- a failing consumer ------------------------------------------------------------------------


class FlakyConsumer(DictConsumer):
    """Raises once when it sees `poison`, after taking part of the batch."""

    def __init__(self, poison: str) -> None:
        super().__init__()
        self.poison = poison
        self.failures = 0

    def on_updates(self, updates: Sequence[Update]) -> None:
        if self.failures == 0 and any(u.key == self.poison for u in updates):
            self.failures += 1
            with self.lock:  # part of the batch applied, then a crash
                for u in updates[:1]:
                    if u.value is None:
                        self.data.pop(u.key, None)
                    else:
                        self.data[u.key] = u.value
            raise RuntimeError("consumer bug")
        with self.lock:  # a tolerant consumer: deletes of keys it never had are fine
            for u in updates:
                if u.value is None:
                    self.data.pop(u.key, None)
                else:
                    self.data[u.key] = u.value


def test_a_consumer_exception_does_not_kill_the_syncer(datastore: Datastore,
                                                       syncers: Callable[..., Syncer]) -> None:
    put_many(datastore, {f"{P}a{i}": "1" for i in range(5)})
    consumer = FlakyConsumer(f"{P}poison")
    syncer = syncers(datastore, consumer)
    assert syncer.wait_in_sync(10)
    assert store_txn_poison(datastore)
    wait_for(lambda: consumer.failures == 1, 10, message="the consumer to fail once")
    expected = wait_converged(consumer, datastore)
    assert f"{P}poison" in expected and f"{P}a0" not in expected
    datastore.put(f"{P}after", "2")  # the syncer still follows changes
    wait_converged(consumer, datastore)
    assert syncer.resyncs >= 2


def store_txn_poison(store: Datastore) -> bool:
    """One transaction: a delete, the poison key and a change, delivered as one batch."""
    return store.txn([], [Delete(f"{P}a0"), Put(f"{P}poison", "x"), Put(f"{P}a1", "changed")])
