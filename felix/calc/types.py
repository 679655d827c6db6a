"""The values felix's calculation parts exchange and hand to the driver. Pure.

Owns: the key aliases the parts share (`TableKey`, `EpKey`, `PolicyId`, `Source`),
`EndpointInfo` (a local workload endpoint as the status decision sees it), `BlockInfo`
(an allocation block as the tunnel part sees it), `Changes`
(what one flush hands to the dataplane: the delta since the previous flush) and
`DesiredState` (a full snapshot, which tests compare).

Leaves to others: computing them (the other `felix.calc` modules) and applying them
(`felix.dataplane.apply`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from felix.dataplane.types import (
    Chain,
    FDBState,
    InterfaceState,
    IPSetState,
    NeighbourState,
    RouteState,
    Rule,
    TunnelDevice,
)

TableKey = tuple[int, str]  # (IP version, table)
PolicyId = tuple[str, str]  # (tier, policy)
EpKey = Any  # keyspace.WorkloadEndpointKey | keyspace.HostEndpointKey
Source = tuple[str, Any]  # ("profile", id) | ("policy", PolicyId)


@dataclass(frozen=True)
class EndpointInfo:
    """A local workload endpoint as the status decision sees it.

    `ifname`: its interface (None when its data was invalid); `error`: why it is not
    programmed ("inactive", invalid data, a name clash), None when it should be;
    `chains`: the felix filter chains its traffic depends on, its own from/to chains
    first, then the policy and profile chains they jump to (empty when not programmed).
    """

    ifname: str | None
    error: str | None = None
    chains: tuple[str, ...] = ()


@dataclass(frozen=True)
class BlockInfo:
    """An allocation block as the tunnel part needs it: the host it is affine to (None:
    nobody's) and its addresses held by other hosts, as ("a.b.c.d/32", host) pairs."""

    host: str | None
    borrowed: tuple[tuple[str, str], ...] = ()


@dataclass
class Changes:
    """What changed since the last flush. None values mean "remove"."""

    chains: dict[TableKey, dict[str, Chain | None]] = field(default_factory=dict)
    base_jumps: dict[TableKey, dict[str, tuple[Rule, ...]]] = field(default_factory=dict)
    ipsets: dict[int, dict[str, IPSetState | None]] = field(default_factory=dict)
    # sets handed over by their change: version -> name -> (members added, removed)
    ipset_deltas: dict[int, dict[str, tuple[frozenset[str], frozenset[str]]]] = field(
        default_factory=dict)
    routes: dict[str, RouteState | None] = field(default_factory=dict)
    interfaces: dict[str, InterfaceState | None] = field(default_factory=dict)
    neighbours: frozenset[NeighbourState] | None = None  # the full set, when it changed
    endpoints: dict[Any, EndpointInfo | None] = field(default_factory=dict)
    devices: dict[str, TunnelDevice | None] = field(default_factory=dict)
    fdb: frozenset[FDBState] | None = None  # the full set, when it changed

    def __bool__(self) -> bool:
        return bool(any(self.chains.values()) or any(self.base_jumps.values())
                    or any(self.ipsets.values()) or any(self.ipset_deltas.values())
                    or self.routes or self.interfaces
                    or self.neighbours is not None or self.endpoints or self.devices
                    or self.fdb is not None)


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
    devices: Mapping[str, TunnelDevice] = field(default_factory=dict)
    fdb: frozenset[FDBState] = frozenset()
