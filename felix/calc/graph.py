"""The calculation graph: datastore updates in, desired dataplane changes out. Pure.

Owns the indexes that turn Calico v1 data into felix's desired dataplane:
  - local workload and host endpoints (this host only) -> endpoint chains, routes,
    interface settings, neighbour entries, dispatch chains;
  - which policies' selectors match each local endpoint (re-evaluated for one endpoint
    when its labels change, for the local endpoints when a policy changes);
  - which profiles and policies are in use ("active" rule sources): only those are
    rendered, and only the tags/selectors they use become ipsets;
  - ipset members from every endpoint in the cluster (`MembershipIndex`);
  - pools -> the nat-outgoing ipsets.
`on_update()` only records and marks dirty; `flush()` renders exactly what is dirty and
returns a `Changes` holding the values that differ from what it returned before. The
result depends only on the set of (key, value) pairs seen last, never on their order.

Leaves to others: rendering details (`felix.rules`), applying (`felix.dataplane`,
driven by `felix.driver`), key parsing and validation (`felix.calc.parse`).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from felix.calc.membership import EndpointData, MembershipIndex, SetId
from felix.calc.parse import parse_update
from felix.dataplane.types import (
    Chain,
    InterfaceState,
    IPSetState,
    NeighbourState,
    RouteState,
    Rule,
)
from felix.rules.dispatch import DispatchRenderer, render_host_dispatch
from felix.rules.names import (
    IPSET_ALL_POOLS,
    IPSET_MASQ_POOLS,
    Marks,
    from_endpoint_chain,
    from_host_endpoint_chain,
    interface_suffix,
    profile_chain,
    selector_ipset,
    tag_ipset,
    to_endpoint_chain,
    to_host_endpoint_chain,
)
from felix.rules.policy import (
    EndpointSpec,
    TierPolicies,
    render_endpoint_chains,
    render_policy_chains,
    render_profile_chains,
)
from felix.rules.static import render_base_jumps, render_filter_chains, render_nat_chains
from libcalico import keyspace
from libcalico.model import HostEndpoint, IPPool, Policy, Tier, WorkloadEndpoint
from libcalico.model.policy import policy_sort_key
from libcalico.model.rules import Rules
from libcalico.model.selector import parse_selector

_log = logging.getLogger(__name__)

TableKey = tuple[int, str]  # (IP version, table)
PolicyId = tuple[str, str]  # (tier, policy)
EpKey = Any  # keyspace.WorkloadEndpointKey | keyspace.HostEndpointKey
Source = tuple[str, Any]  # ("profile", id) | ("policy", PolicyId)


@dataclass(frozen=True)
class CalcSettings:
    """The configuration values the calculation depends on."""

    hostname: str
    prefixes: tuple[str, ...] = ("cali",)
    endpoint_to_host: str = "DROP"
    mark_mask: int = 0xFF000000
    failsafe_in: tuple[int, ...] = (22,)
    failsafe_out: tuple[int, ...] = (179, 2379, 2380, 4001, 7001)
    ipv6: bool = True

    @classmethod
    def from_config(cls, config: Any, ipv6: bool) -> CalcSettings:
        return cls(config.FelixHostname, tuple(config.InterfacePrefix),
                   config.DefaultEndpointToHostAction, config.IptablesMarkMask,
                   tuple(config.FailsafeInboundHostPorts),
                   tuple(config.FailsafeOutboundHostPorts), ipv6)


@dataclass(frozen=True)
class EndpointInfo:
    """A local workload endpoint as the status reporter sees it."""

    ifname: str | None
    error: str | None = None  # why it is not programmed (invalid data, name clash)


@dataclass
class Changes:
    """What changed since the last flush. None values mean "remove"."""

    chains: dict[TableKey, dict[str, Chain | None]] = field(default_factory=dict)
    base_jumps: dict[TableKey, dict[str, tuple[Rule, ...]]] = field(default_factory=dict)
    ipsets: dict[int, dict[str, IPSetState | None]] = field(default_factory=dict)
    routes: dict[str, RouteState | None] = field(default_factory=dict)
    interfaces: dict[str, InterfaceState | None] = field(default_factory=dict)
    neighbours: frozenset[NeighbourState] | None = None  # the full set, when it changed
    endpoints: dict[Any, EndpointInfo | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(any(self.chains.values()) or any(self.base_jumps.values())
                    or any(self.ipsets.values()) or self.routes or self.interfaces
                    or self.neighbours is not None or self.endpoints)


@dataclass(frozen=True)
class DesiredState:
    """A full snapshot of the desired dataplane (tests compare these)."""

    chains: Mapping[TableKey, Mapping[str, Chain]]
    base_jumps: Mapping[TableKey, Mapping[str, tuple[Rule, ...]]]
    ipsets: Mapping[str, IPSetState]
    routes: Mapping[str, RouteState]
    interfaces: Mapping[str, InterfaceState]
    neighbours: frozenset[NeighbourState]
    endpoints: Mapping[Any, EndpointInfo]


def _key_order(key: Any) -> str:
    """A total, order-independent ranking of endpoint keys (for tie-breaking)."""
    return repr(key)


def _plain(nets: Iterable[str]) -> tuple[str, ...]:
    return tuple(n.split("/", 1)[0] for n in nets)


class CalcGraph:
    """See the module docstring. Not thread-safe: the driver calls it from one thread."""

    def __init__(self, settings: CalcSettings) -> None:
        self.settings = settings
        self.marks = Marks.from_mask(settings.mark_mask)
        self.versions = (4, 6) if settings.ipv6 else (4,)
        self.tables: tuple[TableKey, ...] = (*((v, "filter") for v in self.versions),
                                             (4, "nat"))
        # inputs
        self._weps: dict[EpKey, WorkloadEndpoint] = {}  # local workload endpoints
        self._heps: dict[EpKey, HostEndpoint] = {}  # local host endpoints
        self._invalid: dict[EpKey, str] = {}  # local endpoints with invalid data
        self._profile_parts: dict[str, dict[str, Any]] = {}
        self._tiers: dict[str, Tier] = {}
        self._policies: dict[PolicyId, Policy] = {}
        self._pools: dict[str, IPPool] = {}
        # indexes
        self.membership = MembershipIndex()
        self._dispatch = DispatchRenderer()
        self._dispatch_names: set[str] = set()
        self._dispatch_map: dict[str, tuple[str, str]] = {}  # ifname -> (from, to) chain
        self._dispatch_owner: dict[str, EpKey] = {}  # ifname -> endpoint rendered for it
        self._ep_dispatch: dict[EpKey, str] = {}  # endpoint -> ifname it is dispatched on
        self._ep_policies: dict[EpKey, frozenset[PolicyId]] = {}
        self._policy_eps: dict[PolicyId, set[EpKey]] = {}
        self._profile_users: dict[str, set[EpKey]] = {}
        self._tier_policies: dict[str, set[PolicyId]] = {}
        self._ifname_eps: dict[str, set[EpKey]] = {}
        self._dest_eps: dict[str, set[EpKey]] = {}
        self._source_sets: dict[Source, frozenset[SetId]] = {}
        self._set_refs: dict[SetId, set[Source]] = {}
        # dirty flags
        self._dirty_eps: set[EpKey] = set()
        self._dirty_sources: set[Source] = set()
        self._dirty_ifnames: set[str] = set()
        self._dispatch_dirty = True
        self._pools_dirty = True
        self._static_dirty = True
        # outputs (what the last flushes returned)
        self._chains: dict[TableKey, dict[str, Chain]] = {t: {} for t in self.tables}
        self._jumps: dict[TableKey, dict[str, tuple[Rule, ...]]] = {t: {} for t in self.tables}
        self._ep_chains: dict[EpKey, tuple[str, str]] = {}
        self._source_chains: dict[Source, tuple[str, ...]] = {}
        self._ipsets: dict[str, IPSetState] = {}
        self._routes: dict[str, RouteState] = {}
        self._ep_routes: dict[EpKey, tuple[str, ...]] = {}
        self._interfaces: dict[str, InterfaceState] = {}
        self._ep_neighbours: dict[EpKey, frozenset[NeighbourState]] = {}
        self._neigh_dirty = False
        self._ep_info: dict[EpKey, EndpointInfo] = {}
        self._changes = Changes()

    # ==== inputs ==========================================================================

    def on_update(self, key: str, value: str | None) -> None:
        parsed = parse_update(key, value)
        if parsed is None:
            return
        k, v = parsed.key, parsed.value
        if isinstance(k, keyspace.WorkloadEndpointKey):
            self._on_workload_endpoint(k, v, parsed.error)
        elif isinstance(k, keyspace.HostEndpointKey):
            self._on_host_endpoint(k, v, parsed.error)
        elif isinstance(k, keyspace.ProfileKey):
            self._on_profile_part(k.name, k.part, v)
        elif isinstance(k, keyspace.TierKey):
            self._on_tier(k.tier, v)
        elif isinstance(k, keyspace.PolicyKey):
            self._on_policy((k.tier, k.name), v)
        elif isinstance(k, keyspace.PoolKey):
            if v is None:
                if self._pools.pop(k.cidr, None) is not None:
                    self._pools_dirty = True
            elif self._pools.get(k.cidr) != v:
                self._pools[k.cidr] = v
                self._pools_dirty = True

    def on_updates(self, updates: Iterable[tuple[str, str | None]]) -> None:
        for key, value in updates:
            self.on_update(key, value)

    def _local(self, hostname: str) -> bool:
        return hostname == self.settings.hostname

    def _on_workload_endpoint(self, key: keyspace.WorkloadEndpointKey,
                              ep: WorkloadEndpoint | None, error: str | None) -> None:
        data = None
        if ep is not None:
            data = EndpointData(_plain(ep.ipv4_nets), _plain(ep.ipv6_nets), ep.labels,
                                ep.profile_ids)
        self.membership.on_endpoint(key, data)
        if not self._local(key.hostname):
            return
        if error is not None:
            self._invalid[key] = error
        else:
            self._invalid.pop(key, None)
        old = self._weps.get(key)
        if old == ep and old is not None:
            return
        if old is not None:
            self._ifname_eps[old.name].discard(key)
            if not self._ifname_eps[old.name]:
                del self._ifname_eps[old.name]
            self._dirty_ifnames.add(old.name)
        if ep is None:
            self._weps.pop(key, None)
        else:
            self._weps[key] = ep
            self._ifname_eps.setdefault(ep.name, set()).add(key)
            self._dirty_ifnames.add(ep.name)
        self._local_endpoint_changed(key, old, ep)

    def _on_host_endpoint(self, key: keyspace.HostEndpointKey, ep: HostEndpoint | None,
                          error: str | None) -> None:
        data = None
        if ep is not None:
            data = EndpointData(ep.expected_ipv4_addrs, ep.expected_ipv6_addrs, ep.labels,
                                ep.profile_ids)
        self.membership.on_endpoint(key, data)
        if not self._local(key.hostname):
            return
        if ep is not None and ep.name is None:
            _log.info("host endpoint %s has no interface name; only its addresses are used",
                      key.endpoint_id)
            ep = None
        old = self._heps.get(key)
        if old == ep:
            return
        if ep is None:
            self._heps.pop(key, None)
        else:
            self._heps[key] = ep
        self._local_endpoint_changed(key, old, ep)

    def _local_endpoint_changed(self, key: EpKey, old: Any, new: Any) -> None:
        self._dirty_eps.add(key)
        old_profiles = old.profile_ids if old is not None else ()
        new_profiles = new.profile_ids if new is not None else ()
        for pid in set(old_profiles) - set(new_profiles):
            users = self._profile_users.get(pid)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._profile_users[pid]
                    self._dirty_sources.add(("profile", pid))
        for pid in set(new_profiles) - set(old_profiles):
            users = self._profile_users.setdefault(pid, set())
            if not users:
                self._dirty_sources.add(("profile", pid))
            users.add(key)
        self._match_policies(key)

    def _labels_of(self, ep: Any) -> dict[str, str]:
        return self.membership.effective_labels(
            EndpointData((), (), ep.labels, ep.profile_ids))

    def _endpoint(self, key: EpKey) -> Any:
        return self._weps.get(key) or self._heps.get(key)

    def _match_policies(self, key: EpKey) -> None:
        """Re-evaluate every policy against one local endpoint."""
        ep = self._endpoint(key)
        new: frozenset[PolicyId] = frozenset()
        if ep is not None:
            labels = self._labels_of(ep)
            new = frozenset(pid for pid, pol in self._policies.items()
                            if parse_selector(pol.selector).evaluate(labels))
        old = self._ep_policies.get(key, frozenset())
        if new == old:
            return
        self._dirty_eps.add(key)
        for pid in old - new:
            eps = self._policy_eps[pid]
            eps.discard(key)
            if not eps:
                del self._policy_eps[pid]
                self._dirty_sources.add(("policy", pid))
        for pid in new - old:
            eps = self._policy_eps.setdefault(pid, set())
            if not eps:
                self._dirty_sources.add(("policy", pid))
            eps.add(key)
        if new:
            self._ep_policies[key] = new
        else:
            self._ep_policies.pop(key, None)

    def _on_profile_part(self, name: str, part: str, value: Any) -> None:
        parts = self._profile_parts.setdefault(name, {})
        if parts.get(part) == value and (value is not None or part not in parts):
            if not parts:
                del self._profile_parts[name]
            return
        old_labels = parts.get("labels") or {}
        if value is None:
            parts.pop(part, None)
        else:
            parts[part] = value
        if not parts:
            del self._profile_parts[name]
        self.membership.on_profile(name, tuple(parts.get("tags") or ()),
                                   parts.get("labels") or {})
        self._dirty_sources.add(("profile", name))
        if part == "labels" and (parts.get("labels") or {}) != old_labels:
            for key in list(self._profile_users.get(name, ())):
                self._match_policies(key)

    def _on_tier(self, name: str, tier: Tier | None) -> None:
        old = self._tiers.get(name)
        if old == tier:
            return
        if tier is None:
            del self._tiers[name]
        else:
            self._tiers[name] = tier
        for pid in self._tier_policies.get(name, ()):
            self._dirty_eps.update(self._policy_eps.get(pid, ()))

    def _on_policy(self, pid: PolicyId, policy: Policy | None) -> None:
        old = self._policies.get(pid)
        if old == policy:
            return
        if policy is None:
            del self._policies[pid]
            self._tier_policies[pid[0]].discard(pid)
            if not self._tier_policies[pid[0]]:
                del self._tier_policies[pid[0]]
        else:
            self._policies[pid] = policy
            self._tier_policies.setdefault(pid[0], set()).add(pid)
        self._dirty_sources.add(("policy", pid))
        old_eps = set(self._policy_eps.get(pid, ()))
        if old is not None and policy is not None and old.selector == policy.selector:
            new_eps = old_eps
        else:
            sel = parse_selector(policy.selector) if policy is not None else None
            new_eps = set()
            if sel is not None:
                for key in list(self._weps) + list(self._heps):
                    if sel.evaluate(self._labels_of(self._endpoint(key))):
                        new_eps.add(key)
            for key in old_eps ^ new_eps:
                pols = set(self._ep_policies.get(key, ()))
                pols.symmetric_difference_update({pid})
                if pols:
                    self._ep_policies[key] = frozenset(pols)
                else:
                    self._ep_policies.pop(key, None)
            if new_eps:
                self._policy_eps[pid] = new_eps
            else:
                self._policy_eps.pop(pid, None)
        if old is None or policy is None or old.order != policy.order:
            self._dirty_eps.update(old_eps | new_eps)
        else:
            self._dirty_eps.update(old_eps ^ new_eps)

    # ==== flush ===========================================================================

    def flush(self) -> Changes:
        """Render everything dirty; return what changed since the last flush."""
        if self._static_dirty:
            self._render_static()
        while self._dirty_sources:
            self._render_source(self._dirty_sources.pop())
        dirty_eps, self._dirty_eps = self._dirty_eps, set()
        dirty_ifnames, self._dirty_ifnames = self._dirty_ifnames, set()
        for ifname in dirty_ifnames:
            dirty_eps.update(self._ifname_eps.get(ifname, ()))
        dirty_dests: set[str] = set()
        for key in dirty_eps:
            self._render_endpoint(key, dirty_dests)
        for dest in dirty_dests:
            self._render_route(dest)
        for ifname in dirty_ifnames:
            self._render_interface(ifname)
        if self._dispatch_dirty:
            self._render_dispatch()
        if self._pools_dirty:
            self._render_pools()
        self._render_ipsets()
        if self._neigh_dirty:
            self._neigh_dirty = False
            self._changes.neighbours = frozenset().union(*self._ep_neighbours.values())
        changes, self._changes = self._changes, Changes()
        return changes

    # --- output helpers ---------------------------------------------------------------

    def _set_chain(self, table: TableKey, chain: Chain) -> None:
        chains = self._chains[table]
        current = chains.get(chain.name)
        if current is not chain and current != chain:
            chains[chain.name] = chain
            self._changes.chains.setdefault(table, {})[chain.name] = chain

    def _remove_chain(self, table: TableKey, name: str) -> None:
        if self._chains[table].pop(name, None) is not None:
            self._changes.chains.setdefault(table, {})[name] = None

    def _set_ipset(self, state: IPSetState) -> None:
        if self._ipsets.get(state.name) != state:
            self._ipsets[state.name] = state
            self._changes.ipsets.setdefault(state.version, {})[state.name] = state

    def _remove_ipset(self, name: str, version: int) -> None:
        if self._ipsets.pop(name, None) is not None:
            self._changes.ipsets.setdefault(version, {})[name] = None

    # --- static chains ------------------------------------------------------------------

    def _render_static(self) -> None:
        self._static_dirty = False
        s = self.settings
        for version in self.versions:
            table = (version, "filter")
            for chain in render_filter_chains(version, s.prefixes, s.endpoint_to_host,
                                              self.marks, s.failsafe_in, s.failsafe_out):
                self._set_chain(table, chain)
            self._jumps[table] = render_base_jumps("filter")
            self._changes.base_jumps[table] = dict(self._jumps[table])
        for chain in render_nat_chains():
            self._set_chain((4, "nat"), chain)
        self._jumps[(4, "nat")] = render_base_jumps("nat")
        self._changes.base_jumps[(4, "nat")] = dict(self._jumps[(4, "nat")])

    # --- rule sources (profiles, policies) --------------------------------------------

    def _render_source(self, source: Source) -> None:
        kind, ident = source
        chains: list[tuple[int, Chain]] = []
        sets: frozenset[SetId] = frozenset()
        if kind == "profile" and ident in self._profile_users:
            parts = self._profile_parts.get(ident)
            if parts is None or "rules" not in parts:
                # Unknown profile (or one without rules): stub chains that drop, as
                # Felix 1.x did for missing dependencies, so endpoint chains stay valid.
                for version in self.versions:
                    for inbound in (True, False):
                        chains.append((version, Chain(profile_chain(ident, inbound),
                                                      (Rule("", "-j DROP", "no rules"),))))
            else:
                rules: Rules = parts["rules"]
                sets = self._sets_of(rules)
                for version in self.versions:
                    for chain in render_profile_chains(ident, rules.inbound, rules.outbound,
                                                       version, self.marks):
                        chains.append((version, chain))
        elif kind == "policy" and ident in self._policy_eps and ident in self._policies:
            pol = self._policies[ident]
            sets = self._sets_of(pol.rules)
            for version in self.versions:
                for chain in render_policy_chains(ident[0], ident[1], pol.inbound_rules,
                                                  pol.outbound_rules, version, self.marks):
                    chains.append((version, chain))
        new_names = tuple(sorted({c.name for _, c in chains}))
        for name in set(self._source_chains.get(source, ())) - set(new_names):
            for version in self.versions:
                self._remove_chain((version, "filter"), name)
        for version, chain in chains:
            self._set_chain((version, "filter"), chain)
        if new_names:
            self._source_chains[source] = new_names
        else:
            self._source_chains.pop(source, None)
        self._set_source_sets(source, sets)

    @staticmethod
    def _sets_of(rules: Rules) -> frozenset[SetId]:
        return frozenset({SetId("tag", t) for t in rules.tags_used()}
                         | {SetId("sel", s.canonical) for s in rules.selectors_used()})

    def _set_source_sets(self, source: Source, sets: frozenset[SetId]) -> None:
        old = self._source_sets.get(source, frozenset())
        if old == sets:
            return
        for set_id in old - sets:
            refs = self._set_refs[set_id]
            refs.discard(source)
            if not refs:
                del self._set_refs[set_id]
                self.membership.set_active(set_id, False)
        for set_id in sets - old:
            refs = self._set_refs.setdefault(set_id, set())
            if not refs:
                self.membership.set_active(set_id, True)
            refs.add(source)
        if sets:
            self._source_sets[source] = sets
        else:
            self._source_sets.pop(source, None)

    def _render_ipsets(self) -> None:
        dirty, self.membership.dirty = self.membership.dirty, set()
        for set_id in dirty:
            for version in self.versions:
                name = (tag_ipset(set_id.value, version) if set_id.kind == "tag" else
                        selector_ipset(parse_selector(set_id.value).unique_id, version))
                if self.membership.is_active(set_id):
                    self._set_ipset(IPSetState(name, version, "hash:ip",
                                               self.membership.members(set_id, version)))
                else:
                    self._remove_ipset(name, version)

    def _render_pools(self) -> None:
        self._pools_dirty = False
        v4 = [p for p in self._pools.values() if p.version == 4]
        self._set_ipset(IPSetState(IPSET_MASQ_POOLS, 4, "hash:net",
                                   frozenset(p.cidr for p in v4 if p.nat_outgoing)))
        self._set_ipset(IPSetState(IPSET_ALL_POOLS, 4, "hash:net",
                                   frozenset(p.cidr for p in v4)))

    # --- endpoints ----------------------------------------------------------------------

    def _ifname_owner(self, ifname: str) -> EpKey | None:
        keys = self._ifname_eps.get(ifname)
        if not keys:
            return None
        if len(keys) == 1:
            return next(iter(keys))
        return min(keys, key=_key_order)

    def _tiers_for(self, key: EpKey) -> tuple[TierPolicies, ...]:
        by_tier: dict[str, list[Policy]] = {}
        for pid in self._ep_policies.get(key, ()):
            by_tier.setdefault(pid[0], []).append(self._policies[pid])
        tiers = sorted((self._tiers.get(name) or Tier(name) for name in by_tier),
                       key=policy_sort_key)
        return tuple(TierPolicies(t.name, tuple(p.name for p in sorted(by_tier[t.name],
                                                                       key=policy_sort_key)))
                     for t in tiers)

    def _render_endpoint(self, key: EpKey, dirty_dests: set[str]) -> None:
        if isinstance(key, keyspace.HostEndpointKey):
            self._render_host_endpoint(key)
            return
        ep = self._weps.get(key)
        owner = self._ifname_owner(ep.name) if ep is not None else None
        info: EndpointInfo | None
        if ep is not None and owner != key:
            _log.warning("endpoint %s uses interface %s, already used by %s; not programmed",
                         key, ep.name, owner)
            info = EndpointInfo(ep.name, f"interface {ep.name} is used by another endpoint")
            ep = None
        elif ep is not None:
            info = EndpointInfo(ep.name, None if ep.state == "active" else "inactive")
        elif key in self._invalid:
            info = EndpointInfo(None, self._invalid[key])
        else:
            info = None
        if self._ep_info.get(key) != info:
            if info is None:
                self._ep_info.pop(key, None)
            else:
                self._ep_info[key] = info
            self._changes.endpoints[key] = info
        # chains
        old_names = self._ep_chains.pop(key, None)
        new_names: tuple[str, str] | None = None
        if ep is not None:
            suffix = interface_suffix(ep.name, self.settings.prefixes)
            new_names = (from_endpoint_chain(suffix), to_endpoint_chain(suffix))
            active = ep.state == "active"
            spec = EndpointSpec(ep.name, suffix, ep.ipv4_nets if active else (),
                                ep.ipv6_nets if active else (), ep.mac, self._tiers_for(key),
                                ep.profile_ids)
            for version in self.versions:
                for chain in render_endpoint_chains(spec, version, self.marks):
                    self._set_chain((version, "filter"), chain)
            self._ep_chains[key] = new_names
        old_if = self._ep_dispatch.pop(key, None)
        if old_if is not None and self._dispatch_owner.get(old_if) == key:
            del self._dispatch_owner[old_if]
            del self._dispatch_map[old_if]
            self._dispatch_dirty = True
        if ep is not None and new_names is not None:
            self._dispatch_owner[ep.name] = key
            self._dispatch_map[ep.name] = new_names
            self._ep_dispatch[key] = ep.name
            if old_if != ep.name or old_names != new_names:
                self._dispatch_dirty = True
        if old_names != new_names:
            for name in old_names or ():
                if name not in (new_names or ()):
                    for version in self.versions:
                        self._remove_chain((version, "filter"), name)
        # routes and neighbour entries (only for active endpoints)
        if ep is not None and ep.state != "active":
            ep = None
        old_dests = self._ep_routes.pop(key, ())
        new_dests: tuple[str, ...] = ()
        neighbours: frozenset[NeighbourState] = frozenset()
        if ep is not None:
            new_dests = ep.ipv4_nets + (ep.ipv6_nets if self.settings.ipv6 else ())
            if ep.mac:
                neighbours = frozenset(NeighbourState(n.split("/")[0], ep.mac, ep.name)
                                       for n in new_dests)
        for dest in set(old_dests) - set(new_dests):
            users = self._dest_eps[dest]
            users.discard(key)
            if not users:
                del self._dest_eps[dest]
        for dest in new_dests:
            self._dest_eps.setdefault(dest, set()).add(key)
        if new_dests:
            self._ep_routes[key] = new_dests
        dirty_dests.update(old_dests, new_dests)
        if self._ep_neighbours.get(key, frozenset()) != neighbours:
            self._neigh_dirty = True
            if neighbours:
                self._ep_neighbours[key] = neighbours
            else:
                self._ep_neighbours.pop(key, None)

    def _render_route(self, dest: str) -> None:
        """The route for `dest` goes to the interface of its owner (lowest key)."""
        users = self._dest_eps.get(dest)
        route = None
        if users:
            owner = min(users, key=_key_order)
            route = RouteState(dest, self._weps[owner].name)
        if self._routes.get(dest) != route:
            if route is None:
                del self._routes[dest]
            else:
                self._routes[dest] = route
            self._changes.routes[dest] = route

    def _render_interface(self, ifname: str) -> None:
        owner = self._ifname_owner(ifname)
        ep = self._weps.get(owner) if owner is not None else None
        state: InterfaceState | None = None
        if ep is not None and ep.state == "active":
            v6 = bool(ep.ipv6_nets) and self.settings.ipv6
            proxy = ((ep.ipv6_gateway,) if v6 and ep.ipv6_gateway
                     and not ipaddress.ip_address(ep.ipv6_gateway).is_link_local else ())
            state = InterfaceState(ifname, ipv4=bool(ep.ipv4_nets) or not v6, ipv6=v6,
                                   mac=ep.mac, proxy_ndp=proxy)
        if self._interfaces.get(ifname) != state:
            if state is None:
                self._interfaces.pop(ifname, None)
            else:
                self._interfaces[ifname] = state
            self._changes.interfaces[ifname] = state

    def _render_host_endpoint(self, key: EpKey) -> None:
        ep = self._heps.get(key)
        old_names = self._ep_chains.pop(key, None)
        new_names = None
        if ep is not None and any(e.name == ep.name and _key_order(k) < _key_order(key)
                                  for k, e in self._heps.items()):
            _log.warning("host endpoint %s: interface %s has another host endpoint", key,
                         ep.name)
            ep = None
        if ep is not None and ep.name is not None:
            spec = EndpointSpec(ep.name, ep.name, tiers=self._tiers_for(key),
                                profile_ids=ep.profile_ids, host_endpoint=True)
            new_names = (from_host_endpoint_chain(ep.name), to_host_endpoint_chain(ep.name))
            for version in self.versions:
                for chain in render_endpoint_chains(spec, version, self.marks):
                    self._set_chain((version, "filter"), chain)
            self._ep_chains[key] = new_names
        if old_names != new_names:
            self._dispatch_dirty = True
            for name in old_names or ():
                if name not in (new_names or ()):
                    for version in self.versions:
                        self._remove_chain((version, "filter"), name)

    def _render_dispatch(self) -> None:
        self._dispatch_dirty = False
        workloads = self._dispatch_map
        hosts: dict[str, tuple[str, str]] = {}
        for key in sorted(self._heps, key=_key_order, reverse=True):
            ep = self._heps[key]
            if ep.name is not None and key in self._ep_chains:
                hosts[ep.name] = self._ep_chains[key]  # the lowest key wins
        chains = self._dispatch.render(workloads) + render_host_dispatch(hosts)
        names = {c.name for c in chains}
        stale = self._dispatch_names - names
        self._dispatch_names = names
        for version in self.versions:
            table = (version, "filter")
            for name in stale:
                self._remove_chain(table, name)
            for chain in chains:
                self._set_chain(table, chain)

    # ==== snapshots =======================================================================

    def desired_state(self) -> DesiredState:
        """Everything the flushes so far have asked for, as one comparable value."""
        return DesiredState(
            chains={t: dict(c) for t, c in self._chains.items()},
            base_jumps={t: dict(j) for t, j in self._jumps.items()},
            ipsets=dict(self._ipsets), routes=dict(self._routes),
            interfaces=dict(self._interfaces),
            neighbours=frozenset().union(*self._ep_neighbours.values()),
            endpoints=dict(self._ep_info))

    @property
    def local_endpoint_count(self) -> int:
        return len(self._ep_chains)
