"""libcalico.datastore over etcd's JSON gateway (transport "http", libcalico.etcdgateway):
the same reads, paged snapshots, conditional writes, transactions and leases as over
grpc (the tests of test_datastore.py, run again with an http client), plus what is the
gateway's own: TCP, TLS and etcd's unix socket, fail-over, unreachable etcd and
timeouts mapped onto the error hierarchy, watches refused, and no grpc imported."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from libcalico.datastore import Datastore, EtcdSettings, ModRevisionIs, Put
from libcalico.errors import DatastoreError, DatastoreUnavailable
from netsim.etcd import EtcdServer, free_port, make_tls_material
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
        with pytest.raises(DatastoreError, match="grpc transport"):
            store.watch([P], 1)
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
            f"s.put('{P}g', 'x'); assert s.get_value('{P}g') == 'x'; s.delete('{P}g')\n"
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
