"""Resource-document operations over every kind in the model: get, and batched
apply/create/replace/delete of many documents in one etcd transaction.

Owns: the identity of each kind (its primary key, how `get KIND NAME` names it),
the checks a batch needs beyond per-document validation (pools overlapping each other
or stored pools, endpoints naming unknown profiles, create of an existing resource,
replace/delete of a missing one), and committing the batch: everything in one
transaction when it fits etcd's per-transaction limit, otherwise in document-aligned
chunks, reporting exactly which documents were written if a later chunk fails.

Leaves to others: parsing and validating documents (`libcalico.model`), reading files
(calicoctl), the per-kind key mapping (the sibling client modules).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from libcalico import keyspace as ks
from libcalico.client.endpoints import EndpointClient, wep_key
from libcalico.client.network import NetworkClient, pools_overlapping
from libcalico.client.policy import PolicyClient
from libcalico.codec import dumps as encode
from libcalico.errors import AlreadyExists, CalicoError, Conflict, NotFound, ValidationError
from libcalico.model import (
    BGPGlobalConfig,
    BGPPeer,
    FelixConfig,
    HostEndpoint,
    IPAMConfig,
    IPPool,
    Node,
    Policy,
    Profile,
    Resource,
    Tier,
    WorkloadEndpoint,
    resource_class,
)

if TYPE_CHECKING:
    from libcalico.datastore import Compare, Op

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
MODES = ("apply", "create", "replace", "delete")


class PartialApply(CalicoError):
    """A batch too large for one transaction failed part-way; `applied` says what stuck."""

    def __init__(self, applied: list[int], cause: Exception) -> None:
        self.applied = applied
        self.cause = cause
        docs = ", ".join(str(i + 1) for i in applied) or "none"
        super().__init__(f"{cause} (documents already written: {docs})")


def describe(r: Resource) -> str:
    """`kind name` for messages."""
    return f"{r.KIND} {resource_name(r) or '(global)'}"


def resource_name(r: Resource) -> str:
    """How `calicoctl get KIND NAME` names a resource."""
    if isinstance(r, IPPool):
        return r.cidr
    if isinstance(r, Profile | Tier):
        return r.name
    if isinstance(r, Policy):
        return r.name
    if isinstance(r, WorkloadEndpoint | HostEndpoint):
        return r.endpoint_id
    if isinstance(r, Node):
        return r.hostname
    if isinstance(r, BGPPeer):
        return r.ip
    if isinstance(r, FelixConfig):
        return r.scope_host or ""
    return ""


def primary_key(r: Resource) -> str | None:
    """The key whose presence means the resource exists (None for settings kinds)."""
    if isinstance(r, IPPool):
        return ks.pool_key(r.cidr)
    if isinstance(r, Profile):
        return ks.profile_key(r.name, "rules")
    if isinstance(r, Tier):
        return ks.tier_metadata_key(r.name)
    if isinstance(r, Policy):
        return ks.policy_key(r.tier, r.name)
    if isinstance(r, WorkloadEndpoint):
        return wep_key(r)
    if isinstance(r, HostEndpoint):
        return ks.host_endpoint_key(r.hostname, r.endpoint_id)
    if isinstance(r, Node):
        return ks.bgp_host_key(r.hostname, "ip_addr_v4") if r.ipv4 else None
    if isinstance(r, BGPPeer):
        return ks.bgp_peer_key(r.ip, r.hostname)
    return None


@dataclass
class _Planned:
    index: int
    resource: Resource
    compares: list[Compare]
    ops: list[Op]


def _merge_ops(chunk: list[_Planned]) -> list[Op]:
    """One operation per key (etcd rejects a transaction naming a key twice): a later
    document wins, except that the implicit tier a policy creates never overrides a
    tier document."""
    from libcalico.datastore import Put

    merged: dict[tuple[str, bool], tuple[bool, Op]] = {}
    for plan in chunk:
        for op in plan.ops:
            implicit = (isinstance(plan.resource, Policy) and isinstance(op, Put)
                        and op.key != primary_key(plan.resource))
            slot = (op.key, getattr(op, "prefix", False))
            if implicit and slot in merged:
                continue
            merged[slot] = (not implicit, op)
    return [op for _, op in merged.values()]


class ResourceClient(NetworkClient, PolicyClient, EndpointClient):
    def write_ops(self, r: Resource, replace: bool) -> list[Op]:
        from libcalico.datastore import Put

        if isinstance(r, IPPool):
            return [Put(ks.pool_key(r.cidr), encode(r.to_json()))]
        if isinstance(r, Profile):
            return self.profile_ops(r)
        if isinstance(r, Tier):
            return [Put(ks.tier_metadata_key(r.name), encode(r.to_json()))]
        if isinstance(r, Policy):
            return self.policy_ops(r)
        if isinstance(r, WorkloadEndpoint):
            return [Put(wep_key(r), encode(r.to_json()))]
        if isinstance(r, HostEndpoint):
            return [Put(ks.host_endpoint_key(r.hostname, r.endpoint_id), encode(r.to_json()))]
        if isinstance(r, Node):
            return self.node_ops(r)
        if isinstance(r, BGPPeer):
            return [Put(ks.bgp_peer_key(r.ip, r.hostname), encode(r.to_json()))]
        if isinstance(r, BGPGlobalConfig):
            return self.bgp_config_ops(r)
        if isinstance(r, FelixConfig):
            return self.felix_config_ops(r, replace=replace)
        if isinstance(r, IPAMConfig):
            return [Put(ks.IPAM_CONFIG_KEY, encode(r.to_json()))]
        raise ValidationError("kind", r.KIND, "not supported")

    def delete_ops(self, r: Resource) -> list[Op]:
        from libcalico.datastore import Delete

        if isinstance(r, Profile):
            return [Delete(ks.profile_dir(r.name), prefix=True)]
        if isinstance(r, Tier):
            return [Delete(ks.tier_dir(r.name), prefix=True)]
        if isinstance(r, Node):
            return [Delete(ks.bgp_host_dir(r.hostname), prefix=True),
                    Delete(ks.host_bird_ip_key(r.hostname))]
        if isinstance(r, BGPGlobalConfig):
            return [Delete(ks.BGP_GLOBAL_AS_KEY), Delete(ks.BGP_GLOBAL_MESH_KEY),
                    Delete(ks.BGP_GLOBAL_LOGLEVEL_KEY)]
        if isinstance(r, FelixConfig):
            return [Delete(op.key) for op in self.felix_config_ops(r)]
        key = primary_key(r) if not isinstance(r, IPAMConfig) else ks.IPAM_CONFIG_KEY
        assert key is not None
        return [Delete(key)]

    # --- checks ------------------------------------------------------------------------------

    def _check_batch(self, resources: Sequence[Resource], mode: str) -> None:
        if mode == "delete":
            return
        pools = [r for r in resources if isinstance(r, IPPool)]
        if pools:
            stored = {p.cidr: p for p in self.list_pools()}
            new = {p.cidr for p in pools}
            others = [p for c, p in stored.items() if c not in new]
            for i, pool in enumerate(pools):
                clash = pools_overlapping(pool, others + pools[:i])
                if clash:
                    raise ValidationError("cidr", pool.cidr,
                                          f"overlaps pool {clash[0].cidr}")
        wanted = {p for r in resources if isinstance(r, WorkloadEndpoint | HostEndpoint)
                  for p in r.profile_ids}
        if wanted:
            known = set(self.list_profile_names()) | {r.name for r in resources
                                                      if isinstance(r, Profile)}
            for r in resources:
                for p in getattr(r, "profile_ids", ()):
                    if p not in known:
                        raise ValidationError("profile_ids", p,
                                              f"unknown profile (in {describe(r)})")

    def _plan(self, index: int, r: Resource, mode: str) -> _Planned:
        from libcalico.datastore import ModRevisionIs

        key = primary_key(r)
        compares: list[Compare] = []
        if key is not None and mode != "apply":
            kv = self.store.get(key)
            if mode == "create" and kv is not None:
                raise AlreadyExists(f"{describe(r)} already exists (document {index + 1})")
            if mode in ("replace", "delete") and kv is None:
                raise NotFound(f"{describe(r)} does not exist (document {index + 1})")
            compares.append(ModRevisionIs(key, kv.mod_revision if kv else 0))
        ops = self.delete_ops(r) if mode == "delete" else self.write_ops(r, mode == "replace")
        return _Planned(index, r, compares, ops)

    # --- the batch ---------------------------------------------------------------------------

    def apply_resources(self, resources: Sequence[Resource],
                        mode: str = "apply") -> None:
        """Write (or delete) every resource, or nothing if any check fails.

        Checks everything first; commits in one transaction when the batch fits, else
        in document-aligned chunks (raising `PartialApply` naming what was written).
        """
        if mode not in MODES:
            raise ValidationError("mode", mode, f"must be one of {', '.join(MODES)}")
        self._check_batch(resources, mode)
        plans = [self._plan(i, r, mode) for i, r in enumerate(resources)]
        chunks: list[list[_Planned]] = [[]]
        for plan in plans:
            size = sum(max(len(p.ops), len(p.compares)) for p in chunks[-1])
            if chunks[-1] and size + max(len(plan.ops), len(plan.compares)) > MAX_TXN_OPS:
                chunks.append([])
            chunks[-1].append(plan)
        applied: list[int] = []
        for chunk in chunks:
            compares = list({c.key: c for p in chunk for c in p.compares}.values())
            ops = _merge_ops(chunk)
            try:
                ok = self.store.txn(compares, ops, [])
                if not ok:
                    raise Conflict("a resource changed while it was being written; "
                                   "nothing from this batch was written" if not applied
                                   else "a resource changed while it was being written")
            except CalicoError as exc:
                if applied:
                    raise PartialApply(applied, exc) from exc
                raise
            applied.extend(p.index for p in chunk)

    # --- get ---------------------------------------------------------------------------------

    def get_resources(self, kind: str, name: str | None = None,
                      hostname: str | None = None, tier: str | None = None) -> list[Resource]:
        """Every stored resource of `kind` (matched case-insensitively), optionally by name."""
        cls = resource_class(kind)
        found: list[Resource]
        if cls is IPPool:
            found = list(self.list_pools())
        elif cls is Profile:
            found = list(self.list_profiles())
        elif cls is Tier:
            found = list(self.list_tiers())
        elif cls is Policy:
            found = list(self.list_policies(tier))
        elif cls is WorkloadEndpoint:
            found = list(self.list_workload_endpoints(hostname))
        elif cls is HostEndpoint:
            found = list(self.list_host_endpoints(hostname))
        elif cls is Node:
            found = list(self.list_nodes())
        elif cls is BGPPeer:
            found = list(self.list_bgp_peers(None))
            for host in self.list_node_names():
                found += self.list_bgp_peers(host)
        elif cls is BGPGlobalConfig:
            found = [self.get_bgp_config()]
        elif cls is FelixConfig:
            hosts = [hostname] if hostname else [None, *self.list_node_names()]
            found = [self.get_felix_config(h) for h in hosts]
            found = [c for c in found if c.scope_host is None or c.values]  # type: ignore[attr-defined]
        elif cls is IPAMConfig:
            found = [self.get_ipam_config()]
        else:  # pragma: no cover - every registered kind is handled above
            raise ValidationError("kind", kind, "not supported")
        if name is not None:
            if isinstance(name, str) and cls is IPPool:
                try:
                    from libcalico.model.validate import canonical_net
                    name = canonical_net("cidr", name)
                except ValidationError:
                    pass
            found = [r for r in found if resource_name(r) == name]
            if not found:
                raise NotFound(f"{cls.KIND} {name} does not exist")
        if hostname is not None and cls in (Node, BGPPeer):
            found = [r for r in found if getattr(r, "hostname", None) == hostname]
        return found
