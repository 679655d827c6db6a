"""The one loop: datastore updates and interface events in, dataplane applies out.

Owns the sequencing of felix:
  1. Syncer callbacks (syncer thread) and interface events (watcher thread) are put on
     one thread-safe queue. The loop takes everything queued at once, so a burst of
     updates is coalesced into one calculation and one apply.
  2. Updates feed `CalcGraph`. Nothing is written to the dataplane before the syncer has
     reported in-sync for the first time; after that, each loop iteration flushes the
     calculation into the owners and applies them in a fixed order:
         ipsets (create/update)  ->  routes, interface settings  ->
         iptables (filter v4, filter v6, nat v4)  ->  ipset deletions
     so that chains never refer to a missing set and sets are destroyed only after no
     chain uses them. While the syncer is resyncing (etcd down or back), calculated
     changes wait for the next in-sync: the dataplane stays as it was.
  3. The first apply reads every owner's kernel state back and removes what is stale
     (owners do this on their first apply); a failed apply is retried with backoff and
     the owners then rewrite in full; every RefreshInterval the owners are told to
     resync (read back, repair tampering), the iptables tables only when the nf_tables
     generation shows a change felix did not make (`felix.dataplane.nftgen`).
  4. Interface events are passed to the route and interface owners at once and the
     affected endpoints' status is recomputed.
  5. Config keys are followed too; when the configuration in etcd changes so that the
     resulting `Config` differs, the loop ends with `restart_requested` and main
     re-executes felix (documented in felix.config).

Leaves to others: the calculation (`felix.calc`), the owners (`felix.dataplane`),
status writing (`felix.status`), metrics/health (`felix.health`), process setup
(`felix.main`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from felix.calc.graph import CalcGraph, CalcSettings
from felix.calc.types import Changes, EndpointInfo
from felix.config import Config, load_config
from felix.dataplane.cmd import CommandFailed, CommandRunner, DataplaneError
from felix.dataplane.interfaces import InterfaceEvent, Interfaces, InterfaceWatcher
from felix.dataplane.ipsets import IPSets
from felix.dataplane.iptables import IptablesTable
from felix.dataplane.nftgen import RulesetGeneration, iptables_is_nft
from felix.dataplane.routes import Routes
from felix.health import Health, Metrics
from felix.status import StatusReporter
from libcalico import keyspace
from libcalico.syncer import SyncStatus, Update

_log = logging.getLogger(__name__)

MIN_RETRY = 0.2
MAX_RETRY = 30.0


def felix_prefixes(hostname: str) -> list[str]:
    """What felix follows: config, all hosts (endpoints), policy and pools."""
    return [keyspace.CONFIG_DIR, keyspace.HOST_DIR, keyspace.POLICY_DIR, keyspace.POOL_DIR]


@dataclass
class Owners:
    """The dataplane owners felix applies, one per kernel table."""

    ipsets: dict[int, IPSets]
    tables: dict[tuple[int, str], IptablesTable]
    routes: Routes
    interfaces: Interfaces
    generation: RulesetGeneration = field(
        default_factory=lambda: RulesetGeneration(None, enabled=False))

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
        return cls({v: IPSets(v, runner, max_size=config.MaxIpsetSize) for v in versions},
                   tables, Routes(netns, iface_prefixes=config.InterfacePrefix),
                   Interfaces(netns), RulesetGeneration(netns, enabled=nft))

    def close(self) -> None:
        self.routes.close()
        self.interfaces.close()

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

    def take(self, changes: Changes) -> None:
        """Hand the calculated changes to the owners (no I/O)."""
        for version, sets in changes.ipsets.items():
            for name, state in sets.items():
                if state is None:
                    self.ipsets[version].remove_ipset(name)
                else:
                    self.ipsets[version].set_ipset(state)
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

    def apply(self, metrics: Metrics | None = None) -> list[str]:
        """Apply in the fixed order; return the names of owners that failed."""
        failed: list[str] = []

        def step(name: str, fn: Any) -> None:
            try:
                fn()
            except (DataplaneError, OSError) as exc:
                _log.error("apply %s failed: %s", name, exc)
                failed.append(name)
                if metrics is not None:
                    metrics.errors.labels(name).inc()

        for v, sets in self.ipsets.items():
            step(f"ipsets-v{v}", sets.apply)
        step("routes", self.routes.apply)
        step("interfaces", self.interfaces.apply)
        read_back = all(t.needs_resync for t in self.tables.values())
        generation = self.generation.read()
        restores = sum(t.restores for t in self.tables.values())
        for (v, table), owner in self.tables.items():
            if f"ipsets-v{v}" in failed:
                continue  # chains may refer to sets that were not created
            step(f"iptables-v{v}-{table}", owner.apply)
        self.generation.account(generation, sum(t.restores for t in self.tables.values())
                                - restores, read_back and not any(
                                    f.startswith("iptables") for f in failed))
        for v, sets in self.ipsets.items():
            if not any(f.startswith(f"iptables-v{v}") for f in failed):
                step(f"ipset-deletions-v{v}", sets.apply_deletions)
        return failed


class Driver:
    """See the module docstring. `run()` blocks until `stop()` or a config change."""

    def __init__(self, config: Config, owners: Owners, calc: CalcGraph, *,
                 status: StatusReporter | None = None, metrics: Metrics | None = None,
                 health: Health | None = None, file_values: dict[str, str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.config = config
        self.owners = owners
        self.calc = calc
        self.status = status
        self.metrics = metrics or Metrics()
        self.health = health or Health()
        self._file_values = file_values or {}
        self._env = env
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self.restart_requested = False
        self.in_sync = False
        self.ever_in_sync = False
        self.applies = 0
        self._etcd_global: dict[str, str] = {}
        self._etcd_host: dict[str, str] = {}
        self._config_dirty = False
        self._ifaces: dict[str, bool] = {}
        self._ep_info: dict[Any, EndpointInfo] = {}
        self._reported: dict[Any, dict[str, str]] = {}
        self._ifname_keys: dict[str, set[Any]] = {}
        self._status_dirty: set[Any] = set()
        self._pending: frozenset[str] = frozenset()
        self._retry_at: float | None = None
        self._retry_delay = MIN_RETRY
        self._next_refresh = 0.0
        self._needs_apply = False

    # --- inputs from other threads ------------------------------------------------------

    def on_status(self, status: SyncStatus) -> None:
        self._events.put(("status", status))

    def on_updates(self, updates: Sequence[Update]) -> None:
        self._events.put(("updates", updates))

    def on_interface_event(self, event: InterfaceEvent) -> None:
        self._events.put(("iface", event))

    def stop(self) -> None:
        self._stop.set()
        self._events.put(("stop", None))

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        refresh = self.config.refresh_interval
        while not self._stop.is_set():
            timeout = self._timeout(refresh)
            try:
                events = [self._events.get(timeout=timeout)]
            except queue.Empty:
                events = []
            while True:  # coalesce everything that is already queued
                try:
                    events.append(self._events.get_nowait())
                except queue.Empty:
                    break
            self.health.heartbeat()
            for kind, payload in events:
                self._handle(kind, payload)
            if self._stop.is_set() or self.restart_requested:
                break
            now = time.monotonic()
            if self.ever_in_sync and refresh > 0 and now >= self._next_refresh:
                self._next_refresh = now + refresh
                self.owners.mark_resync()
                self.metrics.resyncs.inc()
                self._needs_apply = True
            if self._retry_at is not None and now >= self._retry_at:
                self._needs_apply = True
            if self.ever_in_sync and self._needs_apply:
                self._apply()

    def _timeout(self, refresh: float) -> float:
        deadlines = [time.monotonic() + 5.0]
        if self.ever_in_sync and refresh > 0:
            deadlines.append(self._next_refresh)
        if self._retry_at is not None:
            deadlines.append(self._retry_at)
        return max(min(deadlines) - time.monotonic(), 0.0)

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "updates":
            for u in payload:
                if not self._config_update(u.key, u.value):
                    self.calc.on_update(u.key, u.value)
            self._needs_apply = True
            if self.in_sync:
                self._check_config()
        elif kind == "status":
            self.in_sync = payload is SyncStatus.IN_SYNC
            self.metrics.datastore_in_sync.set(1 if self.in_sync else 0)
            if self.in_sync:
                if not self.ever_in_sync:
                    _log.info("datastore in sync: programming the dataplane")
                    self._next_refresh = time.monotonic() + self.config.refresh_interval
                self.ever_in_sync = True
                self._check_config()
                self._needs_apply = True
            elif self.ever_in_sync:
                _log.info("datastore %s: keeping the dataplane as it is", payload.value)
        elif kind == "iface":
            event: InterfaceEvent = payload
            up = event.kind != "removed" and event.up
            if event.kind == "removed":
                self._ifaces.pop(event.ifname, None)
            else:
                self._ifaces[event.ifname] = up
            self.owners.routes.on_interface_update(event.ifname)
            self.owners.interfaces.on_interface_update(event.ifname)
            self._status_dirty.update(self._ifname_keys.get(event.ifname, ()))
            self._needs_apply = True

    # --- config ------------------------------------------------------------------------------

    def _config_update(self, key: str, value: str | None) -> bool:
        parsed = keyspace.parse_key(key)
        if isinstance(parsed, keyspace.GlobalConfigKey):
            target = self._etcd_global
        elif (isinstance(parsed, keyspace.HostConfigKey)
              and parsed.hostname == self.config.FelixHostname):
            target = self._etcd_host
        else:
            return False
        if value is None:
            target.pop(parsed.name, None)
        else:
            target[parsed.name] = value
        self._config_dirty = True
        return True

    def _check_config(self) -> None:
        if not self._config_dirty:
            return
        self._config_dirty = False
        try:
            new = load_config(file_values=self._file_values, env=self._env,
                              etcd_global=self._etcd_global, etcd_host=self._etcd_host)
        except ValueError as exc:
            _log.error("ignoring the new configuration in etcd: %s", exc)
            return
        if new != self.config:
            changed = sorted(k for k, v in new.as_dict().items()
                             if self.config.as_dict().get(k) != v)
            _log.warning("configuration changed in etcd (%s): restarting felix",
                         ", ".join(changed))
            self.restart_requested = True

    # --- apply -------------------------------------------------------------------------------

    def _apply(self) -> None:
        self._needs_apply = False
        if self.in_sync:
            changes = self.calc.flush()
            self.owners.take(changes)
            for key, info in changes.endpoints.items():
                self._set_ep_info(key, info)
        start = time.monotonic()
        failed = self.owners.apply(self.metrics)
        self.metrics.apply_seconds.observe(time.monotonic() - start)
        self.applies += 1
        self.metrics.endpoints.set(self.calc.local_endpoint_count)
        if failed:
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, MAX_RETRY)
            self.health.set_ready(False, "apply failed: " + ", ".join(failed))
        else:
            self._retry_at = None
            self._retry_delay = MIN_RETRY
            self.health.set_ready(self.in_sync, "" if self.in_sync else "datastore not in sync")
        self._report_endpoints()

    def _set_ep_info(self, key: Any, info: EndpointInfo | None) -> None:
        old = self._ep_info.pop(key, None)
        if old is not None and old.ifname is not None:
            keys = self._ifname_keys.get(old.ifname, set())
            keys.discard(key)
            if not keys:
                self._ifname_keys.pop(old.ifname, None)
        if info is not None:
            self._ep_info[key] = info
            if info.ifname is not None:
                self._ifname_keys.setdefault(info.ifname, set()).add(key)
        self._status_dirty.add(key)

    def _endpoint_status(self, key: Any, pending: frozenset[str]) -> dict[str, str] | None:
        info = self._ep_info.get(key)
        if info is None or not isinstance(key, keyspace.WorkloadEndpointKey):
            return None
        if info.error is not None:
            return ({"status": "down", "reason": "inactive"} if info.error == "inactive"
                    else {"status": "error", "reason": info.error})
        if info.ifname is None or not self._ifaces.get(info.ifname):
            return {"status": "down", "reason": "interface missing or down"}
        if info.ifname in pending:
            return {"status": "down", "reason": "routes not programmed"}
        return {"status": "up"}

    def endpoint_statuses(self) -> dict[Any, dict[str, str]]:
        """The status of every local workload endpoint (for tests and diagnostics)."""
        pending = self.owners.routes.pending_interfaces
        out = {k: self._endpoint_status(k, pending) for k in self._ep_info}
        return {k: v for k, v in out.items() if v is not None}

    def _report_endpoints(self) -> None:
        """Recompute only the statuses that may have changed and hand those over."""
        pending = self.owners.routes.pending_interfaces
        for ifname in pending ^ self._pending:
            self._status_dirty.update(self._ifname_keys.get(ifname, ()))
        self._pending = pending
        if self.status is None or not self._status_dirty:
            self._status_dirty.clear()
            return
        changed: dict[Any, Any] = {}
        for key in self._status_dirty:
            status = self._endpoint_status(key, pending)
            if self._reported.get(key) != status:
                changed[key] = status
                if status is None:
                    self._reported.pop(key, None)
                else:
                    self._reported[key] = status
        self._status_dirty.clear()
        if changed:
            self.status.set_endpoints(changed)


def start_watcher(driver: Driver, config: Config, netns: str | None = None) -> InterfaceWatcher:
    watcher = InterfaceWatcher(driver.on_interface_event, netns=netns,
                               prefixes=config.InterfacePrefix)
    watcher.start()
    return watcher


def calc_settings(config: Config, ipv6: bool) -> CalcSettings:
    return CalcSettings.from_config(config, ipv6)
