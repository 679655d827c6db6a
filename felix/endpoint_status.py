"""Each local workload endpoint's status: the decision, and knowing which may have changed.

Owns:
  - `decide_status()`, the one rule (pure): an endpoint felix must not program is "down"
    when it is inactive and "error" with the reason otherwise (invalid data, an
    interface another endpoint has); one whose interface is missing or down is "down";
    one whose routes, interface settings or chains (including the dispatch entry that
    leads to them) failed to apply is "error" with a short reason naming the step that
    failed and the command's or the kernel's error, until a later apply succeeds; one
    whose routes wait for the interface is "down"; everything else is "up". "up" thus
    always means: the last apply programmed everything this endpoint needs.
  - `EndpointStatuses`: the latest `EndpointInfo` of each local workload endpoint (from
    the calculation), which interfaces exist and are up (from interface events), what
    was last handed to the reporter, and the set of endpoints whose status may have
    changed. `after_apply()` looks at the owners' failures and pending interfaces,
    recomputes only the endpoints that may have changed (an interface's events, its
    pending or failed state changing, its info changing; every endpoint while a filter
    table is failing, which is rare) and returns the statuses that differ from the last
    ones handed over.

Leaves to others: the failures themselves (`felix.dataplane.apply.Owners`), writing
statuses to etcd (`felix.status`), when to apply (`felix.driver`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from felix.calc.types import EndpointInfo
from libcalico import keyspace

Status = dict[str, str]


class DataplaneOutcome(Protocol):
    """What the status decision needs from the owners after an apply."""

    @property
    def pending_interfaces(self) -> frozenset[str]: ...

    @property
    def failed_interfaces(self) -> Mapping[str, str]: ...

    @property
    def table_failures(self) -> Mapping[Any, str]: ...

    def endpoint_failure(self, ifname: str, chains: Sequence[str]) -> str | None: ...


def decide_status(info: EndpointInfo, iface_up: bool, pending: bool,
                  failure: str | None) -> Status:
    """The status of one local workload endpoint (see the module docstring)."""
    if info.error is not None:
        if info.error == "inactive":
            return {"status": "down", "reason": "inactive"}
        return {"status": "error", "reason": info.error}
    if info.ifname is None or not iface_up:
        return {"status": "down", "reason": "interface missing or down"}
    if failure is not None:
        return {"status": "error", "reason": failure}
    if pending:
        return {"status": "down", "reason": "routes not programmed"}
    return {"status": "up"}


class EndpointStatuses:
    """See the module docstring. Used from the driver's thread only.

    State fields: `_info` (workload endpoint -> EndpointInfo), `_ifname_keys` (interface
    -> endpoints on it), `_ifaces` (interface -> up), `_reported` (last status handed
    over), `_dirty` (endpoints to recompute), `_pending`/`_failed`/`_tables_failing`
    (the owners' outcome at the previous look, to see what changed)."""

    def __init__(self, outcome: DataplaneOutcome) -> None:
        self.outcome = outcome
        self._info: dict[Any, EndpointInfo] = {}
        self._ifname_keys: dict[str, set[Any]] = {}
        self._ifaces: dict[str, bool] = {}
        self._reported: dict[Any, Status] = {}
        self._dirty: set[Any] = set()
        self._pending: frozenset[str] = frozenset()
        self._failed: dict[str, str] = {}
        self._tables_failing = False

    def on_endpoint_info(self, key: Any, info: EndpointInfo | None) -> None:
        """The calculation's latest info for an endpoint (None: gone)."""
        if not isinstance(key, keyspace.WorkloadEndpointKey):
            return  # host endpoints have no status key
        old = self._info.pop(key, None)
        if old is not None and old.ifname is not None:
            keys = self._ifname_keys.get(old.ifname, set())
            keys.discard(key)
            if not keys:
                self._ifname_keys.pop(old.ifname, None)
        if info is not None:
            self._info[key] = info
            if info.ifname is not None:
                self._ifname_keys.setdefault(info.ifname, set()).add(key)
        self._dirty.add(key)

    def on_interface(self, ifname: str, up: bool | None) -> None:
        """An interface event: up/down, or None when it was removed."""
        if up is None:
            self._ifaces.pop(ifname, None)
        else:
            self._ifaces[ifname] = up
        self._dirty.update(self._ifname_keys.get(ifname, ()))

    def after_apply(self) -> dict[Any, Status | None]:
        """The statuses that changed since the last call (None: the endpoint is gone)."""
        outcome = self.outcome
        pending = outcome.pending_interfaces
        for ifname in pending ^ self._pending:
            self._dirty.update(self._ifname_keys.get(ifname, ()))
        self._pending = pending
        failed = dict(outcome.failed_interfaces)
        if failed or self._failed:
            for ifname in set(failed) | set(self._failed):
                if failed.get(ifname) != self._failed.get(ifname):
                    self._dirty.update(self._ifname_keys.get(ifname, ()))
        self._failed = failed
        tables_failing = bool(outcome.table_failures)
        if tables_failing or self._tables_failing:
            self._dirty.update(self._info)
        self._tables_failing = tables_failing
        changed: dict[Any, Status | None] = {}
        for key in self._dirty:
            status = self._status(key, pending)
            if self._reported.get(key) != status:
                changed[key] = status
                if status is None:
                    self._reported.pop(key, None)
                else:
                    self._reported[key] = status
        self._dirty.clear()
        return changed

    def _status(self, key: Any, pending: frozenset[str]) -> Status | None:
        info = self._info.get(key)
        if info is None:
            return None
        ifname = info.ifname
        failure = None
        if info.error is None and ifname is not None:
            failure = self.outcome.endpoint_failure(ifname, info.chains)
        return decide_status(info, bool(ifname and self._ifaces.get(ifname)),
                             ifname in pending, failure)
