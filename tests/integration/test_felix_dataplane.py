"""Functional tests of felix's dataplane owners against the real kernel, in namespaces.

Each test creates its own namespace (`flxd-...`), applies desired state through an
owner, reads the kernel back (iptables-save, ipset save, netlink dumps, /proc/sys) and
checks it; counts of commands come from a runner that records what it really ran.
"""

from __future__ import annotations

import errno
import subprocess
import threading
from collections.abc import Iterator, Sequence

import pytest

from felix.dataplane.cmd import CommandFailed, CommandRunner
from felix.dataplane.interfaces import InterfaceEvent, Interfaces, InterfaceWatcher
from felix.dataplane.ipsets import IPSets, temp_name
from felix.dataplane.iptables import IptablesTable
from felix.dataplane.routes import Routes
from felix.dataplane.types import (
    FELIX_ROUTE_PROTO,
    Chain,
    InterfaceState,
    IPSetState,
    NeighbourState,
    RouteState,
    Rule,
    TableState,
)
from libcalico.errors import ValidationError
from netsim.netns import Namespace, namespace, veth
from netsim.wait import wait_for
from rtnl.codec import NetlinkError, route_request
from rtnl.sock import NetlinkSocket
from tests.support.netlink import CountingNetlink

pytestmark = [pytest.mark.root]


class RecordingRunner(CommandRunner):
    """A real runner that also remembers every command it ran and its input."""

    def __init__(self, netns: str) -> None:
        super().__init__(netns=netns, lock_wait=5)
        self.calls: list[tuple[list[str], str | None]] = []

    def run(self, cmd: Sequence[str], input: str | None = None) -> str:  # noqa: A002
        self.calls.append((list(cmd), input))
        return super().run(cmd, input=input)

    def take(self) -> list[tuple[list[str], str | None]]:
        calls, self.calls = self.calls, []
        return calls



@pytest.fixture
def host() -> Iterator[Namespace]:
    with namespace("flxd-h") as ns:
        yield ns


def save(ns: Namespace, table: str = "filter", version: int = 4) -> str:
    tool = "iptables-save" if version == 4 else "ip6tables-save"
    return ns.exec(tool, "-t", table).stdout


def chain_rules(text: str, chain: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"-A {chain} ")]


def felix_hashes(text: str, chain: str) -> list[str]:
    out = []
    for line in chain_rules(text, chain):
        out.append(line.split('"felix:', 1)[1].split('"', 1)[0] if '"felix:' in line else "")
    return out


def filter_state(version: int = 4, extra_rule: Rule | None = None) -> TableState:
    src = "198.18.0.5" if version == 4 else "fd00::5"
    to_ep = Chain("felix-to-ep1", (
        Rule("-m conntrack --ctstate INVALID", "-j DROP"),
        Rule("-m conntrack --ctstate RELATED,ESTABLISHED", "-j ACCEPT"),
        Rule(f"-s {src} -p tcp --dport 80", "-j ACCEPT", comment="allow web"),
        *((extra_rule,) if extra_rule else ()),
        Rule("", "-j DROP", comment="default drop"),
    ))
    fwd = Chain("felix-FORWARD", (
        Rule("-o cali+", "-g felix-TO-ENDPOINT"),
        Rule("-i cali+", "-j ACCEPT"),
    ))
    dispatch = Chain("felix-TO-ENDPOINT", (Rule("-o caliep1", "-g felix-to-ep1"),
                                           Rule("", "-j DROP")))
    inp = Chain("felix-INPUT", (Rule("-i cali+", "-j DROP"),))
    chains = {c.name: c for c in (to_ep, fwd, dispatch, inp)}
    return TableState(version, "filter", chains, {
        "FORWARD": (Rule("", "-j felix-FORWARD", comment="to felix's forward chain"),),
        "INPUT": (Rule("", "-j felix-INPUT"),),
    })


def assert_table_matches(text: str, state: TableState) -> None:
    for name, chain in state.chains.items():
        assert felix_hashes(text, name) == list(chain.rule_hashes()), name
    for kernel_chain, rules in state.base_jumps.items():
        want = list(Chain(kernel_chain, rules).rule_hashes())
        have = felix_hashes(text, kernel_chain)
        assert have[:len(want)] == want
        assert not any(have[len(want):])


# ---- iptables -------------------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 6])
def test_iptables_apply_is_visible_and_second_apply_is_free(host: Namespace, version: int
                                                            ) -> None:
    tool = "iptables" if version == 4 else "ip6tables"
    foreign = "198.18.9.9" if version == 4 else "fd00::9:9"
    host.exec(tool, "-A", "INPUT", "-s", foreign, "-j", "ACCEPT")  # not felix's
    runner = RecordingRunner(host.name)
    owner = IptablesTable(version, "filter", runner)
    state = filter_state(version)
    owner.set_state(state)
    assert owner.apply() is True
    text = save(host, version=version)
    assert_table_matches(text, state)
    # the base jump went above the existing non-felix rule, which is still there
    assert felix_hashes(text, "INPUT") == [Chain("INPUT", state.base_jumps["INPUT"])
                                           .rule_hashes()[0], ""]
    assert any(foreign in line for line in chain_rules(text, "INPUT"))
    assert any("allow web" in line for line in chain_rules(text, "felix-to-ep1"))
    calls = runner.take()
    assert [c[0][0] for c in calls] == [f"{tool}-save", f"{tool}-restore"]
    assert "-w" in calls[1][0]

    assert owner.apply() is False
    assert runner.take() == []
    # a fresh owner (felix restarted) only reads back
    fresh = IptablesTable(version, "filter", runner)
    fresh.set_state(state)
    assert fresh.apply() is False
    assert [c[0][0] for c in runner.take()] == [f"{tool}-save"]
    assert save(host, version=version).count("felix:") == text.count("felix:")


def test_iptables_incremental_update_rewrites_only_dirty_chains(host: Namespace) -> None:
    runner = RecordingRunner(host.name)
    owner = IptablesTable(4, "filter", runner)
    owner.set_state(filter_state())
    owner.apply()
    runner.take()
    changed = Chain("felix-to-ep1", (Rule("-p udp --dport 53", "-j ACCEPT"), Rule("", "-j DROP")))
    owner.set_chain(changed)
    owner.set_chain(Chain("felix-new", (Rule("", "-j RETURN"),)))
    assert owner.apply()
    (cmd, payload), = runner.take()
    assert payload is not None
    declared = sorted(line.split()[0][1:] for line in payload.splitlines()
                      if line.startswith(":"))
    assert declared == ["felix-new", "felix-to-ep1"]
    text = save(host)
    assert felix_hashes(text, "felix-to-ep1") == list(changed.rule_hashes())
    assert felix_hashes(text, "felix-new") == list(Chain("felix-new", (Rule("", "-j RETURN"),))
                                                   .rule_hashes())


def test_iptables_resync_repairs_tampering_and_removes_stale(host: Namespace) -> None:
    ns = host
    ns.exec("iptables", "-N", "TEST-KEEP")
    ns.exec("iptables", "-A", "TEST-KEEP", "-j", "RETURN")
    ns.exec("iptables", "-N", "felix-stale")  # left over from an older felix
    ns.exec("iptables", "-A", "felix-stale", "-m", "comment", "--comment", "felix:old",
            "-j", "DROP")
    runner = RecordingRunner(ns.name)
    owner = IptablesTable(4, "filter", runner)
    state = filter_state()
    owner.set_state(state)
    owner.apply()
    text = save(ns)
    assert ":felix-stale" not in text and ":TEST-KEEP" in text

    # tamper: drop the INPUT jump and delete the chain, add a stray rule, duplicate a jump
    ns.exec("iptables", "-D", "INPUT", "1")
    ns.exec("iptables", "-F", "felix-INPUT")
    ns.exec("iptables", "-X", "felix-INPUT")
    ns.exec("iptables", "-I", "felix-to-ep1", "2", "-j", "ACCEPT")
    ns.exec("iptables-restore", "--noflush",
            input=f"*filter\n{chain_rules(text, 'FORWARD')[0]}\nCOMMIT\n")
    ns.exec("iptables", "-A", "TEST-KEEP", "-j", "ACCEPT")
    assert owner.apply() is False  # nothing noticed until the refresh
    owner.mark_resync()
    assert owner.apply() is True
    repaired = save(ns)
    assert_table_matches(repaired, state)
    assert len(chain_rules(repaired, "FORWARD")) == 1
    assert "forward chain" in chain_rules(repaired, "FORWARD")[0]
    assert chain_rules(repaired, "TEST-KEEP") == ["-A TEST-KEEP -j RETURN",
                                                  "-A TEST-KEEP -j ACCEPT"]
    owner.mark_resync()
    runner.take()
    assert owner.apply() is False
    assert len(runner.take()) == 1  # only the read-back


def test_iptables_chain_removed_only_when_unreferenced(host: Namespace) -> None:
    runner = RecordingRunner(host.name)
    owner = IptablesTable(4, "filter", runner)
    owner.set_state(filter_state())
    owner.apply()
    owner.remove_chain("felix-to-ep1")  # still referenced by felix-TO-ENDPOINT
    owner.apply()
    assert ":felix-to-ep1 " in save(host)
    owner.set_chain(Chain("felix-TO-ENDPOINT", (Rule("", "-j DROP"),)))
    owner.apply()
    text = save(host)
    assert ":felix-to-ep1 " not in text
    owner.set_base_jumps("INPUT", ())
    owner.remove_chain("felix-INPUT")
    owner.apply()
    text = save(host)
    assert ":felix-INPUT " not in text and felix_hashes(text, "INPUT") == []
    assert owner.in_sync


def test_iptables_failed_apply_raises_and_next_apply_rewrites_all(host: Namespace) -> None:
    runner = RecordingRunner(host.name)
    owner = IptablesTable(4, "filter", runner)
    good = filter_state()
    owner.set_state(good)
    owner.apply()
    before = save(host)
    bad = Rule("-m set --match-set felix-v4-missing src", "-j ACCEPT")
    owner.set_state(filter_state(extra_rule=bad))
    with pytest.raises(CommandFailed) as info:
        owner.apply()
    err = info.value
    assert err.returncode != 0 and err.stderr and "felix-v4-missing" in (err.input or "")
    assert "iptables-restore" in " ".join(err.cmd)
    assert felix_hashes(save(host), "felix-to-ep1") == felix_hashes(before, "felix-to-ep1")
    runner.take()
    owner.set_state(good)
    owner.apply()
    calls = runner.take()
    assert [c[0][0] for c in calls] == ["iptables-save", "iptables-restore"]
    payload = calls[1][1] or ""
    assert sorted(line.split()[0][1:] for line in payload.splitlines()
                  if line.startswith(":")) == sorted(good.chains)
    assert_table_matches(save(host), good)


@pytest.mark.parametrize("version", [4, 6])
def test_iptables_nat_and_raw_tables(host: Namespace, version: int) -> None:
    runner = RecordingRunner(host.name)
    pool = "198.18.64.0/18" if version == 4 else "fd00:64::/64"
    nat = IptablesTable(version, "nat", runner)
    nat_state = TableState(version, "nat", {
        "felix-POSTROUTING": Chain("felix-POSTROUTING", (
            Rule(f"-s {pool} ! -d {pool}", "-j MASQUERADE"),)),
        "felix-PREROUTING": Chain("felix-PREROUTING", ()),
    }, {"POSTROUTING": (Rule("", "-j felix-POSTROUTING"),),
        "PREROUTING": (Rule("", "-j felix-PREROUTING"),)})
    nat.set_state(nat_state)
    nat.apply()
    raw = IptablesTable(version, "raw", runner)
    raw_state = TableState(version, "raw", {
        "felix-PREROUTING": Chain("felix-PREROUTING", (Rule("-i cali+", "-j RETURN"),))},
        {"PREROUTING": (Rule("", "-j felix-PREROUTING"),)})
    raw.set_state(raw_state)
    raw.apply()
    assert_table_matches(save(host, "nat", version), nat_state)
    assert_table_matches(save(host, "raw", version), raw_state)
    assert "MASQUERADE" in save(host, "nat", version)
    assert ":felix-" not in save(host, "filter", version)
    raw.set_state(TableState(version, "raw"))
    raw.apply()
    assert "felix" not in save(host, "raw", version)


def test_iptables_rejects_bad_names(host: Namespace) -> None:
    owner = IptablesTable(4, "filter", CommandRunner(host.name))
    with pytest.raises(ValidationError, match="chain name"):
        owner.set_chain(Chain("INPUT", ()))
    with pytest.raises(ValidationError, match="chain name"):
        owner.set_chain(Chain("felix-" + "x" * 40, ()))
    with pytest.raises(ValidationError, match="table"):
        IptablesTable(4, "bogus", CommandRunner(host.name))


# ---- ipsets ---------------------------------------------------------------------------

def kernel_sets(ns: Namespace) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in ns.exec("ipset", "save").stdout.splitlines():
        parts = line.split()
        if parts[0] == "create":
            out[parts[1]] = set()
        elif parts[0] == "add":
            out[parts[1]].add(parts[2])
    return out


def v4_sets() -> list[IPSetState]:
    return [IPSetState("felix-v4-web", 4, members=frozenset({"198.18.1.1", "198.18.1.2"})),
            IPSetState("felix-v4-db", 4, members=frozenset({"198.18.2.1/32"})),
            IPSetState("felix-v4-pools", 4, "hash:net", frozenset({"198.18.64.0/18"}))]


def test_ipsets_apply_delta_and_idempotence(host: Namespace) -> None:
    runner = RecordingRunner(host.name)
    owner = IPSets(4, runner)
    owner.set_state(v4_sets())
    assert owner.apply()
    sets = kernel_sets(host)
    assert sets["felix-v4-web"] == {"198.18.1.1", "198.18.1.2"}
    assert sets["felix-v4-db"] == {"198.18.2.1"}
    assert sets["felix-v4-pools"] == {"198.18.64.0/18"}
    assert not [n for n in sets if "tmp" in n]
    assert [c[0] for c in runner.take()] == [["ipset", "save"], ["ipset", "-exist", "restore"]]
    assert owner.apply() is False and owner.apply_deletions() is False
    assert runner.take() == []

    owner.set_ipset(IPSetState("felix-v4-web", 4, members=frozenset({"198.18.1.2",
                                                                     "198.18.1.3"})))
    owner.apply()
    (_cmd, payload), = runner.take()
    assert sorted((payload or "").split("\n")) == ["", "add felix-v4-web 198.18.1.3",
                                                   "del felix-v4-web 198.18.1.1"]
    assert kernel_sets(host)["felix-v4-web"] == {"198.18.1.2", "198.18.1.3"}

    fresh = IPSets(4, runner)
    fresh.set_state(owner_sets := [IPSetState("felix-v4-web", 4, members=frozenset(
        {"198.18.1.2", "198.18.1.3"}))] + v4_sets()[1:])
    assert fresh.apply() is False
    assert [c[0] for c in runner.take()] == [["ipset", "save"]]
    assert {s.name for s in owner_sets} == fresh.names


def test_ipsets_member_deltas_write_only_the_change(host: Namespace) -> None:
    """A set changed by its members (as the calculation hands over a remote endpoint's
    change) is written as that change, merged over several updates, whatever its size;
    a failed restore or a refresh still ends with the kernel holding exactly the set."""
    runner = RecordingRunner(host.name)
    owner = IPSets(4, runner)
    big = frozenset(f"198.18.{i // 250}.{i % 250 + 1}" for i in range(2000))
    owner.set_ipset(IPSetState("felix-v4-all", 4, members=big))
    owner.apply()
    runner.take()
    owner.update_members("felix-v4-all", {"198.19.0.1", "198.19.0.2"}, {"198.18.0.1"})
    owner.update_members("felix-v4-all", {"198.18.0.1"}, {"198.19.0.2", "198.18.0.2"})
    owner.update_members("felix-v4-all", {"198.19.0.1"}, {"198.18.99.99"})  # no-ops
    owner.apply()
    (_cmd, payload), = runner.take()
    assert sorted(filter(None, (payload or "").split("\n"))) == [
        "add felix-v4-all 198.19.0.1", "del felix-v4-all 198.18.0.2"]
    want = (big | {"198.19.0.1"}) - {"198.18.0.2"}
    assert kernel_sets(host)["felix-v4-all"] == want
    host.exec("ipset", "del", "felix-v4-all", "198.18.0.3")  # tampering, then a delta
    owner.update_members("felix-v4-all", {"198.19.0.3"}, ())
    owner.mark_resync()  # the refresh compares the whole set with the kernel
    owner.apply()
    assert kernel_sets(host)["felix-v4-all"] == want | {"198.19.0.3"}
    with pytest.raises(ValidationError, match="not desired"):
        owner.update_members("felix-v4-none", {"198.19.0.1"}, ())


def test_ipsets_resync_repairs_and_deletes_only_stale_felix_sets(host: Namespace) -> None:
    host.exec("ipset", "create", "test-keep", "hash:ip")
    host.exec("ipset", "create", "felix-v4-stale", "hash:ip")
    host.exec("ipset", "create", "felix-v6-other", "hash:ip", "family", "inet6")
    runner = RecordingRunner(host.name)
    owner = IPSets(4, runner)
    owner.set_state(v4_sets())
    owner.apply()
    assert "felix-v4-stale" in kernel_sets(host)  # deletions wait for apply_deletions
    assert owner.apply_deletions()
    sets = kernel_sets(host)
    assert "felix-v4-stale" not in sets
    assert "test-keep" in sets and "felix-v6-other" in sets

    host.exec("ipset", "flush", "felix-v4-web")
    host.exec("ipset", "add", "felix-v4-db", "198.18.2.99")
    host.exec("ipset", "destroy", "felix-v4-pools")
    owner.mark_resync()
    owner.apply()
    sets = kernel_sets(host)
    assert sets["felix-v4-web"] == {"198.18.1.1", "198.18.1.2"}
    assert sets["felix-v4-db"] == {"198.18.2.1"}
    assert sets["felix-v4-pools"] == {"198.18.64.0/18"}

    owner.remove_ipset("felix-v4-db")
    owner.apply()
    assert "felix-v4-db" in kernel_sets(host)
    owner.apply_deletions()
    assert "felix-v4-db" not in kernel_sets(host)


def test_ipsets_failed_apply_then_full_rewrite(host: Namespace) -> None:
    # a set of the other family squats the name: creating it fails
    host.exec("ipset", "create", "felix-v4-web", "hash:ip", "family", "inet6")
    runner = RecordingRunner(host.name)
    owner = IPSets(4, runner)
    owner.set_state(v4_sets())
    with pytest.raises(CommandFailed) as info:
        owner.apply()
    assert info.value.stderr and "felix-v4-web" in (info.value.input or "")
    host.exec("ipset", "destroy", "felix-v4-web")
    runner.take()
    owner.apply()
    calls = runner.take()
    assert [c[0][1] for c in calls] == ["save", "-exist"]
    payload = calls[1][1] or ""
    for s in v4_sets():
        assert f"swap {temp_name(s.name)} {s.name}" in payload
    sets = kernel_sets(host)
    assert sets["felix-v4-web"] == {"198.18.1.1", "198.18.1.2"}
    assert not [n for n in sets if n.startswith("felix-tmp-")]


def test_ipsets_ipv6_and_name_limits(host: Namespace) -> None:
    runner = RecordingRunner(host.name)
    owner = IPSets(6, runner)
    owner.set_state([IPSetState("felix-v6-web", 6, members=frozenset({"fd00:0::1", "fd00::2"}))])
    owner.apply()
    assert kernel_sets(host)["felix-v6-web"] == {"fd00::1", "fd00::2"}
    long_name = "felix-v6-" + "x" * 22
    assert len(long_name) == 31 and len(temp_name(long_name)) <= 31
    owner.set_ipset(IPSetState(long_name, 6, members=frozenset({"fd00::3"})))
    owner.apply()
    assert kernel_sets(host)[long_name] == {"fd00::3"}
    with pytest.raises(ValidationError, match="ipset name"):
        owner.set_ipset(IPSetState(long_name + "y", 6))
    with pytest.raises(ValidationError, match="member"):
        owner.set_ipset(IPSetState("felix-v6-bad", 6, members=frozenset({"198.18.0.1"})))


# ---- routes and neighbours ------------------------------------------------------------

def felix_routes(ns: Namespace, version: int = 4) -> dict[str, str]:
    out = {}
    text = ns.ip(f"-{version}", "route", "show", "proto", str(FELIX_ROUTE_PROTO)).stdout
    for line in text.splitlines():
        parts = line.split()
        out[parts[0]] = parts[parts.index("dev") + 1]
        assert "scope link" in line or version == 6
    return out


def make_workload_ifaces(ns: Namespace, names: list[str], up: bool = True) -> None:
    for i, name in enumerate(names):
        veth(ns, name, None, f"flxw{i}{name[-4:]}", up=up)


def test_routes_apply_resync_and_stale(host: Namespace) -> None:
    make_workload_ifaces(host, ["caliaaaa", "calibbbb"])
    host.ip("route", "add", "198.18.50.0/24", "dev", "caliaaaa")  # not felix's
    host.ip("route", "add", "198.18.51.1", "dev", "caliaaaa", "proto", "80")  # stale felix
    nl = CountingNetlink(host.name)
    routes = Routes(host.name, nl=nl)
    try:
        routes.set_routes([RouteState("198.18.1.1/32", "caliaaaa"),
                           RouteState("198.18.1.2", "calibbbb"),
                           RouteState("fd00::1/128", "caliaaaa")])
        assert routes.apply()
        assert felix_routes(host) == {"198.18.1.1": "caliaaaa", "198.18.1.2": "calibbbb"}
        assert felix_routes(host, 6) == {"fd00::1": "caliaaaa"}
        assert "198.18.50.0/24" in host.ip("route").stdout
        assert routes.in_sync and not routes.pending
        sent = nl.requests
        assert routes.apply() is False
        routes.mark_resync()
        assert routes.apply() is False
        assert nl.requests == sent  # a resync of an untampered kernel writes nothing

        host.ip("route", "del", "198.18.1.1", "dev", "caliaaaa")
        host.ip("route", "replace", "198.18.1.2", "dev", "caliaaaa", "proto", "80")
        routes.mark_resync()
        routes.apply()
        assert felix_routes(host) == {"198.18.1.1": "caliaaaa", "198.18.1.2": "calibbbb"}

        routes.remove_route("198.18.1.2/32")
        routes.apply()
        assert felix_routes(host) == {"198.18.1.1": "caliaaaa"}
        routes.set_routes([RouteState("198.18.1.1/32", "caliaaaa")])
        routes.apply()
        assert felix_routes(host, 6) == {}
        assert "198.18.50.0/24" in host.ip("route").stdout
    finally:
        routes.close()


def test_routes_wait_for_missing_or_down_interface(host: Namespace) -> None:
    routes = Routes(host.name)
    try:
        routes.set_routes([RouteState("198.18.3.1/32", "calicccc"),
                           RouteState("fd00::3/128", "calicccc")])
        routes.set_neighbours([NeighbourState("198.18.3.1", "ee:ee:ee:00:00:03", "calicccc")])
        routes.apply()
        assert routes.pending_interfaces == {"calicccc"}
        assert felix_routes(host) == {}
        make_workload_ifaces(host, ["calicccc"], up=False)
        routes.on_interface_update("calicccc")
        routes.apply()
        assert felix_routes(host) == {} and len(routes.pending) == 2
        host.ip("link", "set", "calicccc", "up")
        host.ip("link", "set", "flxw0cccc", "up")
        wait_for(lambda: "LOWER_UP" in host.ip("link", "show", "calicccc").stdout, 5,
                 message="calicccc up")
        routes.on_interface_update("calicccc")
        routes.apply()
        assert felix_routes(host) == {"198.18.3.1": "calicccc"}
        assert felix_routes(host, 6) == {"fd00::3": "calicccc"}
        assert not routes.pending and not routes.pending_interfaces
        assert "ee:ee:ee:00:00:03 PERMANENT" in host.ip("neigh", "show", "dev",
                                                        "calicccc").stdout
    finally:
        routes.close()


def test_neighbours_added_and_removed(host: Namespace) -> None:
    make_workload_ifaces(host, ["calidddd"])
    veth(host, "other0", None, "other1")
    host.ip("neigh", "add", "198.18.4.9", "lladdr", "ee:00:00:00:00:09", "dev", "other0",
            "nud", "permanent")  # not felix's
    routes = Routes(host.name)
    try:
        routes.set_neighbours([NeighbourState("198.18.4.1", "EE:EE:EE:00:00:01", "calidddd"),
                               NeighbourState("fd00::4:1", "ee:ee:ee:00:00:01", "calidddd")])
        routes.apply()
        text = host.ip("neigh", "show", "dev", "calidddd").stdout
        assert "198.18.4.1 lladdr ee:ee:ee:00:00:01 PERMANENT" in text
        assert "fd00::4:1 lladdr ee:ee:ee:00:00:01 PERMANENT" in text
        host.ip("neigh", "del", "198.18.4.1", "dev", "calidddd")
        routes.mark_resync()
        routes.apply()
        assert "198.18.4.1 " in host.ip("neigh", "show", "dev", "calidddd").stdout
        routes.set_neighbours([])
        routes.apply()
        assert "PERMANENT" not in host.ip("neigh", "show", "dev", "calidddd").stdout
        assert "198.18.4.9" in host.ip("neigh", "show", "dev", "other0").stdout
        assert routes.in_sync
    finally:
        routes.close()


def test_netlink_batch_reports_errno_per_request(host: Namespace) -> None:
    nl = NetlinkSocket(host.name)
    try:
        make_workload_ifaces(host, ["calieeee"])
        index = nl.get_links(["calieeee"])["calieeee"].ifindex
        results = nl.request_batch([
            route_request("198.18.5.1/32", proto=80, oif=index),
            route_request("198.18.5.2/32", proto=80, oif=index, delete=True),
            route_request("198.18.5.3/32", proto=80, oif=999999)])
        assert [code for code, _ in results] == [0, errno.ESRCH, errno.ENODEV]
    finally:
        nl.close()


# ---- interfaces -----------------------------------------------------------------------

def sysctl(ns: Namespace, path: str) -> str:
    return ns.exec("cat", f"/proc/sys/net/{path}").stdout.strip()


def test_interface_sysctls_and_proxy_ndp(host: Namespace) -> None:
    make_workload_ifaces(host, ["califfff", "caligggg"])
    host.exec("sysctl", "-qw", "net.ipv4.conf.califfff.rp_filter=0")
    owner = Interfaces(host.name)
    try:
        owner.set_interfaces([
            InterfaceState("califfff", ipv4=True, ipv6=True, proxy_ndp=("fd00::1",)),
            InterfaceState("caligggg", ipv4=True),
            InterfaceState("calimissing", ipv4=True),
        ])
        assert owner.apply()
        for name in ("califfff", "caligggg"):
            assert sysctl(host, f"ipv4/conf/{name}/proxy_arp") == "1"
            assert sysctl(host, f"ipv4/neigh/{name}/proxy_delay") == "0"
            assert sysctl(host, f"ipv4/conf/{name}/rp_filter") == "1"
            assert sysctl(host, f"ipv4/conf/{name}/forwarding") == "1"
            assert sysctl(host, f"ipv4/conf/{name}/route_localnet") == "1"
        assert sysctl(host, "ipv6/conf/califfff/proxy_ndp") == "1"
        assert sysctl(host, "ipv6/conf/califfff/accept_ra") == "0"
        assert sysctl(host, "ipv6/conf/califfff/forwarding") == "1"
        assert sysctl(host, "ipv6/conf/caligggg/proxy_ndp") == "0"
        assert "fd00::1 dev califfff proxy" in host.ip("-6", "neigh", "show", "proxy").stdout
        assert owner.pending == {"calimissing"}
        # the test process's own namespace has no such interface: nothing leaked there
        assert subprocess.run(["test", "-e", "/proc/sys/net/ipv4/conf/califfff"]
                              ).returncode != 0

        host.exec("sysctl", "-qw", "net.ipv4.conf.caligggg.proxy_arp=0")
        owner.mark_resync()
        owner.apply()
        assert sysctl(host, "ipv4/conf/caligggg/proxy_arp") == "1"
        owner.set_interface(InterfaceState("califfff", ipv4=True, ipv6=True))
        owner.apply()
        assert "fd00::1" not in host.ip("-6", "neigh", "show", "proxy").stdout
        assert owner.in_sync
    finally:
        owner.close()


def test_interface_watcher_reports_events(host: Namespace) -> None:
    make_workload_ifaces(host, ["calihhhh"])
    events: list[InterfaceEvent] = []
    lock = threading.Lock()

    def on_event(event: InterfaceEvent) -> None:
        with lock:
            events.append(event)

    def seen(kind: str, name: str) -> bool:
        with lock:
            return any(e.kind == kind and e.ifname == name for e in events)

    watcher = InterfaceWatcher(on_event, netns=host.name, prefixes=("cali",))
    try:
        initial = watcher.start()
        assert initial == {"calihhhh": True}
        assert seen("added", "calihhhh")
        veth(host, "calikkkk", None, "flxwkkkk", up=False)
        wait_for(lambda: seen("added", "calikkkk"), 5, message="added event")
        host.ip("link", "set", "calikkkk", "up")
        host.ip("link", "set", "flxwkkkk", "up")
        wait_for(lambda: seen("up", "calikkkk"), 5, message="up event")
        host.ip("link", "set", "calikkkk", "down")
        wait_for(lambda: seen("down", "calikkkk"), 5, message="down event")
        host.ip("link", "del", "calikkkk")
        wait_for(lambda: seen("removed", "calikkkk"), 5, message="removed event")
        assert "calikkkk" not in watcher.interfaces
        with lock:
            assert not [e for e in events if not e.ifname.startswith("cali")]
    finally:
        watcher.stop()


def test_interface_watcher_resyncs_after_lost_events(host: Namespace) -> None:
    seen: set[str] = set()
    lock = threading.Lock()
    gate = threading.Event()
    blocking = threading.Event()

    def on_event(event: InterfaceEvent) -> None:
        if blocking.is_set():
            gate.wait(10)  # a slow consumer while the kernel keeps sending
        with lock:
            if event.kind == "added":
                seen.add(event.ifname)

    watcher = InterfaceWatcher(on_event, netns=host.name, prefixes=("cali",), rcvbuf=4096)
    try:
        watcher.start()
        blocking.set()
        names = [f"cali{i:04d}" for i in range(60)]
        host.ip_batch([f"link add {n} type veth peer name flxw{n[4:]}" for n in names])
        gate.set()
        wait_for(lambda: watcher.resyncs >= 1, 10, message="a resync after ENOBUFS")
        wait_for(lambda: set(names) <= seen, 10, message="every interface reported")
        assert set(names) <= set(watcher.interfaces)
    finally:
        gate.set()
        watcher.stop()


def test_iptables_large_rewrite_is_split_in_dependency_order(host: Namespace) -> None:
    runner = RecordingRunner(host.name)
    owner = IptablesTable(4, "filter", runner, max_chains_per_restore=2)
    leaves = [Chain(f"felix-leaf{i}", (Rule("", "-j RETURN"),)) for i in range(5)]
    middle = Chain("felix-middle", tuple(Rule(f"-s 198.18.7.{i}", f"-j felix-leaf{i}")
                                         for i in range(5)))
    top = Chain("felix-FORWARD", (Rule("", "-j felix-middle"),))
    state = TableState(4, "filter", {c.name: c for c in (top, middle, *leaves)},
                       {"FORWARD": (Rule("", "-j felix-FORWARD"),)})
    owner.set_state(state)
    owner.apply()
    restores = [c for c in runner.take() if c[0][0] == "iptables-restore"]
    assert len(restores) == 5  # 7 chains in pieces of 2, then the base jump
    assert "-I FORWARD 1" in (restores[-1][1] or "")
    assert_table_matches(save(host), state)

    smaller = TableState(4, "filter", {"felix-FORWARD": Chain("felix-FORWARD", ())},
                         {"FORWARD": (Rule("", "-j felix-FORWARD"),)})
    owner.set_state(smaller)
    owner.apply()
    text = save(host)
    assert_table_matches(text, smaller)
    assert "felix-leaf" not in text and "felix-middle" not in text
    assert owner.in_sync


# --- the nf_tables generation lets a refresh skip the iptables read-back -----------------------


def test_refresh_reads_iptables_back_only_after_an_outside_change(host: Namespace) -> None:
    from felix.config import load_config
    from felix.dataplane.apply import Owners

    owners = Owners.create(load_config(env={}), (4,), netns=host.name)
    try:
        assert owners.generation.enabled  # this machine's iptables is the nf_tables one
        table = owners.tables[(4, "filter")]
        table.set_chain(Chain("felix-gen-a", (Rule("-p tcp", "-j ACCEPT"),)))
        table.set_base_jumps("FORWARD", [Rule("", "-j felix-gen-a")])
        assert owners.apply() == {}
        assert owners.generation.known is not None  # first apply read back every table
        # Felix's own later writes keep the generation accounted for.
        table.set_chain(Chain("felix-gen-a", (Rule("-p udp", "-j ACCEPT"),)))
        assert owners.apply() == {}
        owners.mark_resync()
        assert not any(t.needs_resync for t in owners.tables.values())
        assert owners.apply() == {}
        # Someone else's change: the next refresh reads back and repairs.
        host.exec("iptables", "-F", "felix-gen-a")
        owners.mark_resync()
        assert all(t.needs_resync for t in owners.tables.values())
        assert owners.apply() == {}
        assert "-A felix-gen-a -p udp" in save(host)
        owners.mark_resync()  # the repair was accounted for too
        assert not any(t.needs_resync for t in owners.tables.values())
    finally:
        owners.close()


def test_generation_read_with_the_standard_library_matches_pyroute2(host: Namespace) -> None:
    """felix reads the nf_tables generation on a NETLINK_NETFILTER socket of its own
    (no pyroute2 at start-up): the same id and constants as pyroute2's NFTSocket, and it
    moves by one per committed restore."""
    from pyroute2.netlink import NETLINK_NETFILTER
    from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES
    from pyroute2.netlink.nfnetlink import nftsocket as nft

    from felix.dataplane import nftgen
    from rtnl.netns import run_in_netns

    assert (nftgen.NETLINK_NETFILTER, nftgen.NFNL_SUBSYS_NFTABLES) == (
        NETLINK_NETFILTER, NFNL_SUBSYS_NFTABLES)
    assert (nftgen.NFT_MSG_NEWGEN, nftgen.NFT_MSG_GETGEN) == (nft.NFT_MSG_NEWGEN,
                                                                nft.NFT_MSG_GETGEN)
    assert nft.nft_gen_msg.nla_map[nftgen.NFTA_GEN_ID][0] == "NFTA_GEN_ID"

    def pyroute2_generation() -> int:
        sock = nft.NFTSocket()
        try:
            msg = nft.nft_gen_msg()
            msg["nfgen_family"] = 0
            return int(sock.request_get(msg, nft.NFT_MSG_GETGEN)[0].get_attr("NFTA_GEN_ID"))
        finally:
            sock.close()

    gen = nftgen.RulesetGeneration(host.name)
    before = gen.read()
    assert before is not None and before == run_in_netns(host.name, pyroute2_generation)
    host.exec("iptables-restore", "--noflush", input="*filter\n:felix-gen-x - [0:0]\nCOMMIT\n")
    assert gen.read() == run_in_netns(host.name, pyroute2_generation) == before + 1


def test_generation_bookkeeping_trusts_only_an_unbroken_chain() -> None:
    from felix.dataplane.nftgen import RulesetGeneration

    class Scripted(RulesetGeneration):
        def __init__(self, values: list[int | None]) -> None:
            super().__init__(None)
            self.values = values

        def read(self) -> int | None:
            return self.values.pop(0)

    gen = Scripted([7, 7])
    gen.account(5, 2, read_back=True)  # a read-back, then two restores
    assert gen.known == 7
    assert gen.unchanged()
    gen = Scripted([9])
    gen.known = 5
    gen.account(5, 2, read_back=False)  # someone else wrote in between
    assert gen.known is None
    gen = Scripted([6])
    gen.account(5, 1, read_back=False)  # no known starting point
    assert gen.known is None
    gen = Scripted([None])
    gen.known = 5
    gen.account(5, 0, read_back=True)
    assert gen.known is None
    gen = Scripted([0])
    gen.account(2**32 - 1, 1, read_back=True)  # the u32 wraps
    assert gen.known == 0


# --- which endpoints an apply failure leaves unprogrammed ---------------------------------------


def test_a_rejected_chain_fails_only_the_endpoints_it_belongs_to(host: Namespace) -> None:
    """iptables-restore is atomic: one chain the kernel rejects fails the whole restore.
    Endpoints whose chains (and dispatch entries) were already in the kernel stay fine;
    the endpoint whose chain was rejected, and one added in the same restore, are not."""
    import json

    from felix.calc.graph import CalcGraph, CalcSettings
    from felix.config import load_config
    from felix.dataplane.apply import Owners
    from libcalico import keyspace

    def endpoint(name: str, i: int) -> tuple[str, str]:
        return (keyspace.workload_endpoint_key("h1", "k8s", name, "eth0"),
                json.dumps({"name": f"cali000{name}", "profile_ids": ["p"],
                            "ipv4_nets": [f"198.18.7.{i}/32"]}))

    make_workload_ifaces(host, ["cali000a", "cali000b", "cali000c"])
    calc = CalcGraph(CalcSettings("h1", ipv6=False))
    owners = Owners.create(load_config(env={}), (4,), netns=host.name)
    table = owners.tables[(4, "filter")]

    def failure(name: str) -> str | None:
        info = calc.desired_state().endpoints[keyspace.WorkloadEndpointKey("h1", "k8s", name,
                                                                          "eth0")]
        assert info.ifname is not None
        return owners.endpoint_failure(info.ifname, info.chains)

    try:
        calc.on_updates([endpoint("a", 1), endpoint("b", 2),
                         (keyspace.profile_key("p", "rules"), json.dumps({}))])
        owners.take(calc.flush())
        assert owners.apply() == {}
        assert failure("a") is None and failure("b") is None
        # b's chain changes to something the kernel rejects; c is new in the same restore
        calc.on_updates([endpoint("c", 3)])
        owners.take(calc.flush())
        table.set_chain(Chain("felix-from-000b", (Rule("-m nosuchmatch", "-j ACCEPT"),)))
        failed = owners.apply()
        assert set(failed) == {"iptables-v4-filter"}
        assert "iptables-restore" in failed["iptables-v4-filter"]
        assert failure("a") is None  # its chains and dispatch entry are still in place
        assert failure("b") == failed["iptables-v4-filter"]
        assert failure("c") == failed["iptables-v4-filter"]
        assert "-i cali000c" not in save(host)  # c really is not dispatched
        # the cause goes away: the next apply (a full rewrite after a read-back) succeeds
        table.set_chain(calc.desired_state().chains[(4, "filter")]["felix-from-000b"])
        assert owners.apply() == {}
        assert failure("a") is None and failure("b") is None and failure("c") is None
        assert "-i cali000c" in save(host)
    finally:
        owners.close()


def test_a_refused_route_is_a_failure_of_its_interface_until_written(host: Namespace) -> None:
    """The kernel refuses an IPv6 route through an interface with IPv6 disabled (EACCES)."""
    make_workload_ifaces(host, ["calieeee", "califfff"])
    host.exec("sysctl", "-qw", "net.ipv6.conf.calieeee.disable_ipv6=1")
    routes = Routes(host.name)
    try:
        routes.set_routes([RouteState("198.18.8.1/32", "calieeee"),
                           RouteState("fd00::8:1/128", "calieeee"),
                           RouteState("fd00::8:2/128", "califfff")])
        with pytest.raises(NetlinkError) as info:
            routes.apply()
        assert info.value.code == errno.EACCES
        assert set(routes.failures) == {"calieeee"}
        assert "fd00::8:1/128" in routes.failures["calieeee"]
        assert "EACCES" in routes.failures["calieeee"]
        assert felix_routes(host) == {"198.18.8.1": "calieeee"}
        assert felix_routes(host, 6) == {"fd00::8:2": "califfff"}
        with pytest.raises(NetlinkError):
            routes.apply()  # the retry rereads the kernel and fails the same way
        assert set(routes.failures) == {"calieeee"}
        host.exec("sysctl", "-qw", "net.ipv6.conf.calieeee.disable_ipv6=0")
        routes.apply()
        assert routes.failures == {}
        assert felix_routes(host, 6) == {"fd00::8:1": "calieeee", "fd00::8:2": "califfff"}
    finally:
        routes.close()
