"""The set of dataplane owners and the one fixed order in which they are applied.

Owns `Owners`: one owner per kernel table - `IPSets` per IP version, `IptablesTable` per
(IP version, table), `Tunnels` (tunnel devices and VXLAN FDB entries), `Routes` (routes
and neighbour entries), `Interfaces` (sysctls and proxy NDP) - plus the nf_tables
generation tracker. `take(changes)` hands one calculated batch to the owners (no I/O);
`apply()` then applies them in this order, as Go Felix's `int_dataplane` does:

    1. ipsets (create/update), per IP version
    2. tunnel devices and their FDB entries, then routes and neighbour entries (a
       device the tunnel owner (re)created has its routes and neighbours rewritten:
       the kernel dropped them with the old one), then interface settings
    3. iptables: filter v4, filter v6, nat v4
    4. ipset deletions, per IP version

so chains never refer to a missing set (a version whose ipset update failed does not
get its iptables applied this time: the tables stay as they were) and sets are destroyed
only once no chain uses them (skipped for a version whose iptables failed or was
skipped). Every step runs even when an earlier one failed (other than the skips above);
each failure is logged, counted in `felix_errors_total` and returned by `apply()` as
step -> error.

After an apply, the owners' per-item failures answer which endpoints are not programmed:
`endpoint_failure(ifname, chains)` gives the reason when the endpoint's routes or
interface settings failed, or when one of its filter chains - or the dispatch entry that
leads to them - is not in the kernel as desired because its table failed or was skipped.
An endpoint whose old chains are still in the kernel and still right is not failed by
somebody else's bad chain in the same restore.

Leaves to others: what the owners hold (`felix.calc` via the driver), how each owner
writes (its own module), when to apply and what status to report (`felix.driver`,
`felix.endpoint_status`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from felix.dataplane.cmd import CommandFailed, CommandRunner, DataplaneError
from felix.dataplane.interfaces import Interfaces
from felix.dataplane.ipsets import IPSets
from felix.dataplane.iptables import IptablesTable
from felix.dataplane.nftgen import RulesetGeneration, iptables_is_nft
from felix.dataplane.routes import Routes
from felix.dataplane.tunnels import Tunnels
from felix.rules.dispatch import dispatch_target, is_workload_dispatch_chain
from felix.rules.names import CHAIN_FROM_ENDPOINT, CHAIN_TO_ENDPOINT
from libcalico.model.tunnel import VXLAN_INTERFACE

if TYPE_CHECKING:  # the shapes only: nothing here runs calc, config or metrics code
    from felix.calc.types import Changes, TableKey
    from felix.config import Config
    from felix.health import Metrics

_log = logging.getLogger(__name__)

MAX_REASON = 200  # characters of an error kept for an endpoint's status


def short(text: str) -> str:
    """One line of at most MAX_REASON characters."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_REASON else line[:MAX_REASON - 3] + "..."


@dataclass
class Owners:
    """The dataplane owners felix applies, one per kernel table (see the module docstring).

    What the last apply left unprogrammed, computed once per apply: `table_failures`
    (filter table -> why it failed or was skipped), `_unprogrammed` (that table's desired
    chains not in the kernel as desired), `_dispatch_broken` (failed tables with an
    unprogrammed dispatch chain), `_iface_failures` (interface -> why its routes or
    settings failed)."""

    ipsets: dict[int, IPSets]
    tables: dict[TableKey, IptablesTable]
    routes: Routes
    interfaces: Interfaces
    generation: RulesetGeneration = field(
        default_factory=lambda: RulesetGeneration(None, enabled=False))
    tunnels: Tunnels | None = None  # None: no tunnel owner (tests of the others)
    table_failures: dict[TableKey, str] = field(default_factory=dict, init=False)
    _unprogrammed: dict[TableKey, frozenset[str]] = field(default_factory=dict, init=False,
                                                          repr=False)
    _dispatch_broken: set[TableKey] = field(default_factory=set, init=False, repr=False)
    _iface_failures: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def create(cls, config: Config, versions: Sequence[int],
               netns: str | None = None) -> Owners:
        runner = CommandRunner(netns, lock_wait=config.IptablesLockTimeoutSecs)
        tables = {(v, "filter"): IptablesTable(v, "filter", runner) for v in versions}
        tables[(4, "nat")] = IptablesTable(4, "nat", runner)
        try:
            nft = iptables_is_nft(runner.run(["iptables", "-V"]))
        except CommandFailed:
            nft = False
        # Neighbour entries felix owns: on workload interfaces and on vxlan.calico.
        prefixes = (*config.InterfacePrefix, VXLAN_INTERFACE)
        return cls({v: IPSets(v, runner, max_size=config.MaxIpsetSize) for v in versions},
                   tables, Routes(netns, iface_prefixes=prefixes),
                   Interfaces(netns), RulesetGeneration(netns, enabled=nft), Tunnels(netns))

    def close(self) -> None:
        self.routes.close()
        self.interfaces.close()
        if self.tunnels is not None:
            self.tunnels.close()

    # ---- desired state ----------------------------------------------------------------

    def take(self, changes: Changes) -> None:
        """Hand the calculated changes to the owners (no I/O)."""
        for version, sets in changes.ipsets.items():
            for name, state in sets.items():
                if state is None:
                    self.ipsets[version].remove_ipset(name)
                else:
                    self.ipsets[version].set_ipset(state)
        for version, deltas in changes.ipset_deltas.items():
            for name, (added, removed) in deltas.items():
                self.ipsets[version].update_members(name, added, removed)
        for table, chains in changes.chains.items():
            for name, chain in chains.items():
                if chain is None:
                    self.tables[table].remove_chain(name)
                else:
                    self.tables[table].set_chain(chain)
        for table, jumps in changes.base_jumps.items():
            for kernel_chain, rules in jumps.items():
                self.tables[table].set_base_jumps(kernel_chain, rules)
        for dest, route in changes.routes.items():
            if route is None:
                self.routes.remove_route(dest)
            else:
                self.routes.set_route(route)
        if changes.neighbours is not None:
            self.routes.set_neighbours(changes.neighbours)
        for ifname, iface in changes.interfaces.items():
            if iface is None:
                self.interfaces.remove_interface(ifname)
            else:
                self.interfaces.set_interface(iface)
        if self.tunnels is not None:
            for name, device in changes.devices.items():
                if device is None:
                    self.tunnels.remove_device(name)
                else:
                    self.tunnels.set_device(device)
            if changes.fdb is not None:
                self.tunnels.set_fdb(changes.fdb)

    def on_interface_update(self, ifname: str) -> None:
        """An interface appeared, changed or vanished: look at its routes and settings."""
        if self.tunnels is not None:
            self.tunnels.on_interface_update(ifname)
        self.routes.on_interface_update(ifname)
        self.interfaces.on_interface_update(ifname)

    def mark_resync(self) -> None:
        """The periodic refresh: read every table back at the next apply, except the
        iptables tables when the nf_tables generation shows nobody changed them."""
        for s in self.ipsets.values():
            s.mark_resync()
        if self.generation.unchanged():
            _log.debug("nf_tables generation unchanged: iptables need no read-back")
        else:
            for t in self.tables.values():
                t.mark_resync()
        self.routes.mark_resync()
        self.interfaces.mark_resync()
        if self.tunnels is not None:
            self.tunnels.mark_resync()

    # ---- apply ------------------------------------------------------------------------

    def apply(self, metrics: Metrics | None = None) -> dict[str, str]:
        """Apply in the fixed order; return step -> error for the steps that failed."""
        failed: dict[str, str] = {}

        def step(name: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except (DataplaneError, OSError) as exc:  # OSError: rtnl.codec.NetlinkError too
                _log.error("apply %s failed: %s", name, exc)
                failed[name] = short(f"{name}: {exc}")
                if metrics is not None:
                    metrics.errors.labels(name).inc()

        for v, sets in self.ipsets.items():
            step(f"ipsets-v{v}", sets.apply)
        if self.tunnels is not None:
            step("tunnels", self._apply_tunnels)
        step("routes", self.routes.apply)
        step("interfaces", self.interfaces.apply)
        read_back = all(t.needs_resync for t in self.tables.values())
        generation = self.generation.read()
        restores = sum(t.restores for t in self.tables.values())
        skipped: dict[TableKey, str] = {}
        for key, owner in self.tables.items():
            blocker = f"ipsets-v{key[0]}"
            if blocker in failed:
                # chains may refer to sets that were not created
                skipped[key] = f"not applied because {failed[blocker]}"
                continue
            step(table_step(key), owner.apply)
        self.generation.account(generation, sum(t.restores for t in self.tables.values())
                                - restores, read_back and not any(
                                    f.startswith("iptables") for f in failed))
        blocked = {k[0] for k in skipped} | {k[0] for k in self.tables if table_step(k) in failed}
        for v, sets in self.ipsets.items():
            if v not in blocked:  # chains of that version may still use the sets
                step(f"ipset-deletions-v{v}", sets.apply_deletions)
        self._note_failures(failed, skipped)
        return failed

    def _apply_tunnels(self) -> None:
        assert self.tunnels is not None
        try:
            self.tunnels.apply()
        finally:  # also when another device failed after one was created
            for name in self.tunnels.last_created:
                self.routes.on_interface_update(name)

    def _note_failures(self, failed: Mapping[str, str],
                       skipped: Mapping[TableKey, str]) -> None:
        """What this apply left unprogrammed, computed once for the status decisions."""
        self._iface_failures = dict(self.interfaces.failures)
        self._iface_failures.update(self.routes.failures)
        self.table_failures = {}
        self._unprogrammed = {}
        self._dispatch_broken = set()
        for key, owner in self.tables.items():
            if key[1] != "filter":
                continue  # nat holds no endpoint's chains
            reason = failed.get(table_step(key)) or skipped.get(key)
            if reason is None:
                continue
            self.table_failures[key] = reason
            unprogrammed = owner.unprogrammed_chains()
            self._unprogrammed[key] = unprogrammed
            if any(is_workload_dispatch_chain(n) for n in unprogrammed):
                self._dispatch_broken.add(key)

    # ---- what the last apply left unprogrammed -----------------------------------------

    @property
    def pending_interfaces(self) -> frozenset[str]:
        """Interfaces whose routes wait for the interface to exist or come up."""
        return self.routes.pending_interfaces

    @property
    def failed_interfaces(self) -> Mapping[str, str]:
        """Interface -> why its routes, neighbour entries or settings failed to apply."""
        return self._iface_failures

    def endpoint_failure(self, ifname: str, chains: Sequence[str]) -> str | None:
        """Why the endpoint on `ifname` with these filter chains (own from/to first) is
        not programmed after the last apply; None when everything it needs is in place."""
        reason = self._iface_failures.get(ifname)
        if reason is not None:
            return reason
        for key, why in self.table_failures.items():
            unprogrammed = self._unprogrammed[key]
            if any(c in unprogrammed for c in chains):
                return why
            if key in self._dispatch_broken and len(chains) >= 2:
                written = self.tables[key].written_chain
                if (dispatch_target(written, CHAIN_FROM_ENDPOINT, ifname) != chains[0]
                        or dispatch_target(written, CHAIN_TO_ENDPOINT, ifname) != chains[1]):
                    return why
        return None


def table_step(key: TableKey) -> str:
    """The apply step (and metrics label) of one iptables table: `iptables-v4-filter`."""
    return f"iptables-v{key[0]}-{key[1]}"
