"""felix.driver: sequencing against in-memory owners that keep state."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from felix.calc.graph import CalcGraph, CalcSettings
from felix.config import load_config
from felix.dataplane.apply import Owners
from felix.dataplane.cmd import CommandFailed
from felix.driver import Driver
from libcalico import keyspace
from libcalico.syncer import SyncStatus, Update
from netsim.wait import wait_for


class FakeOwner:
    """Keeps desired and "kernel" state; apply copies one to the other."""

    def __init__(self, name: str, journal: list[str]) -> None:
        self.name = name
        self.journal = journal
        self.desired: dict[Any, Any] = {}
        self.kernel: dict[Any, Any] = {}
        self.fail_next = False
        self.resyncs = 0
        self.pending_interfaces: frozenset[str] = frozenset()
        self.failures: dict[str, str] = {}  # as the route and interface owners report

    def _set(self, key: Any, value: Any) -> None:
        self.desired[key] = value

    def _remove(self, key: Any) -> None:
        self.desired.pop(key, None)

    set_ipset = lambda self, s: self._set(s.name, s)  # noqa: E731
    remove_ipset = _remove
    set_chain = lambda self, c: self._set(c.name, c)  # noqa: E731
    remove_chain = _remove
    set_base_jumps = lambda self, k, r: self._set(("jump", k), r)  # noqa: E731
    set_route = lambda self, r: self._set(r.dest, r)  # noqa: E731
    remove_route = _remove
    set_neighbours = lambda self, n: self._set("neighbours", n)  # noqa: E731
    set_interface = lambda self, i: self._set(i.ifname, i)  # noqa: E731
    remove_interface = _remove

    def update_members(self, name: str, added: frozenset[str], removed: frozenset[str]
                       ) -> None:
        old = self.desired[name]
        self.desired[name] = type(old)(name, old.version, old.set_type,
                                       (old.members - removed) | added)

    def on_interface_update(self, ifname: str) -> None:
        pass

    def mark_resync(self) -> None:
        self.resyncs += 1
        self.needs_resync = True

    needs_resync = False
    restores = 0  # as an iptables owner counts its restores

    def apply(self) -> None:
        if self.fail_next:
            self.fail_next = False
            raise CommandFailed([self.name], 1, "boom")
        self.journal.append(self.name)
        self.needs_resync = False
        if self.kernel != self.desired:
            self.restores += 1
        self.kernel = dict(self.desired)

    def unprogrammed_chains(self) -> frozenset[str]:  # as an iptables owner reports
        return frozenset(n for n, c in self.desired.items() if self.kernel.get(n) != c)

    def written_chain(self, name: str) -> Any:
        return self.kernel.get(name)

    def apply_deletions(self) -> None:
        self.journal.append(self.name + "-deletions")


def fake_owners(journal: list[str]) -> Owners:
    return Owners(ipsets={4: FakeOwner("ipsets", journal)},  # type: ignore[dict-item]
                  tables={(4, "filter"): FakeOwner("filter", journal),  # type: ignore[dict-item]
                          (4, "nat"): FakeOwner("nat", journal)},  # type: ignore[dict-item]
                  routes=FakeOwner("routes", journal),  # type: ignore[arg-type]
                  interfaces=FakeOwner("interfaces", journal))  # type: ignore[arg-type]


@pytest.fixture
def rig() -> Iterator[tuple[Driver, Owners, list[str]]]:
    journal: list[str] = []
    owners = fake_owners(journal)
    env = {"FELIX_FELIXHOSTNAME": "h1", "FELIX_REFRESHINTERVAL": "0.3"}
    config = load_config(env=env)
    driver = Driver(config, owners, CalcGraph(CalcSettings("h1", ipv6=False)), env=env)
    thread = threading.Thread(target=driver.run, daemon=True)
    thread.start()
    try:
        yield driver, owners, journal
    finally:
        driver.stop()
        thread.join(10)


def endpoint_update(i: int) -> Update:
    key = keyspace.workload_endpoint_key("h1", "k8s", f"w{i}", "eth0")
    return Update(key, json.dumps({"name": f"cali{i}", "ipv4_nets": [f"198.18.1.{i}/32"]}), i)


def test_nothing_applied_before_in_sync_then_fixed_order(rig: Any) -> None:
    driver, owners, journal = rig
    driver.on_status(SyncStatus.RESYNC)
    driver.on_updates([endpoint_update(1), endpoint_update(2)])
    driver.on_updates([endpoint_update(3)])
    wait_for(lambda: driver._events.empty(), 5)
    assert journal == [] and owners.routes.kernel == {}
    driver.on_status(SyncStatus.IN_SYNC)
    wait_for(lambda: journal, 5, message="first apply")
    assert journal[:6] == ["ipsets", "routes", "interfaces", "filter", "nat",
                           "ipsets-deletions"]
    assert set(owners.routes.kernel) >= {"198.18.1.1/32", "198.18.1.2/32", "198.18.1.3/32"}
    assert "felix-from-1" in owners.tables[(4, "filter")].kernel


def test_changes_wait_while_resyncing_and_failures_retry(rig: Any) -> None:
    driver, owners, journal = rig
    driver.on_status(SyncStatus.IN_SYNC)
    driver.on_updates([endpoint_update(1)])
    wait_for(lambda: "198.18.1.1/32" in owners.routes.kernel, 5)
    driver.on_status(SyncStatus.RESYNC)  # etcd went away: keep the dataplane as it is
    driver.on_updates([Update(endpoint_update(1).key, None, 9)])
    wait_for(lambda: owners.routes.resyncs >= 1, 5, message="periodic refresh still runs")
    assert "198.18.1.1/32" in owners.routes.kernel
    driver.on_status(SyncStatus.IN_SYNC)
    wait_for(lambda: "198.18.1.1/32" not in owners.routes.kernel, 5)
    owners.tables[(4, "filter")].fail_next = True
    driver.on_updates([endpoint_update(5)])
    wait_for(lambda: "felix-from-5" in owners.tables[(4, "filter")].kernel, 5,
             message="retried after the failure")
    assert driver.metrics.errors.labels("iptables-v4-filter")._value.get() == 1


def test_config_change_in_etcd_requests_restart(rig: Any) -> None:
    driver, _, _ = rig
    driver.on_status(SyncStatus.IN_SYNC)
    driver.on_updates([Update(keyspace.global_config_key("LogSeverityScreen"), "INFO", 3)])
    wait_for(lambda: driver.applies > 0, 5)
    assert not driver.restart_requested  # same as the default: nothing changed
    driver.on_updates([Update(keyspace.host_config_key("h1", "InterfacePrefix"), "tap", 4)])
    wait_for(lambda: driver.restart_requested, 5)


def test_an_update_that_changes_nothing_here_applies_nothing() -> None:
    """Most of what a felix hears is about other hosts: an endpoint there that is in no
    set in use here costs its parse and no dataplane apply; one that joins a set in use
    reaches the ipset owner as a one-member delta."""
    journal: list[str] = []
    owners = fake_owners(journal)
    env = {"FELIX_FELIXHOSTNAME": "h1", "FELIX_REFRESHINTERVAL": "3600"}
    driver = Driver(load_config(env=env), owners, CalcGraph(CalcSettings("h1", ipv6=False)),
                    env=env)
    thread = threading.Thread(target=driver.run, daemon=True)
    thread.start()

    def remote(i: int, profile: str) -> Update:
        key = keyspace.workload_endpoint_key("h2", "k8s", f"r{i}", "eth0")
        return Update(key, json.dumps({"name": f"cali{i}", "ipv4_nets": [f"198.18.2.{i}/32"],
                                       "profile_ids": [profile]}), 100 + i)

    try:
        driver.on_status(SyncStatus.IN_SYNC)
        local = json.dumps({"name": "cali1", "ipv4_nets": ["198.18.1.1/32"],
                            "profile_ids": ["web"]})
        driver.on_updates([Update(keyspace.workload_endpoint_key("h1", "k8s", "w1", "eth0"),
                                  local, 1),
                           Update(keyspace.profile_key("web", "rules"), json.dumps(
                               {"inbound_rules": [{"action": "allow", "src_tag": "web"}]}), 2),
                           Update(keyspace.profile_key("web", "tags"), json.dumps(["web"]), 3)])
        ipsets = owners.ipsets[4]
        wait_for(lambda: ipsets.kernel.get("felix-v4-web") is not None, 5)
        applies, flushes = driver.applies, driver.flushes
        driver.on_updates([remote(1, "db")])  # in no set in use here
        wait_for(lambda: driver.flushes > flushes, 5, message="the update handled")
        assert driver.applies == applies
        driver.on_updates([remote(2, "web")])  # joins the tag set in use
        wait_for(lambda: "198.18.2.2" in ipsets.kernel["felix-v4-web"].members, 5)
        assert driver.applies == applies + 1
        assert ipsets.kernel["felix-v4-web"].members == {"198.18.1.1", "198.18.2.2"}
    finally:
        driver.stop()
        thread.join(10)


@pytest.mark.parametrize("follows", [False, True])
def test_felix_follows_the_blocks_only_while_a_pool_is_encapsulated(follows: bool) -> None:
    """The blocks (the largest values in etcd, rewritten by every workload added
    anywhere) matter only to the tunnels: felix started without them re-executes itself
    when a pool becomes encapsulated, and one started with them when none is left."""
    from felix.driver import encapsulated_pools, felix_prefixes

    assert keyspace.BLOCK_DIR in felix_prefixes(True)
    assert keyspace.BLOCK_DIR not in felix_prefixes(False)
    plain = (keyspace.pool_key("198.19.0.0/16"), json.dumps({"cidr": "198.19.0.0/16"}))
    vxlan = (keyspace.pool_key("198.18.0.0/16"),
             json.dumps({"cidr": "198.18.0.0/16", "vxlan": "vxlan.calico"}))
    mismatched = (keyspace.pool_key("198.20.0.0/16"),  # invalid: the calculation skips it
                  json.dumps({"cidr": "198.21.0.0/16", "vxlan": "vxlan.calico"}))
    assert not encapsulated_pools([plain, mismatched]) and encapsulated_pools([plain, vxlan])
    env = {"FELIX_FELIXHOSTNAME": "h1", "FELIX_REFRESHINTERVAL": "3600"}
    driver = Driver(load_config(env=env), fake_owners([]),
                    CalcGraph(CalcSettings("h1", ipv6=False)), env=env, follows_blocks=follows)
    thread = threading.Thread(target=driver.run, daemon=True)
    thread.start()
    try:
        first = [Update(*vxlan, 1)] if follows else [Update(*plain, 1), Update(*mismatched, 2)]
        driver.on_updates(first)
        driver.on_status(SyncStatus.IN_SYNC)
        wait_for(lambda: driver.applies > 0, 5, message="the first apply")
        assert not driver.restart_requested  # the prefixes match the pools
        change = Update(vxlan[0], None, 3) if follows else Update(*vxlan, 3)
        driver.on_updates([change])
        wait_for(lambda: driver.restart_requested, 5, message="a restart with other prefixes")
    finally:
        driver.stop()
        thread.join(10)
