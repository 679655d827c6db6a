"""Local endpoint rendering: endpoint and dispatch chains, routes, neighbour entries,
interface settings and endpoint infos. Pure.

Owns: this host's workload endpoints and host endpoints (and the local workload
endpoints whose stored data was invalid, with the reason); interface name -> endpoints
(two endpoints claiming one interface: the lowest key wins, whatever the update order);
route destination -> endpoints (likewise); the chains, routes and interface each
endpoint was rendered with; the dispatch map (interface -> its from/to chains) and the
`DispatchRenderer` that turns it into the dispatch trees.

Batching: inputs record and mark endpoints or interface names dirty; `flush()` renders
each dirty endpoint once (its chains, `EndpointInfo`, routes and neighbour entries),
then the routes and interfaces it touched, then the dispatch chains if any endpoint
moved, into the recorder. Routes, neighbours and interface settings exist only for
active endpoints; an inactive one keeps chains that drop everything.

Leaves to others: which tiers apply to an endpoint (asks `tiers_for`, the policy
resolver), the policy/profile chains the endpoint chains jump to
(`felix.calc.active_rules`), chain contents (`felix.rules`), recording
(`felix.calc.recorder`).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence

from felix.calc.recorder import ChangeRecorder
from felix.calc.types import EndpointInfo, EpKey
from felix.dataplane.types import InterfaceState, NeighbourState, RouteState
from felix.rules.dispatch import DispatchRenderer, render_host_dispatch
from felix.rules.names import (
    Marks,
    from_endpoint_chain,
    from_host_endpoint_chain,
    interface_suffix,
    policy_chain,
    profile_chain,
    to_endpoint_chain,
    to_host_endpoint_chain,
)
from felix.rules.policy import EndpointSpec, TierPolicies, render_endpoint_chains
from libcalico import keyspace
from libcalico.model import HostEndpoint, WorkloadEndpoint

_log = logging.getLogger(__name__)


def key_order(key: EpKey) -> str:
    """A total, order-independent ranking of endpoint keys (for tie-breaking)."""
    return repr(key)


def policy_chains(spec: EndpointSpec) -> tuple[str, ...]:
    """The policy and profile chains an endpoint's chains jump to, both directions."""
    names = [policy_chain(t.tier, p, inbound) for t in spec.tiers for p in t.policies
             for inbound in (True, False)]
    names += [profile_chain(p, inbound) for p in spec.profile_ids for inbound in (True, False)]
    return tuple(names)


class EndpointCalculator:
    """See the module docstring. State fields: `_weps`/`_heps` (local endpoints),
    `_invalid` (key -> why its data was rejected), `_ifname_eps`, `_dest_eps` (claims);
    `_ep_chains`, `_ep_routes` (what each endpoint was rendered with), `_chain_owner`
    (which endpoint last rendered each endpoint chain); `_dispatch_map`,
    `_dispatch_owner`, `_ep_dispatch`, `_dispatch_names` (the dispatch trees' inputs and
    last output); `_dirty_eps`, `_dirty_ifnames`, `_dispatch_dirty` (next flush)."""

    def __init__(self, versions: Sequence[int], prefixes: Sequence[str], ipv6: bool,
                 marks: Marks, recorder: ChangeRecorder,
                 tiers_for: Callable[[EpKey], tuple[TierPolicies, ...]]) -> None:
        self.versions = tuple(versions)
        self.prefixes = tuple(prefixes)
        self.ipv6 = ipv6
        self.marks = marks
        self.recorder = recorder
        self.tiers_for = tiers_for
        self._filters = tuple((v, "filter") for v in self.versions)
        self._weps: dict[EpKey, WorkloadEndpoint] = {}
        self._heps: dict[EpKey, HostEndpoint] = {}
        self._invalid: dict[EpKey, str] = {}
        self._ifname_eps: dict[str, set[EpKey]] = {}
        self._dest_eps: dict[str, set[EpKey]] = {}
        self._ep_chains: dict[EpKey, tuple[str, str]] = {}
        self._ep_routes: dict[EpKey, tuple[str, ...]] = {}
        self._chain_owner: dict[str, EpKey] = {}  # endpoint chain -> endpoint that rendered it
        self._dispatch = DispatchRenderer()
        self._dispatch_names: set[str] = set()
        self._dispatch_map: dict[str, tuple[str, str]] = {}  # ifname -> (from, to) chain
        self._dispatch_owner: dict[str, EpKey] = {}  # ifname -> endpoint rendered for it
        self._ep_dispatch: dict[EpKey, str] = {}  # endpoint -> ifname it is dispatched on
        self._dirty_eps: set[EpKey] = set()
        self._dirty_ifnames: set[str] = set()
        self._dispatch_dirty = True

    # ---- inputs ------------------------------------------------------------------------

    def on_workload_endpoint(self, key: EpKey, ep: WorkloadEndpoint | None,
                             error: str | None) -> bool:
        """A local workload endpoint (None: gone, or invalid with `error`); True if the
        endpoint itself changed (its labels/profiles may have)."""
        if error is not None:
            self._invalid[key] = error
        else:
            self._invalid.pop(key, None)
        old = self._weps.get(key)
        if old == ep and old is not None:
            return False
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
        self._dirty_eps.add(key)
        return True

    def on_host_endpoint(self, key: EpKey, ep: HostEndpoint | None) -> bool:
        """A local host endpoint with an interface name (None: gone); True if it changed."""
        old = self._heps.get(key)
        if old == ep:
            return False
        if ep is None:
            self._heps.pop(key, None)
        else:
            self._heps[key] = ep
        self._dirty_eps.add(key)
        # Host endpoints claiming the same interface: the lowest key wins, so the others
        # must be looked at again (host endpoints are few: a scan is fine).
        names = {e.name for e in (old, ep) if e is not None}
        self._dirty_eps.update(k for k, e in self._heps.items() if e.name in names)
        return True

    def mark_dirty(self, key: EpKey) -> None:
        """Render this endpoint again (its tiers changed)."""
        self._dirty_eps.add(key)

    # ---- flush -------------------------------------------------------------------------

    def flush(self) -> None:
        dirty_eps, self._dirty_eps = self._dirty_eps, set()
        dirty_ifnames, self._dirty_ifnames = self._dirty_ifnames, set()
        for ifname in dirty_ifnames:
            dirty_eps.update(self._ifname_eps.get(ifname, ()))
        dirty_dests: set[str] = set()
        for key in dirty_eps:
            if isinstance(key, keyspace.HostEndpointKey):
                self._render_host_endpoint(key)
            else:
                self._render_workload_endpoint(key, dirty_dests)
        for dest in dirty_dests:
            self._render_route(dest)
        for ifname in dirty_ifnames:
            self._render_interface(ifname)
        if self._dispatch_dirty:
            self._render_dispatch()

    @property
    def local_endpoint_count(self) -> int:
        """Local endpoints (workload and host) whose chains are rendered."""
        return len(self._ep_chains)

    # ---- workload endpoints ------------------------------------------------------------

    def _ifname_owner(self, ifname: str) -> EpKey | None:
        keys = self._ifname_eps.get(ifname)
        if not keys:
            return None
        if len(keys) == 1:
            return next(iter(keys))
        return min(keys, key=key_order)

    def _render_workload_endpoint(self, key: EpKey, dirty_dests: set[str]) -> None:
        ep = self._weps.get(key)
        owner = self._ifname_owner(ep.name) if ep is not None else None
        clash = False
        if ep is not None and owner != key:
            clash = True
            _log.warning("endpoint %s uses interface %s, already used by %s; not programmed",
                         key, ep.name, owner)
            self.recorder.set_endpoint_info(
                key, EndpointInfo(ep.name, f"interface {ep.name} is used by another endpoint"))
            ep = None
        # chains
        old_names = self._ep_chains.pop(key, None)
        new_names: tuple[str, str] | None = None
        if ep is not None:
            suffix = interface_suffix(ep.name, self.prefixes)
            new_names = (from_endpoint_chain(suffix), to_endpoint_chain(suffix))
            active = ep.state == "active"
            spec = EndpointSpec(ep.name, suffix, ep.ipv4_nets if active else (),
                                ep.ipv6_nets if active else (), ep.mac, self.tiers_for(key),
                                ep.profile_ids)
            for version in self.versions:
                for chain in render_endpoint_chains(spec, version, self.marks):
                    self.recorder.set_chain((version, "filter"), chain)
            self._set_ep_chains(key, new_names)
            self.recorder.set_endpoint_info(key, EndpointInfo(
                ep.name, None if active else "inactive", (*new_names, *policy_chains(spec))))
        elif not clash:
            invalid = self._invalid.get(key)
            self.recorder.set_endpoint_info(
                key, EndpointInfo(None, invalid) if invalid is not None else None)
        self._update_dispatch(key, ep.name if ep is not None else None, new_names, old_names)
        self._remove_stale_chains(key, old_names, new_names)
        # routes and neighbour entries (only for active endpoints)
        if ep is not None and ep.state != "active":
            ep = None
        old_dests = self._ep_routes.pop(key, ())
        new_dests: tuple[str, ...] = ()
        neighbours: frozenset[NeighbourState] = frozenset()
        if ep is not None:
            new_dests = ep.ipv4_nets + (ep.ipv6_nets if self.ipv6 else ())
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
        self.recorder.set_neighbours(key, neighbours)

    def _update_dispatch(self, key: EpKey, ifname: str | None,
                         new_names: tuple[str, str] | None,
                         old_names: tuple[str, str] | None) -> None:
        old_if = self._ep_dispatch.pop(key, None)
        if old_if is not None and self._dispatch_owner.get(old_if) == key:
            del self._dispatch_owner[old_if]
            del self._dispatch_map[old_if]
            self._dispatch_dirty = True
        if ifname is not None and new_names is not None:
            self._dispatch_owner[ifname] = key
            self._dispatch_map[ifname] = new_names
            self._ep_dispatch[key] = ifname
            if old_if != ifname or old_names != new_names:
                self._dispatch_dirty = True

    def _set_ep_chains(self, key: EpKey, names: tuple[str, str]) -> None:
        self._ep_chains[key] = names
        for name in names:
            self._chain_owner[name] = key

    def _remove_stale_chains(self, key: EpKey, old_names: tuple[str, str] | None,
                             new_names: tuple[str, str] | None) -> None:
        """Remove the chains `key` rendered before and no longer renders - unless another
        endpoint has rendered the same names since (it took the interface over)."""
        if old_names == new_names:
            return
        for name in old_names or ():
            if name not in (new_names or ()) and self._chain_owner.get(name) == key:
                del self._chain_owner[name]
                for table in self._filters:
                    self.recorder.remove_chain(table, name)

    def _render_route(self, dest: str) -> None:
        """The route for `dest` goes to the interface of its owner (lowest key)."""
        users = self._dest_eps.get(dest)
        route = None
        if users:
            owner = min(users, key=key_order)
            route = RouteState(dest, self._weps[owner].name)
        self.recorder.set_route(dest, route)

    def _render_interface(self, ifname: str) -> None:
        owner = self._ifname_owner(ifname)
        ep = self._weps.get(owner) if owner is not None else None
        state: InterfaceState | None = None
        if ep is not None and ep.state == "active":
            v6 = bool(ep.ipv6_nets) and self.ipv6
            proxy = ((ep.ipv6_gateway,) if v6 and ep.ipv6_gateway
                     and not ipaddress.ip_address(ep.ipv6_gateway).is_link_local else ())
            state = InterfaceState(ifname, ipv4=bool(ep.ipv4_nets) or not v6, ipv6=v6,
                                   mac=ep.mac, proxy_ndp=proxy)
        self.recorder.set_interface(ifname, state)

    # ---- host endpoints ----------------------------------------------------------------

    def _render_host_endpoint(self, key: EpKey) -> None:
        ep = self._heps.get(key)
        old_names = self._ep_chains.pop(key, None)
        new_names = None
        if ep is not None and any(e.name == ep.name and key_order(k) < key_order(key)
                                  for k, e in self._heps.items()):
            _log.warning("host endpoint %s: interface %s has another host endpoint", key,
                         ep.name)
            ep = None
        if ep is not None and ep.name is not None:
            spec = EndpointSpec(ep.name, ep.name, tiers=self.tiers_for(key),
                                profile_ids=ep.profile_ids, host_endpoint=True)
            new_names = (from_host_endpoint_chain(ep.name), to_host_endpoint_chain(ep.name))
            for version in self.versions:
                for chain in render_endpoint_chains(spec, version, self.marks):
                    self.recorder.set_chain((version, "filter"), chain)
            self._set_ep_chains(key, new_names)
        if old_names != new_names:
            self._dispatch_dirty = True
        self._remove_stale_chains(key, old_names, new_names)

    # ---- dispatch ----------------------------------------------------------------------

    def _render_dispatch(self) -> None:
        self._dispatch_dirty = False
        hosts: dict[str, tuple[str, str]] = {}
        for key in sorted(self._heps, key=key_order, reverse=True):
            ep = self._heps[key]
            if ep.name is not None and key in self._ep_chains:
                hosts[ep.name] = self._ep_chains[key]  # the lowest key wins
        chains = self._dispatch.render(self._dispatch_map) + render_host_dispatch(hosts)
        names = {c.name for c in chains}
        stale = self._dispatch_names - names
        self._dispatch_names = names
        for table in self._filters:
            for name in stale:
                self.recorder.remove_chain(table, name)
        self.recorder.set_chains(self._filters, chains)
