"""The typed datastore client: CRUD over every resource kind, for calicoctl, the node
and plugin code, and tests that need to write state.

Owns: `CalicoClient(datastore)`, composed of one mixin per concern: `NetworkClient`
(pools, nodes, BGP peers and settings, felix and IPAM config), `PolicyClient`
(profiles, tiers, policies), `EndpointClient` (workload and host endpoints) and
`ResourceClient` (resource-document batches and `get KIND`). Only validated model
values go in; stored values that fail validation come out as absent (logged once per
key). Multi-key changes are etcd transactions; read-modify-write uses CAS with
bounded retries.

Leaves to others: etcd access (`libcalico.datastore`), keys (`libcalico.keyspace`),
models (`libcalico.model`), address allocation (`libcalico.ipam`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from libcalico.client.resources import PartialApply, ResourceClient, describe, resource_name

if TYPE_CHECKING:
    from libcalico.datastore import Datastore

__all__ = ["CalicoClient", "PartialApply", "describe", "resource_name"]


class CalicoClient(ResourceClient):
    """Typed CRUD over the datastore; see the mixins for the operations."""

    def __init__(self, store: Datastore) -> None:
        self.store = store
