"""The one loop: datastore updates and interface events in, dataplane applies out.

Owns the sequencing of felix:
  1. Syncer callbacks (syncer thread) and interface events (watcher thread) are put on
     one thread-safe queue. The loop takes everything queued at once, so a burst of
     updates is coalesced into one calculation and one apply.
  2. Updates feed the calculation (`CalcGraph`). Nothing is written to the dataplane
     before the syncer has reported in-sync for the first time; after that, each loop
     iteration flushes the calculation, hands the changes to the owners and applies
     them in their fixed order (`felix.dataplane.apply`). An iteration whose flush
     changed nothing applies nothing (unless the owners have work of their own: the
     first sync, a refresh, a retry, an interface event), so the updates that cannot
     affect this host - most of what every felix hears about other hosts - cost their
     parse and no dataplane work. While the syncer is
     resyncing (etcd down or back), calculated changes wait for the next in-sync: the
     dataplane stays as it was.
  3. A failed apply is retried with backoff (`libcalico.retry.Backoff`, 0.2 s doubling
     to 30 s; the owners then reread the kernel and rewrite); every RefreshInterval the
     owners are told to resync (read back, repair tampering).
  4. After every apply, the endpoints whose status may have changed are decided again
     (`felix.endpoint_status`: "up" only when everything the endpoint needs was
     applied) and the changes handed to the status reporter; readiness says whether
     the datastore is in sync and the last apply succeeded.
  5. Interface events go to the owners and the status tracker at once.
  6. Config keys are followed too; when the configuration in etcd changes so that the
     resulting `Config` differs, the loop ends with `restart_requested` and main
     re-executes felix (documented in felix.config). Likewise when a pool becomes
     encapsulated (or the last one stops being): the blocks are followed only while
     one is (`felix_prefixes`).
  7. When pools or this node's record change (and at the first in-sync and every
     refresh), the tunnel keeper (`felix.tunnel_keeper`) is poked to bring this node's
     tunnel addresses in line on its own thread.

Leaves to others: the calculation (`felix.calc`), the owners and their order
(`felix.dataplane.apply`), the status decision (`felix.endpoint_status`), status
writing (`felix.status`), metrics/health (`felix.health`), process setup (`felix.main`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from felix.calc.graph import CalcGraph
from felix.config import Config, load_config
from felix.dataplane.apply import Owners
from felix.dataplane.interfaces import InterfaceEvent, InterfaceWatcher
from felix.endpoint_status import EndpointStatuses
from felix.health import Health, Metrics
from felix.status import StatusReporter
from felix.tunnel_keeper import TunnelKeeper
from libcalico import keyspace
from libcalico.model.tunnel import IPIP_INTERFACE, VXLAN_INTERFACE
from libcalico.retry import Backoff
from libcalico.syncer import SyncStatus, Update

_log = logging.getLogger(__name__)

MIN_RETRY = 0.2  # seconds before the first retry of a failed apply
MAX_RETRY = 30.0


def felix_prefixes(blocks: bool) -> list[str]:
    """What felix follows: config, all hosts (endpoints), policy and pools (all four
    under /calico/v1/, one watcher: over etcd's JSON gateway each watcher is a
    connection of its own) and, for the tunnels, the nodes' records; and the allocation
    blocks only while a pool is encapsulated (`blocks`): they are what felix routes
    through the tunnels, and otherwise the largest values in etcd, rewritten with every
    workload added or removed anywhere (docs/scale.md)."""
    return [keyspace.V1_DIR, keyspace.BGP_HOST_DIR, *([keyspace.BLOCK_DIR] if blocks else [])]


def encapsulated_pools(items: Sequence[tuple[str, str]]) -> bool:
    """Whether any of these stored pools (key, value) has an encapsulation (VXLAN or
    IPIP), judged as the calculation judges it (`encapsulated`), so that the two never
    disagree: what felix chooses `felix_prefixes(blocks=...)` with before its syncer
    starts."""
    from felix.calc.parse import parse_update

    for key, value in items:
        parsed = parse_update(key, value)
        pool = parsed.value if parsed is not None else None
        if getattr(pool, "encapsulation", None) is not None:
            return True
    return False


class Driver:
    """See the module docstring. `run()` blocks until `stop()` or a config change."""

    def __init__(self, config: Config, owners: Owners, calc: CalcGraph, *,
                 status: StatusReporter | None = None, metrics: Metrics | None = None,
                 health: Health | None = None, file_values: dict[str, str] | None = None,
                 env: dict[str, str] | None = None,
                 tunnels: TunnelKeeper | None = None,
                 follows_blocks: bool | None = None) -> None:
        self.config = config
        self.owners = owners
        self.calc = calc
        self.status = status
        self.metrics = metrics or Metrics()
        self.health = health or Health()
        self.statuses = EndpointStatuses(owners)
        self.tunnels = tunnels
        self._my_node_dir = keyspace.bgp_host_dir(config.FelixHostname)
        self._file_values = file_values or {}
        self._env = env
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self.restart_requested = False
        # whether the syncer follows BLOCK_DIR (None: the caller's syncer is not felix's)
        self.follows_blocks = follows_blocks
        self.in_sync = False
        self.ever_in_sync = False
        self.applies = 0  # owner applies
        self.flushes = 0  # calculation flushes (an update changing nothing: no apply)
        self._etcd_global: dict[str, str] = {}
        self._etcd_host: dict[str, str] = {}
        self._config_dirty = False
        self._retry = Backoff(MIN_RETRY, MAX_RETRY)
        self._retry_at: float | None = None
        self._next_refresh = 0.0
        self._needs_apply = False
        # The owners have work of their own (first sync, refresh, retry, an interface
        # event): apply even when the calculation hands over no change.
        self._owners_pending = True

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
                self._poke_tunnels()
                self.owners.mark_resync()
                self.metrics.resyncs.inc()
                self._needs_apply = self._owners_pending = True
            if self._retry_at is not None and now >= self._retry_at:
                self._needs_apply = self._owners_pending = True
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
                    if self.in_sync and (u.key.startswith(keyspace.POOL_DIR)
                                         or u.key.startswith(self._my_node_dir)):
                        self._poke_tunnels()
            self._needs_apply = True
            if self.in_sync:
                self._check_config()
                self._check_blocks()
        elif kind == "status":
            self.in_sync = payload is SyncStatus.IN_SYNC
            self.metrics.datastore_in_sync.set(1 if self.in_sync else 0)
            if self.in_sync:
                if not self.ever_in_sync:
                    _log.info("datastore in sync: programming the dataplane")
                    self._next_refresh = time.monotonic() + self.config.refresh_interval
                self.ever_in_sync = True
                self._poke_tunnels()
                self._check_config()
                self._check_blocks()
                self._needs_apply = self._owners_pending = True
            elif self.ever_in_sync:
                _log.info("datastore %s: keeping the dataplane as it is", payload.value)
        elif kind == "iface":
            event: InterfaceEvent = payload
            self.statuses.on_interface(event.ifname,
                                       None if event.kind == "removed" else event.up)
            self.owners.on_interface_update(event.ifname)
            self._needs_apply = self._owners_pending = True

    def _poke_tunnels(self) -> None:
        if self.tunnels is not None:
            self.tunnels.poke()

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

    def _check_blocks(self) -> None:
        """The blocks are followed exactly while a pool is encapsulated: when that flips
        (a VXLAN pool created, the last one removed), felix re-executes itself as for a
        configuration change, and the new process follows the right prefixes. The
        dataplane stays as it is meanwhile."""
        wanted = self.calc.tunnels.encapsulated
        if (self.follows_blocks is not None and wanted != self.follows_blocks
                and not self.restart_requested):
            _log.warning("%s: restarting felix to %s the allocation blocks",
                         "a pool is encapsulated" if wanted else "no pool is encapsulated",
                         "follow" if wanted else "stop following")
            self.restart_requested = True

    # --- apply -------------------------------------------------------------------------------

    def _apply(self) -> None:
        """Flush the calculation into the owners and apply them - unless nothing changed:
        an update that changes nothing here (another host's endpoint outside every set
        in use, a block while no pool is encapsulated) costs its parse and no more."""
        self._needs_apply = False
        if self.in_sync:
            changes = self.calc.flush()
            self.flushes += 1
            if changes:
                self.owners.take(changes)
                self._owners_pending = True
            for key, info in changes.endpoints.items():
                self.statuses.on_endpoint_info(key, info)
        if not self._owners_pending:
            return
        self._owners_pending = False
        start = time.monotonic()
        failed = self.owners.apply(self.metrics)
        self.metrics.apply_seconds.observe(time.monotonic() - start)
        self.applies += 1
        self.metrics.endpoints.set(self.calc.local_endpoint_count)
        if failed:
            delay = self._retry.next()
            self._retry_at = time.monotonic() + delay
            _log.warning("apply failed (%s); retrying in %.1fs", ", ".join(failed), delay)
            self.health.set_ready(False, "apply failed: " + ", ".join(failed))
        else:
            self._retry_at = None
            self._retry.reset()
            self.health.set_ready(self.in_sync, "" if self.in_sync else "datastore not in sync")
        changed = self.statuses.after_apply()
        if self.status is not None and changed:
            self.status.set_endpoints(changed)


def start_watcher(driver: Driver, config: Config, netns: str | None = None) -> InterfaceWatcher:
    """Start the interface watcher that feeds `driver` (after its initial dump)."""
    watcher = InterfaceWatcher(driver.on_interface_event, netns=netns,
                               prefixes=(*config.InterfacePrefix, VXLAN_INTERFACE,
                                         IPIP_INTERFACE))
    watcher.start()
    return watcher
