"""The confd loop: follow the datastore, coalesce bursts, render, apply.

Owns: the raw key/value state confd follows (fed by `libcalico.syncer.Syncer` on its
thread), the coalescing of bursts of updates into one render, retrying a reload while
BIRD is not running, and the one-shot mode (`run_once`).

Batching: `on_updates` only records values and wakes the loop, and only for a change
that can alter this host's configuration: an allocation block matters to a host only
through the addresses it holds in another host's block (`confd.view.borrowed_by`), so
the workloads that come and go on every other host, which rewrite blocks all the time,
wake no confd but their own host's (whose affinities it follows). The loop waits until
no such update has arrived for `quiet` seconds (or `max_delay` has passed since the
first one), then renders once from a copy of the state. Nothing is rendered before the
syncer is in sync, so BIRD never sees a configuration built from a partial snapshot.
Every `refresh_interval` the loop re-reads the live file and renders again, which
repairs a file edited or deleted by hand (an unchanged file is left alone).

State: `_values` holds every relevant key's current value (`confd.view.is_relevant`),
blocks only while they hold addresses of this host's (`_borrowed`: block key -> those
addresses); `_in_sync` the syncer's status; `_generation` counts the changes that
matter, so the loop can tell whether anything arrived while it waited.

Leaves to others: the view and rendering (`confd.view`, `confd.render`), the file and
BIRD (`confd.apply`), process start-up and signals (`confd.main`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from confd.apply import ApplyResult, BirdApplier, CommandError
from confd.render import DEFAULT_INCLUDE_DIR, render
from confd.view import borrowed_by, build_view, is_relevant, parse_key_cached, watch_prefixes
from libcalico.datastore import Datastore
from libcalico.errors import ValidationError
from libcalico.keyspace import BlockKey
from libcalico.syncer import Syncer, SyncStatus, Update

_log = logging.getLogger(__name__)


class ConfdDaemon:
    """Keeps one host's BIRD configuration rendered from the datastore."""

    def __init__(self, datastore: Datastore, hostname: str, applier: BirdApplier, *,
                 include_dir: str = DEFAULT_INCLUDE_DIR, templates_dir: str | None = None,
                 quiet: float = 0.02, max_delay: float = 0.25,
                 retry_interval: float = 1.0, refresh_interval: float = 60.0) -> None:
        self._store = datastore
        self.hostname = hostname
        self.applier = applier
        self.include_dir = include_dir
        self.templates_dir = templates_dir
        self.quiet = quiet
        self.max_delay = max_delay
        self.retry_interval = retry_interval
        self.refresh_interval = refresh_interval
        self._lock = threading.Lock()
        self._values: dict[str, str] = {}
        self._borrowed: dict[str, tuple[str, ...] | None] = {}
        self._in_sync = False
        self._generation = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reported: set[str] = set()
        self._syncer: Syncer | None = None
        self.renders = 0  # renders done, for tests and benchmarks
        self.ignored = 0  # updates that could not change this host's configuration
        self.last_result: ApplyResult | None = None
        self.applied_generation = 0  # `_generation` of the last applied render

    # --- syncer callbacks (syncer thread) ------------------------------------------------------

    def on_status(self, status: SyncStatus) -> None:
        with self._lock:
            self._in_sync = status is SyncStatus.IN_SYNC
        if status is SyncStatus.IN_SYNC:
            self._wake.set()

    def on_updates(self, updates: Sequence[Update]) -> None:
        with self._lock:
            changed = False
            for u in updates:
                if self._take(u.key, u.value):
                    changed = True
                else:
                    self.ignored += 1
            if not changed:
                return
            self._generation += 1
        self._wake.set()

    def _take(self, key: str, value: str | None) -> bool:
        """Record one update; whether it can change this host's configuration."""
        if isinstance(parse_key_cached(key), BlockKey):
            mine = () if value is None else borrowed_by(self.hostname, value)
            if mine == ():
                self._borrowed.pop(key, None)
                return self._values.pop(key, None) is not None
            assert value is not None  # a deleted block holds nothing
            old = self._borrowed.get(key, ())
            self._borrowed[key] = mine
            self._values[key] = value
            return mine != old or mine is None
        if value is None:
            return self._values.pop(key, None) is not None
        if not is_relevant(key) or self._values.get(key) == value:
            return False
        self._values[key] = value
        return True

    # --- the loop -------------------------------------------------------------------------------

    def start_syncer(self) -> Syncer:
        self._syncer = Syncer(self._store, watch_prefixes(self.hostname), self,
                              name="confd-syncer").start()
        return self._syncer

    def run(self) -> None:
        """Follow the datastore until `stop()`."""
        if self._syncer is None:
            self.start_syncer()
        next_refresh = time.monotonic() + self.refresh_interval
        try:
            while not self._stop.is_set():
                timeout = max(0.0, next_refresh - time.monotonic())
                if self.applier.reload_pending:
                    timeout = min(timeout, self.retry_interval)
                woken = self._wake.wait(timeout)
                if self._stop.is_set():
                    break
                if woken:
                    self._coalesce()
                if time.monotonic() >= next_refresh:
                    # Re-assert: repair a live file edited or removed behind our back.
                    self.applier.reread_live()
                    next_refresh = time.monotonic() + self.refresh_interval
                with self._lock:
                    ready = self._in_sync
                if ready:
                    self.render_and_apply()
        finally:
            if self._syncer is not None:
                self._syncer.stop()

    def _coalesce(self) -> None:
        """Wait until updates stop arriving for `quiet` seconds, at most `max_delay`."""
        deadline = time.monotonic() + self.max_delay
        while not self._stop.is_set():
            self._wake.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._wake.wait(min(self.quiet, remaining)):
                return

    def settled(self) -> bool:
        """Whether the last applied render holds every change received so far."""
        with self._lock:
            return self.applied_generation == self._generation

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def render_and_apply(self) -> ApplyResult | None:
        """Render the current state and apply it; None if this host cannot be rendered."""
        with self._lock:
            values = dict(self._values)
            generation = self._generation
        result = render_and_apply(values, self.hostname, self.applier, self.include_dir,
                                  self.templates_dir, self._reported)
        if result is not None:
            with self._lock:
                self.renders += 1
                self.last_result = result
                self.applied_generation = generation
        return result


def render_and_apply(values: dict[str, str], hostname: str, applier: BirdApplier,
                     include_dir: str, templates_dir: str | None,
                     reported: set[str]) -> ApplyResult | None:
    """One render and apply; problems are logged once each (tracked in `reported`)."""
    view = build_view(values)
    for problem in view.problems:
        if problem not in reported:
            reported.add(problem)
            _log.warning("invalid datastore value: %s", problem)
    try:
        text = render(view, hostname, include_dir, templates_dir)
    except ValidationError as exc:
        if str(exc) not in reported:
            reported.add(str(exc))
            _log.warning("cannot render BIRD's configuration yet (%s); keeping the old one", exc)
        return None
    try:
        return applier.apply(text)
    except (CommandError, OSError, TimeoutError) as exc:
        _log.error("applying BIRD's configuration failed: %s", exc)
        return None


def run_once(datastore: Datastore, hostname: str, applier: BirdApplier, *,
             include_dir: str = DEFAULT_INCLUDE_DIR,
             templates_dir: str | None = None) -> ApplyResult | None:
    """Read the datastore once, render, apply."""
    kvs, _ = datastore.list_many(watch_prefixes(hostname))
    values = {kv.key: kv.value for kv in kvs if is_relevant(kv.key)
              and (not isinstance(parse_key_cached(kv.key), BlockKey)
                   or borrowed_by(hostname, kv.value) != ())}
    return render_and_apply(values, hostname, applier, include_dir, templates_dir, set())
