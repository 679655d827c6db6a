"""felix.endpoint_status: the status decision, and which statuses are decided again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from felix.calc.types import EndpointInfo
from felix.endpoint_status import EndpointStatuses, decide_status
from libcalico import keyspace

UP = {"status": "up"}
INFO = EndpointInfo("cali1", None, ("felix-from-1", "felix-to-1", "felix-p-a-i"))


@pytest.mark.parametrize("info,iface_up,pending,failure,expect", [
    (INFO, True, False, None, UP),
    (EndpointInfo("cali1", "inactive"), True, False, None,
     {"status": "down", "reason": "inactive"}),
    (EndpointInfo(None, "invalid json"), False, False, None,
     {"status": "error", "reason": "invalid json"}),
    (INFO, False, False, "routes: boom",
     {"status": "down", "reason": "interface missing or down"}),
    (INFO, True, True, None, {"status": "down", "reason": "routes not programmed"}),
    # a failed apply is never "up", and says which step failed and why
    (INFO, True, False, "iptables-v4-filter: iptables-restore exited 1: bad rule",
     {"status": "error", "reason": "iptables-v4-filter: iptables-restore exited 1: bad rule"}),
    (INFO, True, True, "routes: route 198.18.0.1/32: EACCES (Permission denied)",
     {"status": "error", "reason": "routes: route 198.18.0.1/32: EACCES (Permission denied)"}),
])
def test_decide_status(info: EndpointInfo, iface_up: bool, pending: bool,
                       failure: str | None, expect: dict[str, str]) -> None:
    assert decide_status(info, iface_up, pending, failure) == expect


@dataclass
class Outcome:
    """What the owners report after an apply, as state the test changes."""

    pending_interfaces: frozenset[str] = frozenset()
    failed_interfaces: dict[str, str] = field(default_factory=dict)
    table_failures: dict[Any, str] = field(default_factory=dict)
    failed_chains: dict[str, str] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    def endpoint_failure(self, ifname: str, chains: Sequence[str]) -> str | None:
        self.asked.append(ifname)
        if ifname in self.failed_interfaces:
            return self.failed_interfaces[ifname]
        return next((self.failed_chains[c] for c in chains if c in self.failed_chains), None)


def key(i: int) -> keyspace.WorkloadEndpointKey:
    return keyspace.WorkloadEndpointKey("h1", "k8s", f"w{i}", "eth0")


def info(i: int) -> EndpointInfo:
    return EndpointInfo(f"cali{i}", None, (f"felix-from-{i}", f"felix-to-{i}", "felix-p-a-i"))


def rig(n: int) -> tuple[EndpointStatuses, Outcome]:
    outcome = Outcome()
    statuses = EndpointStatuses(outcome)
    for i in range(n):
        statuses.on_endpoint_info(key(i), info(i))
        statuses.on_interface(f"cali{i}", True)
    assert statuses.after_apply() == {key(i): UP for i in range(n)}
    outcome.asked.clear()
    return statuses, outcome


def test_an_interface_failure_is_error_until_a_later_apply_succeeds() -> None:
    statuses, outcome = rig(3)
    outcome.failed_interfaces = {"cali1": "routes: route 198.18.0.1/32: EACCES"}
    assert statuses.after_apply() == {key(1): {"status": "error",
                                               "reason": "routes: route 198.18.0.1/32: EACCES"}}
    assert outcome.asked == ["cali1"]  # only the endpoint concerned is decided again
    assert statuses.after_apply() == {}  # still failing: nothing new to report
    outcome.failed_interfaces = {}
    assert statuses.after_apply() == {key(1): UP}


def test_a_failing_table_decides_every_endpoint_and_only_failed_ones_are_error() -> None:
    statuses, outcome = rig(4)
    outcome.table_failures = {(4, "filter"): "iptables-v4-filter: exited 1"}
    outcome.failed_chains = {"felix-from-2": "iptables-v4-filter: exited 1"}
    assert statuses.after_apply() == {key(2): {"status": "error",
                                               "reason": "iptables-v4-filter: exited 1"}}
    assert sorted(outcome.asked) == ["cali0", "cali1", "cali2", "cali3"]
    outcome.failed_chains = {"felix-p-a-i": "iptables-v4-filter: exited 1"}  # a shared chain
    changed = statuses.after_apply()
    assert set(changed) == {key(0), key(1), key(3)}
    outcome.table_failures, outcome.failed_chains = {}, {}
    assert statuses.after_apply() == {key(i): UP for i in range(4)}


def test_pending_down_removed_and_host_endpoints() -> None:
    statuses, outcome = rig(2)
    outcome.pending_interfaces = frozenset({"cali0"})
    assert statuses.after_apply() == {key(0): {"status": "down",
                                               "reason": "routes not programmed"}}
    statuses.on_interface("cali1", None)  # removed
    assert statuses.after_apply() == {key(1): {"status": "down",
                                               "reason": "interface missing or down"}}
    statuses.on_endpoint_info(key(1), None)
    assert statuses.after_apply() == {key(1): None}
    statuses.on_endpoint_info(keyspace.HostEndpointKey("h1", "eth0"), EndpointInfo("eth0"))
    assert statuses.after_apply() == {}  # host endpoints have no status key
