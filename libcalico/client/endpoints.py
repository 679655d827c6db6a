"""Typed CRUD for workload and host endpoints.

Owns: listing endpoints with the seed-era filters (host, orchestrator, workload,
endpoint id) using the narrowest key prefix the filters allow, creating, replacing
and deleting them, and compare-and-swap updates of one endpoint (`update_endpoint`,
used by `endpoint <ID> profile append|remove|set`).

Leaves to others: creating interfaces (`workload.veth`), address allocation
(`libcalico.ipam`), endpoint validation (`libcalico.model`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from libcalico import keyspace as ks
from libcalico.client._base import cas_update, decode
from libcalico.codec import dumps as encode
from libcalico.errors import AlreadyExists, NotFound
from libcalico.model import HostEndpoint, HostEndpointId, WorkloadEndpoint, WorkloadEndpointId

if TYPE_CHECKING:
    from libcalico.datastore import KV, Datastore


def _wep_from_kv(kv: KV) -> WorkloadEndpoint | None:
    parsed = ks.parse_key(kv.key)
    if not isinstance(parsed, ks.WorkloadEndpointKey):
        return None
    return decode(kv.key, kv.value, lambda d: WorkloadEndpoint.from_json(WorkloadEndpointId(
        parsed.hostname, parsed.orchestrator, parsed.workload, parsed.endpoint_id), d))


def wep_key(ident: WorkloadEndpointId | WorkloadEndpoint) -> str:
    return ks.workload_endpoint_key(ident.hostname, ident.orchestrator, ident.workload,
                                    ident.endpoint_id)


class EndpointClient:
    store: Datastore

    # --- workload endpoints -----------------------------------------------------------------

    def list_workload_endpoints(self, hostname: str | None = None,
                                orchestrator: str | None = None,
                                workload: str | None = None,
                                endpoint_id: str | None = None) -> list[WorkloadEndpoint]:
        if hostname and orchestrator and workload:
            prefix = ks.workload_dir(hostname, orchestrator, workload)
        elif hostname:
            prefix = ks.host_workload_dir(hostname)
        else:
            prefix = ks.HOST_DIR
        kvs, _ = self.store.list(prefix)
        out = []
        for kv in kvs:
            ep = _wep_from_kv(kv)
            if ep is None:
                continue
            if ((orchestrator and ep.orchestrator != orchestrator)
                    or (workload and ep.workload != workload)
                    or (endpoint_id and ep.endpoint_id != endpoint_id)):
                continue
            out.append(ep)
        return sorted(out, key=lambda e: (e.hostname, e.orchestrator, e.workload,
                                          e.endpoint_id))

    def find_workload_endpoint(self, endpoint_id: str, hostname: str | None = None,
                               orchestrator: str | None = None,
                               workload: str | None = None) -> WorkloadEndpoint:
        """The one endpoint matching the filters; NotFound for none, Conflict for several."""
        from libcalico.errors import Conflict

        found = self.list_workload_endpoints(hostname, orchestrator, workload, endpoint_id)
        if not found:
            raise NotFound(f"endpoint {endpoint_id} does not exist")
        if len(found) > 1:
            raise Conflict(f"endpoint id {endpoint_id} matches {len(found)} endpoints; "
                           "narrow it with --host/--orchestrator/--workload")
        return found[0]

    def get_workload_endpoint(self, ident: WorkloadEndpointId) -> WorkloadEndpoint | None:
        kv = self.store.get(wep_key(ident))
        return _wep_from_kv(kv) if kv else None

    def create_workload_endpoint(self, ep: WorkloadEndpoint) -> None:
        if not self.store.create(wep_key(ep), encode(ep.to_json())):
            raise AlreadyExists(f"endpoint {ep.endpoint_id} of {ep.workload} already exists")

    def put_workload_endpoint(self, ep: WorkloadEndpoint) -> None:
        self.store.put(wep_key(ep), encode(ep.to_json()))

    def update_workload_endpoint(
            self, ident: WorkloadEndpointId,
            change: Callable[[WorkloadEndpoint], WorkloadEndpoint]) -> WorkloadEndpoint:
        """CAS read-modify-write of one endpoint; NotFound if it does not exist."""
        key = wep_key(ident)
        result: list[WorkloadEndpoint] = []

        def compute(kv: KV | None) -> str | bool:
            ep = _wep_from_kv(kv) if kv else None
            if ep is None:
                raise NotFound(f"endpoint {ident.endpoint_id} does not exist")
            new = change(ep)
            result[:] = [new]
            return False if new == ep else encode(new.to_json())

        cas_update(self.store, key, compute)
        return result[0]

    def delete_workload_endpoint(self, ident: WorkloadEndpointId) -> None:
        from libcalico.datastore import Delete

        key = wep_key(ident)
        if self.store.get(key) is None:
            raise NotFound(f"endpoint {ident.endpoint_id} does not exist")
        status = ks.endpoint_status_key(ident.hostname, ident.orchestrator, ident.workload,
                                        ident.endpoint_id)
        self.store.txn([], [Delete(key), Delete(status)], [])

    # --- host endpoints ---------------------------------------------------------------------

    def list_host_endpoints(self, hostname: str | None = None) -> list[HostEndpoint]:
        kvs, _ = self.store.list(ks.HOST_DIR if hostname is None else ks.host_dir(hostname))
        out = []
        for kv in kvs:
            parsed = ks.parse_key(kv.key)
            if isinstance(parsed, ks.HostEndpointKey):
                ep = decode(kv.key, kv.value, partial(
                    HostEndpoint.from_json, HostEndpointId(parsed.hostname, parsed.endpoint_id)))
                if ep is not None:
                    out.append(ep)
        return sorted(out, key=lambda e: (e.hostname, e.endpoint_id))

    def put_host_endpoint(self, ep: HostEndpoint) -> None:
        self.store.put(ks.host_endpoint_key(ep.hostname, ep.endpoint_id),
                       encode(ep.to_json()))

    def delete_host_endpoint(self, hostname: str, endpoint_id: str) -> None:
        if not self.store.delete(ks.host_endpoint_key(hostname, endpoint_id)):
            raise NotFound(f"host endpoint {endpoint_id} on {hostname} does not exist")
