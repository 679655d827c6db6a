"""Change recording: the desired dataplane as the calculation last set it, and the delta
since the last flush. Pure.

Owns, as the calculation parts set them: the felix chains and base jumps of every
table, the ipsets, routes (local workloads' and, from the tunnel part, remote blocks'; a
destination both want gets the local workload's route), interface settings, neighbour
entries (per local endpoint, and the tunnel part's), tunnel devices, VXLAN FDB entries
and each local endpoint's `EndpointInfo`; and the `Changes` accumulated since the last
`take()`. Every setter compares with what it holds and records only a real difference
(a chain that comes back as the very same object, as unchanged dispatch subtrees do, is
skipped by an identity check before any comparison). `take()` hands the batch over -
the graph's `flush()` returns it to the driver, which gives it to the dataplane owners -
and starts a new one. `desired_state()` is the full snapshot that tests compare.

This is felix's counterpart of Go Felix's event sequencer: the parts may set things in
any order during a flush; the driver sees one consistent batch.

Leaves to others: what to set (`felix.calc.active_rules`, `felix.calc.endpoints`,
`felix.calc.graph`), applying (`felix.dataplane.apply`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from felix.calc.types import Changes, DesiredState, EndpointInfo, EpKey, TableKey
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


class ChangeRecorder:
    """Desired state plus the pending delta. State fields: `_chains`/`_jumps` per table,
    `_ipsets` by name (and `_ipset_members`, updated in place by deltas), `_routes` by
    destination (the effective route: `_local_routes`
    first, else `_remote_routes`), `_interfaces` by name, `_neighbours` and `_ep_info` by
    endpoint key (or the tunnel part's key), `_devices` by name, `_fdb` (desired);
    `_changes` (the delta to hand over next); `_neigh_dirty` (the union of neighbour
    entries changed since the last take)."""

    def __init__(self, tables: Sequence[TableKey]) -> None:
        self.tables = tuple(tables)
        self._chains: dict[TableKey, dict[str, Chain]] = {t: {} for t in self.tables}
        self._jumps: dict[TableKey, dict[str, tuple[Rule, ...]]] = {t: {} for t in self.tables}
        self._ipsets: dict[str, IPSetState] = {}  # name, version, type (members apart)
        self._ipset_members: dict[str, set[str]] = {}  # name -> its members now
        self._routes: dict[str, RouteState] = {}
        self._local_routes: dict[str, RouteState] = {}
        self._remote_routes: dict[str, RouteState] = {}
        self._devices: dict[str, TunnelDevice] = {}
        self._fdb: frozenset[FDBState] = frozenset()
        self._interfaces: dict[str, InterfaceState] = {}
        self._neighbours: dict[EpKey, frozenset[NeighbourState]] = {}
        self._neigh_dirty = False
        self._ep_info: dict[EpKey, EndpointInfo] = {}
        self._changes = Changes()

    # ---- setters (called by the calculation parts during a flush) -----------------------

    def set_chain(self, table: TableKey, chain: Chain) -> None:
        chains = self._chains[table]
        current = chains.get(chain.name)
        if current is not chain and current != chain:
            chains[chain.name] = chain
            self._changes.chains.setdefault(table, {})[chain.name] = chain

    def set_chains(self, tables: Iterable[TableKey], chains: Iterable[Chain]) -> None:
        """The same chains in several tables (the filter table of each IP version)."""
        chains = tuple(chains)
        for table in tables:
            for chain in chains:
                self.set_chain(table, chain)

    def remove_chain(self, table: TableKey, name: str) -> None:
        if self._chains[table].pop(name, None) is not None:
            self._changes.chains.setdefault(table, {})[name] = None

    def set_base_jumps(self, table: TableKey, jumps: dict[str, tuple[Rule, ...]]) -> None:
        """The felix rules at the top of the kernel chains of `table` (all of them)."""
        self._jumps[table] = dict(jumps)
        self._changes.base_jumps[table] = dict(jumps)

    def set_ipset(self, state: IPSetState) -> None:
        """The whole set: handed over whole (when it differs)."""
        old = self._ipsets.get(state.name)
        if (old is not None and (old.version, old.set_type) == (state.version, state.set_type)
                and self._ipset_members[state.name] == state.members):
            return
        self._ipsets[state.name] = replace(state, members=frozenset())  # members: below
        self._ipset_members[state.name] = set(state.members)
        self._changes.ipsets.setdefault(state.version, {})[state.name] = state
        self._changes.ipset_deltas.get(state.version, {}).pop(state.name, None)

    def update_ipset(self, name: str, version: int, added: Iterable[str],
                     removed: Iterable[str]) -> None:
        """Members that joined and left a set already set: handed over as a delta, at a
        cost proportional to the change, not to the set."""
        members = self._ipset_members[name]
        joined = {m for m in added if m not in members}
        left = {m for m in removed if m in members}
        if not joined and not left:
            return
        members.update(joined)
        members.difference_update(left)
        pending = self._changes.ipsets.get(version, {})
        if pending.get(name) is not None:  # handed over whole in this batch already
            pending[name] = replace(self._ipsets[name], members=frozenset(members))
            return
        deltas = self._changes.ipset_deltas.setdefault(version, {})
        was_added, was_removed = deltas.get(name, (frozenset(), frozenset()))
        # Relative to the last hand-over: coming back cancels a removal, going again
        # cancels an addition.
        deltas[name] = (frozenset((was_added - left) | (joined - was_removed)),
                        frozenset((was_removed - joined) | (left - was_added)))

    def remove_ipset(self, name: str, version: int) -> None:
        if self._ipsets.pop(name, None) is not None:
            del self._ipset_members[name]
            self._changes.ipsets.setdefault(version, {})[name] = None
            self._changes.ipset_deltas.get(version, {}).pop(name, None)

    def set_route(self, dest: str, route: RouteState | None) -> None:
        """A local workload's route (the endpoint calculator's)."""
        self._set_route(self._local_routes, dest, route)

    def set_remote_route(self, dest: str, route: RouteState | None) -> None:
        """A route to a remote block or workload of an encapsulated pool (or a local
        block's blackhole): the tunnel part's. A local workload's route to the same
        destination wins."""
        self._set_route(self._remote_routes, dest, route)

    def _set_route(self, table: dict[str, RouteState], dest: str,
                   route: RouteState | None) -> None:
        if table.get(dest) == route:
            return
        if route is None:
            del table[dest]
        else:
            table[dest] = route
        effective = self._local_routes.get(dest) or self._remote_routes.get(dest)
        if self._routes.get(dest) != effective:
            if effective is None:
                del self._routes[dest]
            else:
                self._routes[dest] = effective
            self._changes.routes[dest] = effective

    def set_device(self, name: str, device: TunnelDevice | None) -> None:
        if self._devices.get(name) != device:
            if device is None:
                del self._devices[name]
            else:
                self._devices[name] = device
            self._changes.devices[name] = device

    def set_fdb(self, entries: frozenset[FDBState]) -> None:
        """The whole set of VXLAN FDB entries."""
        if entries != self._fdb:
            self._fdb = entries
            self._changes.fdb = entries

    def set_interface(self, ifname: str, state: InterfaceState | None) -> None:
        if self._interfaces.get(ifname) != state:
            if state is None:
                self._interfaces.pop(ifname, None)
            else:
                self._interfaces[ifname] = state
            self._changes.interfaces[ifname] = state

    def set_neighbours(self, key: EpKey, neighbours: frozenset[NeighbourState]) -> None:
        """One endpoint's neighbour entries (the owner gets the union of all)."""
        if self._neighbours.get(key, frozenset()) != neighbours:
            self._neigh_dirty = True
            if neighbours:
                self._neighbours[key] = neighbours
            else:
                self._neighbours.pop(key, None)

    def set_endpoint_info(self, key: EpKey, info: EndpointInfo | None) -> None:
        if self._ep_info.get(key) != info:
            if info is None:
                self._ep_info.pop(key, None)
            else:
                self._ep_info[key] = info
            self._changes.endpoints[key] = info

    # ---- hand-over --------------------------------------------------------------------

    def take(self) -> Changes:
        """The changes since the last take; the next batch starts empty."""
        if self._neigh_dirty:
            self._neigh_dirty = False
            self._changes.neighbours = self._all_neighbours()
        changes, self._changes = self._changes, Changes()
        return changes

    def _all_neighbours(self) -> frozenset[NeighbourState]:
        return frozenset().union(*self._neighbours.values())

    def desired_state(self) -> DesiredState:
        """Everything the flushes so far have asked for, as one comparable value."""
        return DesiredState(
            chains={t: dict(c) for t, c in self._chains.items()},
            base_jumps={t: dict(j) for t, j in self._jumps.items()},
            ipsets={n: IPSetState(n, s.version, s.set_type,
                                  frozenset(self._ipset_members[n]))
                    for n, s in self._ipsets.items()}, routes=dict(self._routes),
            interfaces=dict(self._interfaces), neighbours=self._all_neighbours(),
            endpoints=dict(self._ep_info), devices=dict(self._devices), fdb=self._fdb)
