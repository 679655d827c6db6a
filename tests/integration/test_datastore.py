"""Integration tests for libcalico.datastore against a real etcd: reads, paged snapshots,
create-only and compare-and-swap writes, transactions, leases, watches, fail-over between
endpoints and the error mapping when etcd is unreachable."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from libcalico import datastore as ds_module
from libcalico.datastore import (
    Compacted,
    Datastore,
    Delete,
    EtcdSettings,
    Get,
    ModRevisionIs,
    Put,
    ValueIs,
    WatchEvent,
)
from libcalico.errors import AlreadyExists, DatastoreError, DatastoreUnavailable
from netsim.etcd import EtcdServer, free_port
from netsim.wait import wait_for

pytestmark = pytest.mark.etcd

P = "/calico/test-ds/"
TXN_BATCH = 100  # etcd's default --max-txn-ops is 128


def put_many(store: Datastore, items: dict[str, str]) -> None:
    pairs = list(items.items())
    for i in range(0, len(pairs), TXN_BATCH):
        assert store.txn([], [Put(k, v) for k, v in pairs[i:i + TXN_BATCH]])


def content(store: Datastore, prefix: str = P) -> dict[str, str]:
    return {kv.key: kv.value for kv in store.list(prefix)[0]}


# --- reads ---------------------------------------------------------------------------------

def test_put_get_and_metadata(datastore: Datastore) -> None:
    rev1 = datastore.put(P + "a", "one")
    kv = datastore.get(P + "a")
    assert kv is not None
    assert (kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.lease) == \
        (P + "a", "one", rev1, rev1, 0)
    rev2 = datastore.put(P + "a", "twö ✓")
    kv2 = datastore.get(P + "a")
    assert kv2 is not None and kv2.value == "twö ✓"
    assert (kv2.mod_revision, kv2.create_revision) == (rev2, rev1)
    assert rev2 > rev1
    assert datastore.get_value(P + "a") == "twö ✓"
    assert datastore.get(P + "missing") is None
    assert datastore.get_value(P + "missing") is None
    assert datastore.revision() == rev2
    assert datastore.version().startswith("3.")


def test_list_by_prefix_is_exact(datastore: Datastore) -> None:
    put_many(datastore, {P + "a/1": "1", P + "a/2": "2", P + "a/sub/3": "3",
                         P + "ab/1": "x", P + "a": "self", P + "b/1": "y"})
    kvs, rev = datastore.list(P + "a/")
    assert [kv.key for kv in kvs] == [P + "a/1", P + "a/2", P + "a/sub/3"]
    assert [kv.value for kv in kvs] == ["1", "2", "3"]
    assert rev == datastore.revision()
    assert datastore.list(P + "nothing/")[0] == []
    many, rev2 = datastore.list_many([P + "a/", P + "b/"])
    assert [kv.key for kv in many] == [P + "a/1", P + "a/2", P + "a/sub/3", P + "b/1"]
    assert rev2 == rev


def test_list_pages_at_one_revision(datastore: Datastore, etcd_server: EtcdServer,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """More than PAGE_SIZE keys come back in pages, all read at the first page's revision:
    writes made between two pages are not in the result. (A small page size keeps the
    test quick; the paging code is the same.)"""
    monkeypatch.setattr(ds_module, "PAGE_SIZE", 150)
    n = ds_module.PAGE_SIZE * 2 + 7
    items = {f"{P}big/{i:06d}": f"v{i}" for i in range(n)}
    put_many(datastore, items)
    rev_before = datastore.revision()

    other = etcd_server.client()
    pages: list[int] = []
    real_range = datastore._range

    def range_then_write(conn: Any, **kwargs: Any) -> Any:
        resp = real_range(conn, **kwargs)
        pages.append(len(resp.kvs))
        if len(pages) == 1:  # between the first and the second page
            other.put(f"{P}big/{n + 5:06d}", "added later")  # would land on the last page
            other.put(f"{P}big/{n - 1:06d}", "changed later")
            other.delete(f"{P}big/{n - 2:06d}")
        return resp

    try:
        datastore._range = range_then_write  # type: ignore[method-assign]
        kvs, rev = datastore.list(P + "big/")
    finally:
        del datastore._range
        other.close()

    assert len(pages) >= 3, "expected the list to be read in several pages"
    assert max(pages) <= ds_module.PAGE_SIZE
    assert rev == rev_before
    assert {kv.key: kv.value for kv in kvs} == items
    after = content(datastore, P + "big/")
    assert len(after) == n
    assert after[f"{P}big/{n + 5:06d}"] == "added later"
    assert after[f"{P}big/{n - 1:06d}"] == "changed later"
    assert f"{P}big/{n - 2:06d}" not in after


def test_list_at_an_explicit_revision(datastore: Datastore) -> None:
    datastore.put(P + "k", "old")
    rev = datastore.revision()
    datastore.put(P + "k", "new")
    datastore.put(P + "k2", "later")
    kvs, got = datastore.list(P, revision=rev)
    assert got == rev
    assert {kv.key: kv.value for kv in kvs} == {P + "k": "old"}


# --- conditional writes -------------------------------------------------------------------

def test_create_only(datastore: Datastore) -> None:
    assert datastore.create(P + "c", "first") is True
    assert datastore.create(P + "c", "second") is False
    assert datastore.get_value(P + "c") == "first"
    with pytest.raises(AlreadyExists):
        datastore.create_or_raise(P + "c", "third")
    datastore.create_or_raise(P + "d", "fresh")
    assert datastore.get_value(P + "d") == "fresh"


def test_cas_put_winner_and_loser(datastore: Datastore) -> None:
    datastore.put(P + "k", "v0")
    kv = datastore.get(P + "k")
    assert kv is not None
    # Two writers read the same revision; only the first CAS wins.
    assert datastore.cas(P + "k", "writer-1", kv.mod_revision) is True
    assert datastore.cas(P + "k", "writer-2", kv.mod_revision) is False
    assert datastore.get_value(P + "k") == "writer-1"
    # revision 0 means "must be absent"
    assert datastore.cas(P + "k", "x", 0) is False
    assert datastore.cas(P + "new", "made", 0) is True
    assert datastore.get_value(P + "new") == "made"


def test_cas_under_concurrency_has_one_winner(datastore: Datastore,
                                              etcd_server: EtcdServer) -> None:
    datastore.put(P + "race", "start")
    kv = datastore.get(P + "race")
    assert kv is not None
    clients = [etcd_server.client() for _ in range(4)]
    results: dict[int, bool] = {}
    barrier = threading.Barrier(len(clients))

    def contend(i: int) -> None:
        barrier.wait()
        results[i] = clients[i].cas(P + "race", f"w{i}", kv.mod_revision)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(clients))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    finally:
        for c in clients:
            c.close()
    winners = [i for i, won in results.items() if won]
    assert len(results) == len(clients) and len(winners) == 1
    assert datastore.get_value(P + "race") == f"w{winners[0]}"


def test_cas_delete_winner_and_loser(datastore: Datastore) -> None:
    datastore.put(P + "k", "v")
    kv = datastore.get(P + "k")
    assert kv is not None
    datastore.put(P + "k", "changed")
    assert datastore.cas_delete(P + "k", kv.mod_revision) is False  # stale revision loses
    assert datastore.get_value(P + "k") == "changed"
    current = datastore.get(P + "k")
    assert current is not None
    assert datastore.cas_delete(P + "k", current.mod_revision) is True
    assert datastore.get(P + "k") is None
    assert datastore.cas_delete(P + "k", current.mod_revision) is False


def test_delete_and_delete_prefix(datastore: Datastore) -> None:
    put_many(datastore, {P + "x/1": "1", P + "x/2": "2", P + "xy": "3", P + "y": "4"})
    assert datastore.delete(P + "y") is True
    assert datastore.delete(P + "y") is False
    assert datastore.delete_prefix(P + "x/") == 2
    assert content(datastore) == {P + "xy": "3"}


def test_txn_all_or_nothing(datastore: Datastore) -> None:
    put_many(datastore, {P + "a": "1", P + "b": "2", P + "gone/1": "g", P + "gone/2": "g"})
    a, b = datastore.get(P + "a"), datastore.get(P + "b")
    assert a is not None and b is not None

    # One compare fails: no success op applies, the failure ops do.
    ok = datastore.txn([ModRevisionIs(P + "a", a.mod_revision), ValueIs(P + "b", "wrong")],
                       [Put(P + "a", "A"), Put(P + "c", "C"), Delete(P + "b")],
                       [Put(P + "failed", "yes")])
    assert ok is False
    assert content(datastore) == {P + "a": "1", P + "b": "2", P + "gone/1": "g",
                                  P + "gone/2": "g", P + "failed": "yes"}

    # Every compare holds: every op applies, at one revision.
    ok = datastore.txn([ModRevisionIs(P + "a", a.mod_revision), ValueIs(P + "b", "2"),
                        ModRevisionIs(P + "c", 0)],
                       [Put(P + "a", "A"), Put(P + "c", "C"), Delete(P + "b"),
                        Delete(P + "gone/", prefix=True)],
                       [Put(P + "failed", "again")])
    assert ok is True
    assert content(datastore) == {P + "a": "A", P + "c": "C", P + "failed": "yes"}
    new_a, new_c = datastore.get(P + "a"), datastore.get(P + "c")
    assert new_a is not None and new_c is not None
    assert new_a.mod_revision == new_c.mod_revision == datastore.revision()


def test_txn_result_reads_inside_the_transaction(datastore: Datastore) -> None:
    datastore.put(P + "a", "1")
    a = datastore.get(P + "a")
    assert a is not None
    won = datastore.txn_result([ModRevisionIs(P + "a", a.mod_revision)],
                               [Put(P + "a", "2"), Get(P + "a"), Get(P + "absent")],
                               [Get(P + "a")])
    assert won.succeeded is True
    assert won.revision == datastore.revision()
    got = won.gets[P + "a"]
    assert got is not None and got.value == "2" and got.mod_revision == won.revision
    assert won.gets[P + "absent"] is None
    # The loser learns the current value without another round trip.
    lost = datastore.txn_result([ModRevisionIs(P + "a", a.mod_revision)],
                                [Put(P + "a", "3")], [Get(P + "a")])
    assert lost.succeeded is False
    current = lost.gets[P + "a"]
    assert current is not None and current.value == "2"
    assert datastore.get_value(P + "a") == "2"


# --- leases -------------------------------------------------------------------------------

def test_lease_expires_unless_refreshed(datastore: Datastore) -> None:
    kept = datastore.grant_lease(2)
    lapsed = datastore.grant_lease(2)
    assert kept.id != lapsed.id and kept.ttl == 2
    datastore.put(P + "kept", "alive", lease=kept.id)
    assert datastore.create(P + "lapsed", "alive", lease=lapsed.id)
    kv = datastore.get(P + "kept")
    assert kv is not None and kv.lease == kept.id
    granted = time.monotonic()

    def refresh_and_check_lapsed_gone() -> bool:
        assert kept.refresh is not None
        kept.refresh()
        return datastore.get(P + "lapsed") is None

    wait_for(refresh_and_check_lapsed_gone, timeout=15, interval=0.3,
             message="the unrefreshed lease's key to expire")
    # Keep refreshing well past the TTL: the refreshed key stays.
    wait_for(lambda: (datastore.refresh_lease(kept.id) > 0
                      and time.monotonic() - granted > 4), timeout=15, interval=0.3,
             message="refreshing past the TTL")
    assert datastore.get_value(P + "kept") == "alive"
    assert datastore.refresh_lease(lapsed.id) == 0  # an expired lease cannot be refreshed
    kept.revoke()
    assert datastore.get(P + "kept") is None


# --- watches and compaction ---------------------------------------------------------------

def test_watch_delivers_changes_in_order(datastore: Datastore) -> None:
    start = datastore.revision() + 1
    stream = datastore.watch([P + "w/", P + "v/"], start)
    events: list[WatchEvent] = []
    done = threading.Event()

    def consume() -> None:
        for batch in stream:
            events.extend(batch.events)
            if len(events) >= 4:
                done.set()
                return

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    try:
        datastore.put(P + "w/1", "a")
        datastore.put(P + "other", "not watched")
        datastore.put(P + "v/1", "b")
        datastore.put(P + "w/1", "c")
        datastore.delete(P + "w/1")
        assert done.wait(10)
    finally:
        stream.cancel()
        t.join(5)
    # One etcd watcher per prefix: order holds within a prefix, not across prefixes.
    assert [(e.key, e.value) for e in events if e.key.startswith(P + "w/")] == [
        (P + "w/1", "a"), (P + "w/1", "c"), (P + "w/1", None)]
    assert [(e.key, e.value) for e in events if e.key.startswith(P + "v/")] == [
        (P + "v/1", "b")]
    revs = [e.mod_revision for e in events if e.key.startswith(P + "w/")]
    assert revs == sorted(revs) and min(e.mod_revision for e in events) >= start


def test_watch_from_compacted_revision_raises_compacted(own_etcd: EtcdServer) -> None:
    store = own_etcd.client()
    try:
        first = store.put(P + "k", "1")
        store.put(P + "k", "2")
        last = store.put(P + "k", "3")
        store.compact(last)
        stream = store.watch([P], first)
        with pytest.raises(Compacted) as info:
            for _ in stream:
                pass
        assert info.value.compact_revision == last
        with pytest.raises(DatastoreError):
            store.list(P, revision=first)
    finally:
        store.close()


# --- fail-over and unavailability ---------------------------------------------------------

def test_fails_over_from_a_dead_endpoint(own_etcd: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = EtcdSettings.from_env({"ETCD_ENDPOINTS": f"{dead},{own_etcd.url}"}, timeout=2)
    assert settings.endpoints[0].url == dead
    with Datastore(settings) as store:
        store.put(P + "k", "via fail-over")
        assert store.get_value(P + "k") == "via fail-over"
        got: list[str | None] = []
        stream = store.watch([P], store.revision() + 1)
        try:
            store.put(P + "k", "watched")
            for batch in stream:
                got.extend(e.value for e in batch.events)
                if got:
                    break
        finally:
            stream.cancel()
        assert got == ["watched"]


def test_watch_fails_over_to_the_live_endpoint(own_etcd: EtcdServer) -> None:
    """A watch opened on a dead endpoint breaks as unavailable; the next attempt (after
    fail_over_watch) reaches the live one."""
    dead = f"http://127.0.0.1:{free_port()}"
    settings = EtcdSettings.from_env({"ETCD_ENDPOINTS": f"{dead},{own_etcd.url}"}, timeout=2)
    with Datastore(settings) as store:
        stream = store.watch([P], 1)
        with pytest.raises(DatastoreUnavailable):
            for _ in stream:
                pass
        store.fail_over_watch(stream)
        own_etcd.client().put(P + "k", "v")
        stream = store.watch([P], 1)
        try:
            for batch in stream:
                if batch.events:
                    assert batch.events[0].key == P + "k"
                    break
        finally:
            stream.cancel()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP endpoint that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        t.join(2)
        for c in held:
            c.close()
        sock.close()


def test_unreachable_raises_unavailable_within_the_timeout(silent_server: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for endpoints in (dead, silent_server):
        settings = EtcdSettings.from_env({"ETCD_ENDPOINTS": endpoints}, timeout=1.0)
        with Datastore(settings) as store:
            began = time.monotonic()
            with pytest.raises(DatastoreUnavailable) as info:
                store.get(P + "k")
            # A bound on the call (the timeout is honoured), not a speed measurement.
            assert time.monotonic() - began < settings.timeout + 4
            assert type(info.value).__module__ == "libcalico.errors"


def _all_ops(store: Datastore) -> list[tuple[str, Callable[[], object]]]:
    def watch() -> None:
        for _ in store.watch([P], 1):
            pass

    def lease_refresh() -> None:
        ds_module.Lease(store, 12345, 10).refresh()

    return [
        ("get", lambda: store.get(P + "k")),
        ("get_value", lambda: store.get_value(P + "k")),
        ("list", lambda: store.list(P)),
        ("list_many", lambda: store.list_many([P, P + "x/"])),
        ("revision", store.revision),
        ("version", store.version),
        ("put", lambda: store.put(P + "k", "v")),
        ("create", lambda: store.create(P + "k", "v")),
        ("create_or_raise", lambda: store.create_or_raise(P + "k", "v")),
        ("cas", lambda: store.cas(P + "k", "v", 3)),
        ("delete", lambda: store.delete(P + "k")),
        ("cas_delete", lambda: store.cas_delete(P + "k", 3)),
        ("delete_prefix", lambda: store.delete_prefix(P)),
        ("txn", lambda: store.txn([ValueIs(P + "k", "v")], [Put(P + "k", "w")],
                                  [Delete(P + "k")])),
        ("grant_lease", lambda: store.grant_lease(5)),
        ("refresh_lease", lambda: store.refresh_lease(12345)),
        ("lease.refresh", lease_refresh),
        ("revoke_lease", lambda: store.revoke_lease(12345)),
        ("compact", lambda: store.compact(1)),
        ("watch", watch),
    ]


def test_no_grpc_or_etcd3_exception_escapes_when_etcd_is_down(own_etcd: EtcdServer) -> None:
    store = own_etcd.client(timeout=1.0)
    try:
        store.put(P + "k", "v")  # connected while etcd was up
        own_etcd.kill()
        for name, op in _all_ops(store):
            with pytest.raises(DatastoreError) as info:
                op()
            exc = info.value
            assert type(exc).__module__.startswith("libcalico."), (name, type(exc))
            assert isinstance(exc, DatastoreUnavailable), (name, exc)
    finally:
        store.close()


def test_recovers_after_etcd_restarts(own_etcd: EtcdServer) -> None:
    store = own_etcd.client(timeout=1.0)
    try:
        store.put(P + "k", "before")
        own_etcd.kill()
        with pytest.raises(DatastoreUnavailable):
            store.get(P + "k")
        own_etcd.start()
        assert wait_for(lambda: store.get_value(P + "k"), timeout=15,
                        message="the client to reconnect") == "before"
    finally:
        store.close()
