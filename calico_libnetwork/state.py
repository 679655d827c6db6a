"""The Docker driver's own records in etcd: everything it must remember between calls.

Owns three kinds of record (keys in `libcalico.keyspace`, values JSON through
`libcalico.codec.dumps`):
- a network (`/calico/libnetwork/v1/<network id>`): the host whose engine created it,
  its pools (none: any pool of the version), whether it has IPv6, and - once the engine
  has told the driver - its name (the profile its endpoints use) and labels (their
  labels). Written at CreateNetwork, completed when the name is known, deleted at
  DeleteNetwork;
- a joined endpoint (`/calico/libnetwork/v1/host/<host>/endpoint/<endpoint id>`): its
  network, the sandbox it joined and whether it gave that sandbox its default route
  (the first Calico endpoint of a sandbox does; others get routes to their own pools);
- a profile the driver created (`/calico/libnetwork/v1/profile/<name>`), written in the
  same transaction as the profile, so the driver never removes a profile an operator
  made: `release_profile` deletes it only while this marker exists and no network
  record names it any more.
Because all of it is in etcd, the driver restarts at any time; a record that does not
parse is treated as absent (and logged).

Leaves to others: what the calls mean (`calico_libnetwork.network`), the profile's
contents (`libcalico.model.Profile.with_default_rules`), endpoints and addresses
(`workload`, `libcalico`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from libcalico import keyspace as ks
from libcalico.codec import dumps
from libcalico.model import Profile
from libcalico.model.validate import canonical_net, validate_labels, validate_name
from libcalico.retry import retry_cas

if TYPE_CHECKING:
    from libcalico.client import CalicoClient
    from libcalico.datastore import Datastore

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkRecord:
    network_id: str
    hostname: str
    ipv4_pools: tuple[str, ...] = ()  # --subnet pools; () means any IPv4 pool
    ipv6_pools: tuple[str, ...] = ()
    ipv6: bool = False
    name: str | None = None  # the Docker network's name: the profile of its endpoints
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def pools(self, version: int) -> tuple[str, ...]:
        return self.ipv4_pools if version == 4 else self.ipv6_pools

    def to_json(self) -> dict[str, Any]:
        return {"network_id": self.network_id, "hostname": self.hostname,
                "ipv4_pools": list(self.ipv4_pools), "ipv6_pools": list(self.ipv6_pools),
                "ipv6": self.ipv6, "name": self.name, "labels": dict(self.labels)}

    @classmethod
    def from_json(cls, data: Any) -> NetworkRecord:
        return cls(str(data["network_id"]), str(data["hostname"]),
                   tuple(canonical_net("ipv4_pools", p) for p in data.get("ipv4_pools") or ()),
                   tuple(canonical_net("ipv6_pools", p) for p in data.get("ipv6_pools") or ()),
                   bool(data.get("ipv6")),
                   validate_name("name", data["name"]) if data.get("name") else None,
                   validate_labels("labels", data.get("labels") or {}))


@dataclass(frozen=True)
class EndpointRecord:
    endpoint_id: str
    network_id: str
    sandbox: str
    gateway: bool  # this endpoint gave its sandbox the default route

    def to_json(self) -> dict[str, Any]:
        return {"endpoint_id": self.endpoint_id, "network_id": self.network_id,
                "sandbox": self.sandbox, "gateway": self.gateway}

    @classmethod
    def from_json(cls, data: Any) -> EndpointRecord:
        return cls(str(data["endpoint_id"]), str(data["network_id"]), str(data["sandbox"]),
                   bool(data["gateway"]))


def _parse(kind: str, key: str, value: str, build: Any) -> Any:
    try:
        return build(json.loads(value))
    except (ValueError, KeyError, TypeError) as exc:
        _log.warning("ignoring the %s record at %s: %s", kind, key, exc)
        return None


class DriverState:
    """The records above, over one datastore client (thread-safe, as the client is)."""

    def __init__(self, store: Datastore, client: CalicoClient) -> None:
        self.store = store
        self.client = client

    # --- networks ------------------------------------------------------------------------------

    def create_network(self, record: NetworkRecord) -> NetworkRecord:
        """Store a new network; one stored already under that id is kept (a repeated
        CreateNetwork) and returned."""
        if self.store.create(ks.libnetwork_network_key(record.network_id),
                             dumps(record.to_json())):
            return record
        return self.get_network(record.network_id) or record

    def get_network(self, network_id: str) -> NetworkRecord | None:
        key = ks.libnetwork_network_key(network_id)
        kv = self.store.get(key)
        return None if kv is None else _parse("network", key, kv.value, NetworkRecord.from_json)

    def networks(self) -> list[NetworkRecord]:
        kvs, _ = self.store.list(f"{ks.LIBNETWORK}/")
        out = []
        for kv in kvs:
            if isinstance(ks.parse_key(kv.key), ks.LibnetworkNetworkKey):
                rec = _parse("network", kv.key, kv.value, NetworkRecord.from_json)
                if rec is not None:
                    out.append(rec)
        return out

    def name_network(self, network_id: str, name: str,
                     labels: Mapping[str, str]) -> NetworkRecord | None:
        """Record the network's name and labels (compare-and-swap); None if the network
        is gone meanwhile."""
        validate_name("network name", name)
        labels = validate_labels("network label", labels)
        key = ks.libnetwork_network_key(network_id)

        def step() -> tuple[NetworkRecord | None] | None:
            kv = self.store.get(key)
            rec = None if kv is None else _parse("network", key, kv.value,
                                                 NetworkRecord.from_json)
            if kv is None or rec is None:
                return (None,)
            new = replace(rec, name=name, labels=dict(labels))
            if new == rec:
                return (rec,)
            return (new,) if self.store.cas(key, dumps(new.to_json()), kv.mod_revision) \
                else None

        return retry_cas(f"libnetwork network {network_id}", step)[0]

    def delete_network(self, network_id: str) -> NetworkRecord | None:
        rec = self.get_network(network_id)
        self.store.delete(ks.libnetwork_network_key(network_id))
        return rec

    # --- profiles ------------------------------------------------------------------------------

    def ensure_profile(self, name: str) -> bool:
        """Create profile `name` with the default rules when it does not exist, marked as
        the driver's in the same transaction; an existing profile is never touched.
        True when this call created it."""
        from libcalico.datastore import ModRevisionIs, Put

        if self.client.profile_exists(name):
            return False
        profile = Profile.with_default_rules(name)
        ops = self.client.profile_ops(profile)
        keys = [op.key for op in ops if isinstance(op, Put)]
        marker = ks.libnetwork_profile_key(name)
        compares = [ModRevisionIs(k, 0) for k in (*keys, marker)]
        created = self.store.txn(compares, [*ops, Put(marker, dumps({"profile": name}))], [])
        if created:
            _log.info("created profile %s with the default rules", name)
        return bool(created)

    def owns_profile(self, name: str) -> bool:
        return self.store.get(ks.libnetwork_profile_key(name)) is not None

    def release_profile(self, name: str) -> bool:
        """Delete profile `name` if the driver created it and no network record names it
        any more (another host's network of the same name keeps it). True if deleted."""
        from libcalico.datastore import Delete, ModRevisionIs

        marker = ks.libnetwork_profile_key(name)
        kv = self.store.get(marker)
        if kv is None or any(rec.name == name for rec in self.networks()):
            return False
        deletes = [Delete(ks.profile_key(name, part)) for part in ks.PROFILE_PARTS]
        done = self.store.txn([ModRevisionIs(marker, kv.mod_revision)],
                              [*deletes, Delete(marker)], [])
        if done:
            _log.info("deleted profile %s: the last network of that name is gone", name)
        return bool(done)

    # --- joined endpoints ----------------------------------------------------------------------

    def put_endpoint(self, hostname: str, record: EndpointRecord) -> None:
        self.store.put(ks.libnetwork_endpoint_key(hostname, record.endpoint_id),
                       dumps(record.to_json()))

    def get_endpoint(self, hostname: str, endpoint_id: str) -> EndpointRecord | None:
        key = ks.libnetwork_endpoint_key(hostname, endpoint_id)
        kv = self.store.get(key)
        return None if kv is None else _parse("endpoint", key, kv.value,
                                              EndpointRecord.from_json)

    def endpoints(self, hostname: str) -> list[EndpointRecord]:
        kvs, _ = self.store.list(ks.libnetwork_endpoint_dir(hostname))
        recs = (_parse("endpoint", kv.key, kv.value, EndpointRecord.from_json) for kv in kvs)
        return [r for r in recs if r is not None]

    def delete_endpoint(self, hostname: str, endpoint_id: str) -> None:
        self.store.delete(ks.libnetwork_endpoint_key(hostname, endpoint_id))

