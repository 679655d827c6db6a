"""Shared pytest fixtures: a real etcd for the session, a clean datastore per test, and an
etcd on a unix socket for CLIs run inside other network namespaces."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from libcalico import keyspace
from libcalico.datastore import Datastore
from netsim.etcd import EtcdServer


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """One etcd for the whole session; tests that stop etcd make their own."""
    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def datastore(etcd_server: EtcdServer) -> Iterator[Datastore]:
    """A client on the session etcd, with the project's keys wiped before the test."""
    store = etcd_server.client()
    store.delete_prefix(keyspace.ROOT + "/")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def own_etcd() -> Iterator[EtcdServer]:
    """A private etcd that the test may stop, kill, restart and compact."""
    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def unix_etcd() -> Iterator[EtcdServer]:
    """One etcd for the session that listens on a unix socket, which a process in any
    network namespace can reach (calicoctl run inside a simulated host)."""
    server = EtcdServer(unix_socket=True)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
