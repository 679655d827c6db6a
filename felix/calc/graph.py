"""The calculation graph: datastore updates in, desired dataplane changes out. Pure.

Owns the wiring of felix's calculation parts (after Go Felix's `calc/`), each a module
with one job:
  - `policy_resolver.PolicyResolver`: which tiers, policies and profiles apply to which
    local endpoint, and which profiles/policies are in use;
  - `active_rules.ActiveRules`: the chains of the profiles and policies in use, and which
    tag/selector sets they refer to (reference counts -> active ipsets);
  - `membership.MembershipIndex`: ipset members from every endpoint in the cluster;
  - `endpoints.EndpointCalculator`: local endpoints -> endpoint and dispatch chains,
    routes, neighbour entries, interface settings, endpoint infos;
  - `tunnels.TunnelCalculator`: encapsulated pools, allocation blocks and nodes ->
    tunnel devices, routes to remote blocks, VXLAN neighbour and FDB entries, the
    all-hosts ipset;
  - `recorder.ChangeRecorder`: the desired state so far and the delta since the last
    flush.
This module routes each update to the parts that need it (`on_update`), renders the
few things too small for a part of their own (the static chains and base jumps from
the settings and the pools' encapsulations, and the pools' nat-outgoing ipsets) and
fixes the order of `flush()`:
static chains, rule sources and ipsets, endpoints (routes, interfaces, dispatch), pools,
tunnels; then the recorder hands over one `Changes`. `on_update()` only records and marks dirty;
the result depends only on the set of (key, value) pairs seen last, never on their
order or on how updates were batched between flushes.

Leaves to others: the parts' own work (above), rendering details (`felix.rules`), key
parsing and validation (`felix.calc.parse`), applying (`felix.dataplane.apply`, driven
by `felix.driver`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from felix.calc.active_rules import ActiveRules
from felix.calc.endpoints import EndpointCalculator
from felix.calc.membership import EndpointData, MembershipIndex
from felix.calc.parse import parse_update
from felix.calc.policy_resolver import PolicyResolver
from felix.calc.recorder import ChangeRecorder
from felix.calc.tunnels import TunnelCalculator, TunnelSettings
from felix.calc.types import Changes, DesiredState, TableKey
from felix.dataplane.types import IPSetState
from felix.rules.names import IPSET_ALL_POOLS, IPSET_MASQ_POOLS, Marks
from felix.rules.static import render_base_jumps, render_filter_chains, render_nat_chains
from libcalico import keyspace
from libcalico.model import HostEndpoint, IPPool, WorkloadEndpoint
from libcalico.model.network import NODE_KEYS
from libcalico.model.tunnel import DEFAULT_IPIP_MTU, DEFAULT_VXLAN_MTU, VXLAN_PORT, VXLAN_VNI

NODE_ATTRS = {key: attr for attr, key in NODE_KEYS.items()}

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalcSettings:
    """The configuration values the calculation depends on."""

    hostname: str
    prefixes: tuple[str, ...] = ("cali",)
    endpoint_to_host: str = "DROP"
    mark_mask: int = 0xFF000000
    failsafe_in: tuple[tuple[str, int], ...] = (("tcp", 22), ("udp", 68), ("tcp", 179))
    failsafe_out: tuple[tuple[str, int], ...] = (
        ("udp", 53), ("udp", 67), ("tcp", 179), ("tcp", 2379), ("tcp", 2380), ("tcp", 4001),
        ("tcp", 7001))
    ipv6: bool = True
    vxlan_mtu: int = DEFAULT_VXLAN_MTU
    vxlan_vni: int = VXLAN_VNI
    vxlan_port: int = VXLAN_PORT
    ipip_mtu: int = DEFAULT_IPIP_MTU

    @classmethod
    def from_config(cls, config: Any, ipv6: bool) -> CalcSettings:
        return cls(config.FelixHostname, tuple(config.InterfacePrefix),
                   config.DefaultEndpointToHostAction, config.IptablesMarkMask,
                   tuple(config.FailsafeInboundHostPorts),
                   tuple(config.FailsafeOutboundHostPorts), ipv6, config.VXLANMTU,
                   config.VXLANVNI, config.VXLANPort, config.IpInIpMtu)

    @property
    def tunnels(self) -> TunnelSettings:
        return TunnelSettings(self.hostname, self.vxlan_mtu, self.vxlan_vni, self.vxlan_port,
                              self.ipip_mtu)


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
        self.recorder = ChangeRecorder(self.tables)
        self.membership = MembershipIndex()
        self.active_rules = ActiveRules(self.versions, self.marks, self.recorder,
                                        self.membership)
        self.endpoints = EndpointCalculator(self.versions, settings.prefixes, settings.ipv6,
                                            self.marks, self.recorder,
                                            tiers_for=lambda key: self.resolver.tiers_for(key))
        self.resolver = PolicyResolver(on_active=self.active_rules.set_active,
                                       on_endpoint_dirty=self.endpoints.mark_dirty)
        self.tunnels = TunnelCalculator(settings.tunnels, self.recorder)
        self._pools: dict[str, IPPool] = {}
        self._pools_dirty = True
        self._static_dirty = True
        self._encaps: frozenset[str] = frozenset()  # those the static chains let through

    # ==== inputs ==========================================================================

    def on_update(self, key: str, value: str | None) -> None:
        parsed = parse_update(key, value)
        if parsed is None:
            return
        k, v = parsed.key, parsed.value
        if isinstance(k, keyspace.WorkloadEndpointKey):
            self._on_workload_endpoint(k, v, parsed.error)
        elif isinstance(k, keyspace.HostEndpointKey):
            self._on_host_endpoint(k, v)
        elif isinstance(k, keyspace.ProfileKey):
            self._on_profile_part(k.name, k.part, v)
        elif isinstance(k, keyspace.TierKey):
            self.resolver.on_tier(k.tier, v)
        elif isinstance(k, keyspace.PolicyKey):
            self.resolver.on_policy((k.tier, k.name), v)
            self.active_rules.on_policy((k.tier, k.name), v)
        elif isinstance(k, keyspace.PoolKey):
            self._on_pool(k.cidr, v)
            self.tunnels.on_pool(k.cidr, v)
        elif isinstance(k, keyspace.BlockKey):
            self.tunnels.on_block(k.cidr, v)
        elif isinstance(k, keyspace.BGPHostKey):
            self.tunnels.on_node_field(k.hostname, NODE_ATTRS[k.name], v)

    def on_updates(self, updates: Iterable[tuple[str, str | None]]) -> None:
        for key, value in updates:
            self.on_update(key, value)

    def _on_workload_endpoint(self, key: keyspace.WorkloadEndpointKey,
                              ep: WorkloadEndpoint | None, error: str | None) -> None:
        data = None
        if ep is not None:
            data = EndpointData(_plain(ep.ipv4_nets), _plain(ep.ipv6_nets), ep.labels,
                                ep.profile_ids)
        self.membership.on_endpoint(key, data)
        if key.hostname != self.settings.hostname:
            return
        if self.endpoints.on_workload_endpoint(key, ep, error):
            self.resolver.on_endpoint(key, ep.labels if ep is not None else None,
                                      ep.profile_ids if ep is not None else ())

    def _on_host_endpoint(self, key: keyspace.HostEndpointKey, ep: HostEndpoint | None) -> None:
        data = None
        if ep is not None:
            data = EndpointData(ep.expected_ipv4_addrs, ep.expected_ipv6_addrs, ep.labels,
                                ep.profile_ids)
        self.membership.on_endpoint(key, data)
        if key.hostname != self.settings.hostname:
            return
        if ep is not None and ep.name is None:
            _log.info("host endpoint %s has no interface name; only its addresses are used",
                      key.endpoint_id)
            ep = None
        if self.endpoints.on_host_endpoint(key, ep):
            self.resolver.on_endpoint(key, ep.labels if ep is not None else None,
                                      ep.profile_ids if ep is not None else ())

    def _on_profile_part(self, name: str, part: str, value: Any) -> None:
        if part == "rules":
            self.active_rules.on_profile_rules(name, value)
        elif part == "tags":
            self.membership.on_profile_tags(name, tuple(value or ()))
        else:
            labels = value or {}
            self.membership.on_profile_labels(name, labels)
            self.resolver.on_profile_labels(name, labels)

    def _on_pool(self, cidr: str, pool: IPPool | None) -> None:
        if pool is None:
            if self._pools.pop(cidr, None) is not None:
                self._pools_dirty = True
        elif self._pools.get(cidr) != pool:
            self._pools[cidr] = pool
            self._pools_dirty = True

    # ==== flush ===========================================================================

    def flush(self) -> Changes:
        """Render everything dirty; return what changed since the last flush."""
        encaps = self.tunnels.encapsulations
        if encaps != self._encaps:
            self._encaps = encaps
            self._static_dirty = True
        if self._static_dirty:
            self._render_static()
        self.active_rules.flush()
        self.endpoints.flush()
        if self._pools_dirty:
            self._render_pools()
        self.tunnels.flush()
        return self.recorder.take()

    def _render_static(self) -> None:
        self._static_dirty = False
        s = self.settings
        for version in self.versions:
            table = (version, "filter")
            for chain in render_filter_chains(version, s.prefixes, s.endpoint_to_host,
                                              self.marks, s.failsafe_in, s.failsafe_out,
                                              self._encaps, s.vxlan_port):
                self.recorder.set_chain(table, chain)
            self.recorder.set_base_jumps(table, render_base_jumps("filter"))
        for chain in render_nat_chains():
            self.recorder.set_chain((4, "nat"), chain)
        self.recorder.set_base_jumps((4, "nat"), render_base_jumps("nat"))

    def _render_pools(self) -> None:
        self._pools_dirty = False
        v4 = [p for p in self._pools.values() if p.version == 4]
        self.recorder.set_ipset(IPSetState(IPSET_MASQ_POOLS, 4, "hash:net",
                                           frozenset(p.cidr for p in v4 if p.nat_outgoing)))
        self.recorder.set_ipset(IPSetState(IPSET_ALL_POOLS, 4, "hash:net",
                                           frozenset(p.cidr for p in v4)))

    # ==== snapshots =======================================================================

    def desired_state(self) -> DesiredState:
        """Everything the flushes so far have asked for, as one comparable value."""
        return self.recorder.desired_state()

    @property
    def local_endpoint_count(self) -> int:
        return self.endpoints.local_endpoint_count
