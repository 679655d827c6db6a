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

The package's names are imported on first use, so that `libcalico.client.names`
(keys-only name listings, for CLI commands that must start fast) can be used without
importing the model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from libcalico.client._client import CalicoClient
    from libcalico.client.resources import PartialApply, describe, resource_name

__all__ = ["CalicoClient", "PartialApply", "describe", "resource_name"]

_HOMES = {"CalicoClient": "libcalico.client._client",
          "PartialApply": "libcalico.client.resources",
          "describe": "libcalico.client.resources",
          "resource_name": "libcalico.client.resources"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
