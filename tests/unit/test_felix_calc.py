"""felix.calc: datastore updates -> desired dataplane, independent of update order."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from typing import Any

from felix.calc.graph import CalcGraph, CalcSettings, Changes, DesiredState
from felix.dataplane.types import Rule
from felix.rules.names import selector_ipset
from libcalico import keyspace
from libcalico.model.selector import parse_selector

HOST = "h1"


def wep(host: str, wl: str, ifname: str, v4: list[str], v6: list[str] | None = None,
        profiles: tuple[str, ...] = ("prof-a",), labels: dict[str, str] | None = None,
        mac: str | None = None, state: str = "active") -> tuple[str, str]:
    data: dict[str, Any] = {"state": state, "name": ifname, "profile_ids": list(profiles),
                            "ipv4_nets": v4, "ipv6_nets": v6 or [], "labels": labels or {}}
    if mac:
        data["mac"] = mac
    return keyspace.workload_endpoint_key(host, "docker", wl, "eth0"), json.dumps(data)


def base_updates() -> list[tuple[str, str | None]]:
    rules_a = {"inbound_rules": [{"action": "allow", "src_tag": "tag-b"},
                                 {"action": "allow", "protocol": "tcp", "dst_ports": [80]}],
               "outbound_rules": [{"action": "allow"}]}
    rules_b = {"inbound_rules": [{"action": "allow", "src_selector": "role == \"db\""}],
               "outbound_rules": [{"action": "deny", "!dst_net": "198.18.0.0/15"},
                                  {"action": "allow"}]}
    return [
        wep(HOST, "w1", "cali0001", ["198.18.1.1/32"], ["fd00::1/128"], ("prof-a",),
            {"role": "web"}, "aa:bb:cc:dd:ee:01"),
        wep(HOST, "w2", "cali0002", ["198.18.1.2/32"], [], ("prof-a", "prof-b"), {"role": "db"}),
        wep(HOST, "w3", "cali0003", ["198.18.1.3/32"], [], ("prof-b",), {"role": "db"},
            state="inactive"),
        wep("h2", "w4", "cali0004", ["198.18.2.4/32"], ["fd00::4/128"], ("prof-b",),
            {"role": "db"}),
        wep("h2", "w5", "cali0005", ["198.18.2.5/32"], [], ("prof-a",), {"role": "web"}),
        (keyspace.host_endpoint_key(HOST, "eth0"),
         json.dumps({"name": "eth0", "expected_ipv4_addrs": ["198.18.0.1"],
                     "profile_ids": ["prof-host"], "labels": {"role": "host"}})),
        (keyspace.profile_key("prof-a", "rules"), json.dumps(rules_a)),
        (keyspace.profile_key("prof-a", "tags"), json.dumps(["tag-a"])),
        (keyspace.profile_key("prof-b", "rules"), json.dumps(rules_b)),
        (keyspace.profile_key("prof-b", "tags"), json.dumps(["tag-b"])),
        (keyspace.profile_key("prof-b", "labels"), json.dumps({"tier": "backend"})),
        (keyspace.profile_key("prof-host", "rules"),
         json.dumps({"inbound_rules": [{"action": "allow", "protocol": "tcp",
                                        "dst_ports": [179]}]})),
        (keyspace.tier_metadata_key("t1"), json.dumps({"order": 10})),
        (keyspace.tier_metadata_key("t2"), json.dumps({"order": 5})),
        (keyspace.policy_key("t1", "web"), json.dumps(
            {"selector": "role == \"web\"", "order": 2,
             "inbound_rules": [{"action": "next-tier", "protocol": "tcp"}],
             "outbound_rules": [{"action": "allow", "dst_selector": "tier == \"backend\""}]})),
        (keyspace.policy_key("t1", "all"), json.dumps(
            {"selector": "all()", "order": 1, "inbound_rules": [{"action": "deny",
                                                                 "protocol": "udp"}]})),
        (keyspace.policy_key("t2", "db"), json.dumps(
            {"selector": "tier == \"backend\"", "order": 1,
             "inbound_rules": [{"action": "allow", "src_tag": "tag-a"}]})),
        (keyspace.pool_key("198.18.0.0/16"), json.dumps({"cidr": "198.18.0.0/16",
                                                         "masquerade": True})),
        (keyspace.pool_key("198.19.0.0/16"), json.dumps({"cidr": "198.19.0.0/16"})),
        # invalid data: skipped, the rest keeps working
        (keyspace.workload_endpoint_key(HOST, "docker", "bad", "eth0"), "{not json"),
        (keyspace.policy_key("t1", "broken"), json.dumps({"selector": "role ==", "order": 1})),
        (keyspace.profile_key("prof-c", "rules"), json.dumps({"inbound_rules": "nope"})),
        # keys felix ignores
        (keyspace.BGP_GLOBAL_AS_KEY, "64511"),
    ]


def graph() -> CalcGraph:
    return CalcGraph(CalcSettings(HOST))


def replay(updates: list[tuple[str, str | None]], rng: random.Random | None = None) -> CalcGraph:
    g = graph()
    for key, value in updates:
        g.on_update(key, value)
        if rng is not None and rng.random() < 0.3:
            g.flush()
    g.flush()
    return g


def apply_changes(state: dict[str, dict[Any, Any]], changes: Changes) -> None:
    """A fake dataplane that keeps state: what the driver hands to the owners."""
    for table, chains in changes.chains.items():
        for name, chain in chains.items():
            state.setdefault("chains", {})[(table, name)] = chain
            if chain is None:
                del state["chains"][(table, name)]
    for sets in changes.ipsets.values():
        for name, s in sets.items():
            state.setdefault("ipsets", {})[name] = s
            if s is None:
                del state["ipsets"][name]
    for deltas in changes.ipset_deltas.values():
        for name, (added, removed) in deltas.items():
            old = state["ipsets"][name]  # a delta only ever follows the whole set
            assert not added & old.members and removed <= old.members, name
            state["ipsets"][name] = replace(old, members=(old.members - removed) | added)
    for dest, route in changes.routes.items():
        state.setdefault("routes", {})[dest] = route
        if route is None:
            del state["routes"][dest]


def as_fake(desired: DesiredState) -> dict[str, dict[Any, Any]]:
    return {"chains": {(t, n): c for t, cs in desired.chains.items() for n, c in cs.items()},
            "ipsets": dict(desired.ipsets), "routes": dict(desired.routes)}


def test_result_does_not_depend_on_update_order() -> None:
    updates = base_updates()
    expected = replay(updates).desired_state()
    for seed in range(12):
        rng = random.Random(seed)
        shuffled = updates[:]
        rng.shuffle(shuffled)
        assert replay(shuffled, rng).desired_state() == expected, f"seed {seed}"


def test_incremental_changes_add_up_to_the_desired_state() -> None:
    rng = random.Random(7)
    updates = base_updates()
    rng.shuffle(updates)
    g = graph()
    fake: dict[str, dict[Any, Any]] = {}
    for key, value in updates:
        g.on_update(key, value)
        apply_changes(fake, g.flush())
    assert fake == as_fake(g.desired_state())
    assert not g.flush()  # nothing changed: nothing to do


def test_deletes_equal_never_having_seen_the_keys() -> None:
    updates = base_updates()
    removed = {updates[0][0], updates[3][0], keyspace.profile_key("prof-b", "labels"),
               keyspace.policy_key("t1", "web"), keyspace.pool_key("198.18.0.0/16"),
               keyspace.tier_metadata_key("t2")}
    kept = [(k, v) for k, v in updates if k not in removed]
    for seed in range(6):
        rng = random.Random(seed)
        sequence = updates[:]
        rng.shuffle(sequence)
        deletes = [(k, None) for k in removed]
        rng.shuffle(deletes)
        g = replay(sequence + deletes, rng)
        assert g.desired_state() == replay(kept).desired_state(), f"seed {seed}"


def test_intermediate_values_do_not_leave_traces() -> None:
    updates = base_updates()
    noise = [wep(HOST, "w1", "cali0009", ["198.18.1.9/32"], [], ("prof-x",), {"role": "x"}),
             (keyspace.profile_key("prof-a", "tags"), json.dumps(["zzz"])),
             (keyspace.policy_key("t1", "web"), json.dumps({"selector": "all()"})),
             (keyspace.tier_metadata_key("t1"), json.dumps({"order": 1}))]
    assert replay(noise + updates, random.Random(1)).desired_state() == \
        replay(updates).desired_state()


def test_contents() -> None:
    g = replay(base_updates())
    s = g.desired_state()
    f4 = s.chains[(4, "filter")]
    # local endpoints only: routes for the active ones, chains for all three
    assert set(s.routes) == {"198.18.1.1/32", "fd00::1/128", "198.18.1.2/32"}
    assert s.routes["198.18.1.1/32"].ifname == "cali0001"
    assert {"felix-from-0001", "felix-to-0002", "felix-from-0003"} <= set(f4)
    assert "felix-from-0004" not in f4
    assert f4["felix-from-0003"].rules[-1].action == "-j DROP"  # inactive: no address allowed
    # tags: every endpoint in the cluster contributes
    assert s.ipsets["felix-v4-tag-b"].members == {"198.18.1.2", "198.18.1.3", "198.18.2.4"}
    assert s.ipsets["felix-v4-tag-a"].members == {"198.18.1.1", "198.18.1.2", "198.18.2.5"}
    assert s.ipsets["felix-v6-tag-b"].members == {"fd00::4"}
    db = selector_ipset(parse_selector('role == "db"').unique_id, 4)
    assert s.ipsets[db].members == {"198.18.1.2", "198.18.1.3", "198.18.2.4"}
    # profile labels are inherited: tier == backend matches prof-b users
    backend = selector_ipset(parse_selector('tier == "backend"').unique_id, 4)
    assert s.ipsets[backend].members == {"198.18.1.2", "198.18.1.3", "198.18.2.4"}
    # pools
    assert s.ipsets["felix-masq-ipam-pools"].members == {"198.18.0.0/16"}
    assert s.ipsets["felix-all-ipam-pools"].members == {"198.18.0.0/16", "198.19.0.0/16"}
    # tiers in order (t2 before t1), policies by order within a tier
    jumps = [r.action for r in f4["felix-to-0002"].rules if "felix-p-" in r.action]
    assert jumps == ["-j felix-p-t2/db-i", "-j felix-p-t1/all-i", "-j felix-p-prof-a-i",
                     "-j felix-p-prof-b-i"]
    jumps = [r.action for r in f4["felix-to-0001"].rules if "felix-p-" in r.action]
    assert jumps == ["-j felix-p-t1/all-i", "-j felix-p-t1/web-i", "-j felix-p-prof-a-i"]
    # host endpoints: the failsafe ports first (into and out of the host, not forwarded)
    assert f4["felix-FROM-HOST-IF"].rules == (
        Rule("-i eth0", "-j felix-FAILSAFE-IN"), Rule("-i eth0", "-g felix-hfrom-eth0"))
    assert f4["felix-TO-HOST-IF"].rules == (
        Rule("-o eth0", "-j felix-FAILSAFE-OUT"), Rule("-o eth0", "-g felix-hto-eth0"))
    assert f4["felix-FROM-HOST-IF-FWD"].rules == (Rule("-i eth0", "-g felix-hfrom-eth0"),)
    assert f4["felix-TO-HOST-IF-FWD"].rules == (Rule("-o eth0", "-g felix-hto-eth0"),)
    hfrom = [r.action for r in f4["felix-hfrom-eth0"].rules]
    assert hfrom[0] == "-j MARK --set-xmark 0x0/0x7000000" and hfrom[-1] == "-j DROP"
    assert "-j felix-p-t1/all-i" in hfrom and "-j felix-p-prof-host-i" in hfrom
    assert not any("FAILSAFE" in a for a in hfrom)
    # invalid data skipped; the invalid local endpoint is reported
    errors = {k.workload: e.error for k, e in s.endpoints.items() if e.error}
    assert "bad" in errors and errors["w3"] == "inactive"
    assert not any("broken" in name for name in f4)
    # every chain that is jumped to exists
    for table, chains in s.chains.items():
        for chain in chains.values():
            for rule in chain.rules:
                target = rule.action.split()[1] if rule.action[:2] in ("-j", "-g") else ""
                if target.startswith("felix-"):
                    assert target in chains, (table, chain.name, target)


def test_unknown_profile_is_stubbed_and_unused_sources_are_not_rendered() -> None:
    g = replay([wep(HOST, "w1", "cali1", ["198.18.1.1/32"], [], ("ghost",)),
                (keyspace.profile_key("unused", "rules"), json.dumps({}))])
    f4 = g.desired_state().chains[(4, "filter")]
    assert f4["felix-p-ghost-i"].rules[0].action == "-j DROP"
    assert "felix-p-unused-i" not in f4


def test_one_endpoint_change_touches_only_that_endpoint() -> None:
    updates = base_updates()
    g = replay(updates)
    key, _ = updates[1]
    g.on_update(*wep(HOST, "w2", "cali0002", ["198.18.1.2/32"], [], ("prof-a", "prof-b"),
                     {"role": "db", "extra": "1"}))
    changes = g.flush()
    changed = {n for t in changes.chains.values() for n in t}
    assert changed <= {"felix-from-0002", "felix-to-0002"}
    g.on_update(key, json.dumps({"state": "active", "name": "cali0002", "profile_ids": [],
                                 "ipv4_nets": ["198.18.1.22/32"]}))
    changes = g.flush()
    assert changes.routes == {"198.18.1.2/32": None,
                              "198.18.1.22/32": g.desired_state().routes["198.18.1.22/32"]}
    assert "198.18.1.2" not in g.desired_state().ipsets["felix-v4-tag-b"].members


def test_interface_name_clash_is_resolved_by_key_not_order() -> None:
    a = wep(HOST, "wa", "cali7", ["198.18.1.7/32"])
    b = wep(HOST, "wb", "cali7", ["198.18.1.8/32"])
    s1 = replay([a, b]).desired_state()
    s2 = replay([b, a]).desired_state()
    assert s1 == s2
    assert set(s1.routes) == {"198.18.1.7/32"}
    assert [e.error for e in s1.endpoints.values() if e.error]


def test_ipv6_disabled_renders_v4_only() -> None:
    g = CalcGraph(CalcSettings(HOST, ipv6=False))
    for k, v in base_updates():
        g.on_update(k, v)
    g.flush()
    s = g.desired_state()
    assert set(s.chains) == {(4, "filter"), (4, "nat")}
    assert "fd00::1/128" not in s.routes


def test_a_remote_endpoint_changes_its_sets_by_delta_only() -> None:
    """Another host's endpoint joining or leaving a tag that 300 endpoints share hands
    over that one member (never the whole set), so felix's work and its `ipset restore`
    per remote change do not grow with the cluster (bench.scale_calc measures it)."""
    members = [wep(f"h{i % 7 + 3}", f"m{i}", "cali1", [f"198.19.{i // 250}.{i % 250}/32"],
                   [], ("prof-b",)) for i in range(300)]
    g = replay(base_updates() + members)
    name = "felix-v4-tag-b"
    assert len(g.desired_state().ipsets[name].members) == 303  # and w2, w3, w4
    joining = wep("h9", "new", "cali1", ["198.19.9.9/32"], ["fd00::99/128"], ("prof-b",))
    g.on_update(*joining)
    changes = g.flush()
    assert not changes.ipsets and set(changes.ipset_deltas) == {4, 6}
    # the tag, and the selector `tier == "backend"` (prof-b's labels): one member each
    selector = selector_ipset(parse_selector('tier == "backend"').unique_id, 4)
    assert changes.ipset_deltas[4] == {name: (frozenset({"198.19.9.9"}), frozenset()),
                                       selector: (frozenset({"198.19.9.9"}), frozenset())}
    assert changes.ipset_deltas[6]["felix-v6-tag-b"] == (frozenset({"fd00::99"}), frozenset())
    assert not changes.chains and not changes.routes
    g.on_update(joining[0], None)  # and leaves again
    assert g.flush().ipset_deltas[4][name] == (frozenset(), frozenset({"198.19.9.9"}))
    g.on_update(*joining)  # joins and leaves within one flush: nothing to hand over
    g.on_update(joining[0], None)
    assert not g.flush()
    g.on_update(*wep("h9", "other", "cali1", ["198.19.9.8/32"], [], ("no-such",)))
    assert not g.flush()  # in no set in use: nothing at all
