"""felix.status against a real etcd: liveness key with a lease, endpoint statuses."""

from __future__ import annotations

import json

import pytest

from felix.status import StatusReporter
from libcalico import keyspace
from libcalico.datastore import Datastore
from netsim.wait import wait_for

pytestmark = pytest.mark.etcd


def _ep(i: int) -> keyspace.WorkloadEndpointKey:
    return keyspace.WorkloadEndpointKey("h1", "k8s", f"w{i}", "eth0")


def _status_key(i: int) -> str:
    return keyspace.endpoint_status_key("h1", "k8s", f"w{i}", "eth0")


def test_liveness_and_endpoint_statuses(datastore: Datastore) -> None:
    stale = keyspace.endpoint_status_key("h1", "k8s", "gone", "eth0")
    datastore.put(stale, json.dumps({"status": "up"}))
    reporter = StatusReporter(datastore, "h1", interval=0.2, ttl=5, endpoint_delay=0.1)
    reporter.set_endpoints({_ep(i): {"status": "up"} for i in range(250)})
    reporter.start()
    try:
        wait_for(lambda: datastore.get(keyspace.felix_status_key("h1")), 5)
        live = datastore.get(keyspace.felix_status_key("h1"))
        assert live is not None and live.lease
        assert set(json.loads(live.value)) == {"time", "uptime", "first_update"}
        assert datastore.get(keyspace.felix_last_status_key("h1")) is not None
        # The reporter writes in batches; poll for the end state, not for one batch.
        wait_for(lambda: datastore.get(_status_key(249)) and datastore.get(stale) is None, 5,
                 message="250 statuses written and the vanished endpoint's status removed")
        reporter.set_endpoints({_ep(1): {"status": "down", "reason": "interface missing"},
                                _ep(2): None})
        def changed() -> bool:
            got = datastore.get(_status_key(1))
            return datastore.get(_status_key(2)) is None and got is not None and \
                json.loads(got.value) == {"status": "down", "reason": "interface missing"}

        wait_for(changed, 5, message="w1 down with its reason and w2's status removed")
        wait_for(lambda: json.loads(datastore.get(  # type: ignore[union-attr]
            keyspace.felix_status_key("h1")).value)["first_update"] is False, 5)
    finally:
        reporter.stop()
    # stop() revokes the lease: the liveness key goes, the last status stays
    assert datastore.get(keyspace.felix_status_key("h1")) is None
    assert datastore.get(keyspace.felix_last_status_key("h1")) is not None
