"""libcalico.datastore over etcd's JSON gateway (transport "http", libcalico.etcdgateway):
the same reads, paged snapshots, conditional writes, transactions, leases and watches as
over grpc (the tests of test_datastore.py, run again with an http client), plus what is
the gateway's own: TCP, TLS and etcd's unix socket, fail-over, unreachable etcd and
timeouts mapped onto the error hierarchy, a watch that breaks when etcd dies or ends
quietly when cancelled from another thread, user/password authentication for calls and
watches across an etcd restart, and no grpc imported."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from libcalico.datastore import (
    AuthTokenInvalid,
    Compacted,
    Datastore,
    EtcdSettings,
    ModRevisionIs,
    Put,
    WatchEvent,
    WatchStream,
)
from libcalico.errors import DatastoreError, DatastoreUnavailable
from libcalico.syncer import Syncer, SyncStatus
from netsim.etcd import EtcdServer, free_port, make_tls_material
from netsim.wait import wait_for
from tests.integration import test_datastore as grpc_tests

pytestmark = pytest.mark.etcd

P = grpc_tests.P
ROOT = Path(__file__).resolve().parents[2]


def http_client(server: EtcdServer, timeout: float = 5.0) -> Datastore:
    return Datastore(EtcdSettings.from_env(server.env(), timeout=timeout, transport="http"))


@pytest.fixture
def datastore(etcd_server: EtcdServer) -> Iterator[Datastore]:
    """This module's `datastore`: the session etcd through the gateway, keys wiped."""
    store = http_client(etcd_server)
    store.delete_prefix("/calico/")
    try:
        yield store
    finally:
        store.close()


# The transport-independent tests, against the fixture above.
test_put_get_and_metadata = grpc_tests.test_put_get_and_metadata
test_list_by_prefix_is_exact = grpc_tests.test_list_by_prefix_is_exact
test_list_pages_at_one_revision = grpc_tests.test_list_pages_at_one_revision
test_list_at_an_explicit_revision = grpc_tests.test_list_at_an_explicit_revision
test_create_only = grpc_tests.test_create_only
test_cas_put_winner_and_loser = grpc_tests.test_cas_put_winner_and_loser
test_cas_delete_winner_and_loser = grpc_tests.test_cas_delete_winner_and_loser
test_delete_and_delete_prefix = grpc_tests.test_delete_and_delete_prefix
test_txn_all_or_nothing = grpc_tests.test_txn_all_or_nothing
test_txn_result_reads_inside_the_transaction = \
    grpc_tests.test_txn_result_reads_inside_the_transaction
test_lease_expires_unless_refreshed = grpc_tests.test_lease_expires_unless_refreshed
test_watch_delivers_changes_in_order = grpc_tests.test_watch_delivers_changes_in_order


def _first_events(stream: WatchStream, count: int, timeout: float = 10.0) -> list[WatchEvent]:
    """Read `stream` on a thread until `count` events arrived; cancel it."""
    got: list[WatchEvent] = []
    done = threading.Event()

    def consume() -> None:
        for batch in stream:
            got.extend(batch.events)
            if len(got) >= count:
                done.set()
                return

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    try:
        assert done.wait(timeout), f"only {len(got)} of {count} events"
    finally:
        stream.cancel()
        t.join(5)
    return got


def test_watch_compaction_fail_over_and_values(own_etcd: EtcdServer) -> None:
    store = http_client(own_etcd)
    try:
        first = store.put(P + "k", "1")
        store.put(P + "k", "2")
        last = store.put(P + "k", "3")
        store.compact(last)
        with pytest.raises(Compacted) as info:
            for _ in store.watch([P], first):
                pass
        assert info.value.compact_revision == last
        # From the compaction on: every value, a delete and a non-ASCII value as etcd holds
        # them, two prefixes (two watchers: in order within each) on one stream.
        stream = store.watch([P + "k", P + "x/"], last)
        store.put(P + "x/1", "h\u00e9")
        store.delete(P + "k")
        events = sorted(_first_events(stream, 3), key=lambda e: e.mod_revision)
        assert [(e.key, e.value) for e in events] == [
            (P + "k", "3"), (P + "x/1", "h\u00e9"), (P + "k", None)]
        assert events[0].mod_revision == last
    finally:
        store.close()
    dead = f"http://127.0.0.1:{free_port()}"
    settings = EtcdSettings.from_env({"ETCD_ENDPOINTS": f"{dead},{own_etcd.url}"}, timeout=2,
                                     transport="http")
    with Datastore(settings) as store:
        with pytest.raises(DatastoreUnavailable):
            store.watch([P], 1)
        written = store.put(P + "f", "after fail-over")  # the next endpoint
        stream = store.watch([P + "f"], written)
        assert [e.value for e in _first_events(stream, 1)] == ["after fail-over"]


def test_every_prefix_of_every_watch_is_watched(datastore: Datastore) -> None:
    """Many streams of several prefixes each (felix and confd on 50 hosts): every
    watcher is created. (One request body holding several create requests lost some
    of them now and then: the gateway's HTTP server discards what it has not read of a
    body once it answers.)"""
    prefixes = [f"{P}w{i}/" for i in range(6)]
    start = datastore.revision() + 1
    streams = [datastore.watch(prefixes, start) for _ in range(20)]
    for prefix in prefixes:
        datastore.put(prefix + "k", "v")
    seen = [{e.key for e in _first_events(s, len(prefixes))} for s in streams]
    assert all(keys == {p + "k" for p in prefixes} for keys in seen)


def test_watch_breaks_when_etcd_dies_and_cancel_ends_it_quietly(own_etcd: EtcdServer) -> None:
    store = http_client(own_etcd, timeout=2.0)
    try:
        stream = store.watch([P], store.revision() + 1)
        outcome: list[object] = []

        def consume() -> None:
            try:
                for batch in stream:
                    outcome.extend(batch.events)
                outcome.append("ended")
            except DatastoreError as exc:
                outcome.append(exc)

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        store.put(P + "a", "seen")
        wait_for(lambda: outcome, 10, message="the first event")
        own_etcd.kill()
        t.join(10)
        assert not t.is_alive(), "the watch did not notice etcd dying"
        assert isinstance(outcome[-1], DatastoreUnavailable)
        own_etcd.start()
        # Idle, then cancelled from another thread: the iteration just ends.
        stream = store.watch([P], store.revision() + 1)
        outcome.clear()
        t = threading.Thread(target=consume, daemon=True)
        t.start()
        stream.cancel()
        t.join(5)
        assert not t.is_alive() and outcome == ["ended"]
    finally:
        store.close()


def test_unix_socket_and_tls(unix_etcd: EtcdServer) -> None:
    with Datastore(EtcdSettings.from_env({"ETCD_ENDPOINTS": unix_etcd.client_url},
                                         transport="http")) as store:
        assert store.txn([ModRevisionIs(P + "u", 0)], [Put(P + "u", "over the socket")])
        assert store.get_value(P + "u") == "over the socket"
        assert store.version().startswith("3.")
        store.delete_prefix(P)
    with tempfile.TemporaryDirectory(prefix="gw-tls-") as tmp:
        tls = make_tls_material(tmp)
        with EtcdServer(tls=tls) as server, http_client(server) as store:
            assert server.url.startswith("https://")
            store.put(P + "t", "over TLS")
            assert store.get_value(P + "t") == "over TLS"
            # Without the client certificate etcd refuses the handshake.
            bare = EtcdSettings.from_env({"ETCD_ENDPOINTS": server.url,
                                          "ETCD_CA_CERT_FILE": tls.ca}, timeout=2,
                                         transport="http")
            with Datastore(bare) as refused, pytest.raises(DatastoreUnavailable):
                refused.get(P + "t")


def test_fail_over_unreachable_and_timeouts(own_etcd: EtcdServer,
                                            silent_server: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    both = EtcdSettings.from_env({"ETCD_ENDPOINTS": f"{dead},{own_etcd.url}"}, timeout=2,
                                 transport="http")
    with Datastore(both) as store:
        store.put(P + "k", "via fail-over")
        assert store.get_value(P + "k") == "via fail-over"
    for endpoints in (dead, silent_server):
        settings = EtcdSettings.from_env({"ETCD_ENDPOINTS": endpoints}, timeout=1.0,
                                         transport="http")
        with Datastore(settings) as store:
            began = time.monotonic()
            with pytest.raises(DatastoreUnavailable):
                store.get(P + "k")
            assert time.monotonic() - began < settings.timeout + 4  # a bound, not a speed
    # A kept-alive connection that etcd dropped (restart) is re-opened.
    store = http_client(own_etcd, timeout=2.0)
    try:
        store.put(P + "r", "before")
        own_etcd.kill()
        with pytest.raises(DatastoreUnavailable):
            store.get(P + "r")
        own_etcd.start()
        assert store.get_value(P + "r") == "before"
    finally:
        store.close()


silent_server = grpc_tests.silent_server


def test_the_gateway_needs_no_grpc(unix_etcd: EtcdServer) -> None:
    code = (f"from libcalico.datastore import Datastore, EtcdSettings\n"
            f"s = Datastore(EtcdSettings.from_env({{}}, endpoints={unix_etcd.client_url!r}, "
            f"transport='http'))\n"
            f"r = s.put('{P}g', 'x'); assert s.get_value('{P}g') == 'x'; s.delete('{P}g')\n"
            f"w = s.watch(['{P}g'], r)\n"
            f"assert next(b for b in w if b.events).events[0].value == 'x'; w.cancel()\n"
            f"import sys; print(sorted(m for m in ('grpc', 'etcd3', 'google.protobuf') "
            f"if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_user_and_password_over_the_gateway() -> None:
    """etcd with authentication on: the gateway logs in, sends its token with every call,
    logs in again after etcd restarts (every token is then invalid), and a wrong password
    is one clear error."""
    with EtcdServer(auth=("calico", "s3cret")) as server:
        store = http_client(server)
        try:
            store.put("/calico/auth-gw", "x")
            assert store.get_value("/calico/auth-gw") == "x"
            assert store.version()
            server.stop()
            server.start()
            assert store.get_value("/calico/auth-gw") == "x"  # a new token, same client
        finally:
            store.close()
        env = {**server.env(), "ETCD_PASSWORD": "wrong"}
        with pytest.raises(DatastoreError, match="auth|password|credentials"), \
                Datastore(EtcdSettings.from_env(env, transport="http")) as wrong:
            wrong.get_value("/calico/auth-gw")


class _Recorder:
    """A syncer consumer that keeps what it was told."""

    def __init__(self) -> None:
        self.values: dict[str, str | None] = {}

    def on_status(self, status: SyncStatus) -> None:
        pass

    def on_updates(self, updates: Sequence[WatchEvent]) -> None:
        for u in updates:
            self.values[u.key] = u.value


def test_watches_over_the_gateway_with_user_and_password() -> None:
    """A watch sends the token too; after an etcd restart a watch opened with the dead
    token is refused at once as AuthTokenInvalid (etcd answers "created" and "canceled" in
    the stream and then stays silent: the stream must not wait for more), and a syncer
    following through the restart logs in again and delivers what changed."""
    with EtcdServer(auth=("calico", "s3cret")) as server:
        store, follower = http_client(server), http_client(server)
        recorder = _Recorder()
        syncer = Syncer(follower, [P + "auth/"], recorder, max_backoff=0.5).start()
        try:
            r = store.put(P + "auth/a", "x")
            stream = store.watch([P + "auth/"], r + 1)
            store.put(P + "auth/a", "y")
            assert next(b for b in stream if b.events).events == (
                WatchEvent(P + "auth/a", "y", r + 1),)
            stream.cancel()
            wait_for(lambda: recorder.values.get(P + "auth/a") == "y", timeout=10)
            server.stop()
            server.start()
            stale = store.watch([P + "auth/"], r + 1)
            with pytest.raises(AuthTokenInvalid, match="invalid auth token"):
                next(iter(stale))
            store.put(P + "auth/a", "after the restart")  # logs in again
            wait_for(lambda: recorder.values.get(P + "auth/a") == "after the restart",
                     timeout=20)
        finally:
            syncer.stop()
            store.close()
            follower.close()
