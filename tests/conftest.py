"""Shared pytest fixtures: a real etcd for the session, a clean datastore per test, an
etcd on a unix socket for CLIs run inside other network namespaces, and this checkout's
node image (built once per content and cached on the machine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(scope="session")
def node_image_archive() -> Path:
    """This checkout's node image as a `docker save` archive: built with `calicoctl node
    image build` when the machine has none for this content yet (the first run on a
    clean machine takes a couple of minutes), then reused. A failed build fails the
    tests that need it."""
    from netsim.nodeimage import node_image_archive as archive

    return archive()
