"""The parts of felix's calculation graph, each on its own (see tests/unit/test_felix_calc.py
for the whole graph replayed in many orders)."""

from __future__ import annotations

import json
import random
from typing import Any

from felix.calc.active_rules import ActiveRules
from felix.calc.endpoints import EndpointCalculator
from felix.calc.graph import CalcGraph, CalcSettings
from felix.calc.membership import EndpointData, MembershipIndex, SetId
from felix.calc.parse import parse_update
from felix.calc.policy_resolver import PolicyResolver
from felix.calc.recorder import ChangeRecorder
from felix.calc.types import EndpointInfo, Source
from felix.dataplane.types import Chain, IPSetState, NeighbourState, Rule
from felix.rules.names import Marks
from felix.rules.policy import TierPolicies
from libcalico import keyspace
from libcalico.model import Policy, Tier
from libcalico.model.rules import Rules
from tests.unit.test_felix_calc import HOST, base_updates, wep

MARKS = Marks.from_mask(0xFF000000)
FILTERS = ((4, "filter"), (6, "filter"))


def model(key: str, value: str) -> Any:
    parsed = parse_update(key, value)
    assert parsed is not None and parsed.value is not None, parsed
    return parsed.key, parsed.value


# ---- PolicyResolver --------------------------------------------------------------------

class ResolverRig:
    """A resolver whose listeners keep state: the active sources, the dirty endpoints."""

    def __init__(self) -> None:
        self.active: set[Source] = set()
        self.dirty: set[Any] = set()
        self.resolver = PolicyResolver(self._on_active, self.dirty.add)

    def _on_active(self, source: Source, active: bool) -> None:
        assert (source in self.active) != active, f"{source} reported {active} twice"
        (self.active.add if active else self.active.discard)(source)

    def take_dirty(self) -> set[Any]:
        out = set(self.dirty)
        self.dirty.clear()
        return out


def policy(selector: str, order: float | None = None) -> Policy:
    return Policy("t", "p", order=order, selector=selector)


def test_resolver_tracks_active_sources_and_tier_order() -> None:
    rig = ResolverRig()
    r = rig.resolver
    r.on_endpoint("ep1", {"role": "web"}, ("prof-a",))
    r.on_endpoint("ep2", {"role": "db"}, ("prof-a", "prof-b"))
    assert rig.active == {("profile", "prof-a"), ("profile", "prof-b")}
    r.on_tier("t1", Tier("t1", order=10))
    r.on_tier("t2", Tier("t2", order=5))
    r.on_policy(("t1", "web"), Policy("t1", "web", order=2, selector='role == "web"'))
    r.on_policy(("t1", "all"), Policy("t1", "all", order=1, selector="all()"))
    r.on_policy(("t2", "db"), Policy("t2", "db", order=1, selector='role == "db"'))
    assert rig.active >= {("policy", ("t1", "web")), ("policy", ("t1", "all")),
                          ("policy", ("t2", "db"))}
    assert r.tiers_for("ep1") == (TierPolicies("t1", ("all", "web")),)
    assert r.tiers_for("ep2") == (TierPolicies("t2", ("db",)), TierPolicies("t1", ("all",)))
    rig.take_dirty()
    # reordering tiers touches exactly the endpoints with policies in that tier
    r.on_tier("t2", Tier("t2", order=50))
    assert rig.take_dirty() == {"ep2"}
    assert r.tiers_for("ep2") == (TierPolicies("t1", ("all",)), TierPolicies("t2", ("db",)))
    # an endpoint losing its last profile user makes the profile inactive
    r.on_endpoint("ep2", {"role": "db"}, ("prof-a",))
    assert ("profile", "prof-b") not in rig.active
    # deleting the endpoint that matched "db" deactivates that policy
    r.on_endpoint("ep2", None)
    assert ("policy", ("t2", "db")) not in rig.active
    assert r.tiers_for("ep2") == ()


def test_resolver_profile_labels_are_inherited_and_own_labels_win() -> None:
    rig = ResolverRig()
    r = rig.resolver
    r.on_policy(("t", "backend"), Policy("t", "backend", selector='tier == "backend"'))
    r.on_endpoint("ep1", {}, ("prof-b",))
    r.on_endpoint("ep2", {"tier": "front"}, ("prof-b",))
    assert rig.active == {("profile", "prof-b")}
    rig.take_dirty()
    r.on_profile_labels("prof-b", {"tier": "backend"})
    assert r.tiers_for("ep1") == (TierPolicies("t", ("backend",)),)
    assert r.tiers_for("ep2") == ()  # its own label overrides the profile's
    assert rig.take_dirty() == {"ep1"}
    assert ("policy", ("t", "backend")) in rig.active
    r.on_profile_labels("prof-b", {})
    assert ("policy", ("t", "backend")) not in rig.active


def test_resolver_policy_changes_touch_only_what_they_must() -> None:
    rig = ResolverRig()
    r = rig.resolver
    for i in range(6):
        r.on_endpoint(f"ep{i}", {"n": str(i % 2)}, ())
    r.on_policy(("t", "p"), policy('n == "0"', order=1))
    assert rig.take_dirty() == {"ep0", "ep2", "ep4"}
    r.on_policy(("t", "p"), policy('n == "0"', order=1))  # the same: nothing
    assert rig.take_dirty() == set()
    r.on_policy(("t", "p"), policy('n == "0"', order=3))  # order: its endpoints
    assert rig.take_dirty() == {"ep0", "ep2", "ep4"}
    r.on_policy(("t", "p"), policy("all()", order=3))  # selector: the difference
    assert rig.take_dirty() == {"ep1", "ep3", "ep5"}
    # an endpoint change that keeps labels and profiles is no resolver work at all
    r.on_endpoint("ep1", {"n": "1"}, ())
    assert rig.take_dirty() == set()
    r.on_policy(("t", "p"), None)
    assert rig.take_dirty() == {f"ep{i}" for i in range(6)}
    assert ("policy", ("t", "p")) not in rig.active


# ---- ActiveRules -----------------------------------------------------------------------

def active_rig() -> tuple[ActiveRules, ChangeRecorder, MembershipIndex]:
    recorder = ChangeRecorder(((4, "filter"), (6, "filter"), (4, "nat")))
    membership = MembershipIndex()
    return ActiveRules((4, 6), MARKS, recorder, membership), recorder, membership


def rules(*tags: str) -> Rules:
    return Rules.from_dict({"inbound_rules": [{"action": "allow", "src_tag": t} for t in tags]})


def test_active_rules_render_only_active_sources_and_stub_unknown_profiles() -> None:
    ar, rec, _ = active_rig()
    ar.on_profile_rules("used", rules("a"))
    ar.on_profile_rules("unused", rules("b"))
    ar.set_active(("profile", "used"), True)
    ar.set_active(("profile", "ghost"), True)
    ar.flush()
    f4 = rec.desired_state().chains[(4, "filter")]
    assert {"felix-p-used-i", "felix-p-used-o", "felix-p-ghost-i"} <= set(f4)
    assert not any("unused" in n for n in f4)
    assert f4["felix-p-ghost-i"].rules == (Rule("", "-j DROP", "no rules"),)
    ar.on_profile_rules("ghost", rules())  # its rules arrive: the stub is replaced
    ar.set_active(("profile", "used"), False)
    ar.flush()
    f4 = rec.desired_state().chains[(4, "filter")]
    assert f4["felix-p-ghost-i"].rules == ()
    assert "felix-p-used-i" not in f4 and "felix-p-used-i" not in \
        rec.desired_state().chains[(6, "filter")]


def test_active_rules_count_set_references() -> None:
    ar, rec, membership = active_rig()
    membership.on_profile_tags("prof-x", ("a",))
    membership.on_endpoint("ep", EndpointData(("198.18.0.1",), ("fd00::1",), {}, ("prof-x",)))
    ar.on_profile_rules("p1", rules("a", "b"))
    ar.on_profile_rules("p2", rules("a"))
    ar.set_active(("profile", "p1"), True)
    ar.set_active(("profile", "p2"), True)
    ar.flush()
    sets = rec.desired_state().ipsets
    assert sets["felix-v4-a"] == IPSetState("felix-v4-a", 4, "hash:ip",
                                            frozenset({"198.18.0.1"}))
    assert sets["felix-v6-a"].members == {"fd00::1"} and not sets["felix-v4-b"].members
    ar.set_active(("profile", "p1"), False)  # b loses its only user, a keeps p2
    ar.flush()
    assert membership.is_active(SetId("tag", "a")) and not membership.is_active(SetId("tag", "b"))
    assert set(rec.desired_state().ipsets) == {"felix-v4-a", "felix-v6-a"}
    ar.on_profile_rules("p2", rules())  # p2's rules no longer use a
    ar.flush()
    assert rec.desired_state().ipsets == {}


def test_policy_chains_follow_rules_and_activity() -> None:
    ar, rec, _ = active_rig()
    pid = ("t", "p")
    ar.set_active(("policy", pid), True)
    ar.flush()
    assert not rec.desired_state().chains[(4, "filter")]  # active but not known yet
    key, pol = model(keyspace.policy_key("t", "p"), json.dumps(
        {"selector": "all()", "inbound_rules": [{"action": "next-tier"}]}))
    ar.on_policy(pid, pol)
    ar.flush()
    assert set(rec.desired_state().chains[(4, "filter")]) == {"felix-p-t/p-i", "felix-p-t/p-o"}
    ar.on_policy(pid, None)
    ar.flush()
    assert not rec.desired_state().chains[(4, "filter")]


# ---- ChangeRecorder --------------------------------------------------------------------

def test_recorder_records_only_real_differences() -> None:
    rec = ChangeRecorder(FILTERS)
    chain = Chain("felix-x", (Rule("", "-j DROP"),))
    rec.set_chains(FILTERS, [chain])
    rec.set_ipset(IPSetState("felix-v4-a", 4))
    first = rec.take()
    assert set(first.chains) == set(FILTERS) and first.ipsets == {4: {"felix-v4-a":
                                                                      IPSetState("felix-v4-a", 4)}}
    rec.set_chains(FILTERS, [Chain("felix-x", (Rule("", "-j DROP"),))])  # equal value
    rec.set_ipset(IPSetState("felix-v4-a", 4))
    rec.remove_chain((4, "filter"), "felix-never")
    rec.remove_ipset("felix-v4-never", 4)
    rec.set_route("198.18.0.1/32", None)
    assert not rec.take()
    rec.remove_chain((6, "filter"), "felix-x")
    rec.set_chain((6, "filter"), chain)  # removed and back within one batch: set
    assert rec.take().chains == {(6, "filter"): {"felix-x": chain}}


def test_recorder_hands_over_the_union_of_neighbours_only_when_it_changed() -> None:
    rec = ChangeRecorder(FILTERS)
    n1 = NeighbourState("198.18.0.1", "aa:bb:cc:dd:ee:01", "cali1")
    n2 = NeighbourState("198.18.0.2", "aa:bb:cc:dd:ee:02", "cali2")
    rec.set_neighbours("ep1", frozenset({n1}))
    rec.set_neighbours("ep2", frozenset({n2}))
    assert rec.take().neighbours == {n1, n2}
    rec.set_neighbours("ep1", frozenset({n1}))
    assert rec.take().neighbours is None
    rec.set_neighbours("ep2", frozenset())
    assert rec.take().neighbours == {n1}
    rec.set_endpoint_info("ep1", EndpointInfo("cali1"))
    assert rec.take().endpoints == {"ep1": EndpointInfo("cali1")}
    assert rec.desired_state().endpoints == {"ep1": EndpointInfo("cali1")}


# ---- EndpointCalculator ----------------------------------------------------------------

def endpoints_rig(tiers: dict[Any, tuple[TierPolicies, ...]] | None = None
                  ) -> tuple[EndpointCalculator, ChangeRecorder]:
    rec = ChangeRecorder(FILTERS)
    calc = EndpointCalculator((4, 6), ("cali",), True, MARKS, rec,
                              tiers_for=lambda key: (tiers or {}).get(key, ()))
    return calc, rec


def test_endpoint_info_lists_the_chains_the_endpoint_depends_on() -> None:
    key, ep = model(*wep(HOST, "w1", "cali1", ["198.18.1.1/32"], [], ("prof-a",)))
    calc, rec = endpoints_rig({key: (TierPolicies("t1", ("p",)),)})
    calc.on_workload_endpoint(key, ep, None)
    calc.flush()
    info = rec.desired_state().endpoints[key]
    assert info == EndpointInfo("cali1", None, ("felix-from-1", "felix-to-1", "felix-p-t1/p-i",
                                                "felix-p-t1/p-o", "felix-p-prof-a-i",
                                                "felix-p-prof-a-o"))
    f4 = rec.desired_state().chains[(4, "filter")]
    assert {"felix-from-1", "felix-to-1", "felix-FROM-ENDPOINT"} <= set(f4)
    assert rec.desired_state().routes["198.18.1.1/32"].ifname == "cali1"


def test_interface_taken_over_by_a_lower_key_keeps_its_chains() -> None:
    """The loser of an interface clash used to remove the chain names it had rendered
    even when the winner had just rendered them in the same flush."""
    calc, rec = endpoints_rig()
    pairs = []
    for i in range(20):  # 20 pairs: the flush order within a pair is the set's
        later = model(*wep(HOST, f"wb{i:02d}", f"cali{i:02d}", [f"198.18.1.{i}/32"]))
        earlier = model(*wep(HOST, f"wa{i:02d}", f"cali{i:02d}", [f"198.18.2.{i}/32"]))
        pairs.append((earlier, later))
        calc.on_workload_endpoint(*later, None)
    calc.flush()
    for earlier, _ in pairs:
        calc.on_workload_endpoint(*earlier, None)
    calc.flush()
    state = rec.desired_state()
    for i, (earlier, later) in enumerate(pairs):
        assert f"felix-from-{i:02d}" in state.chains[(4, "filter")], i
        assert state.endpoints[earlier[0]].error is None
        assert state.endpoints[later[0]].error == f"interface cali{i:02d} is used by another " \
            "endpoint"
        assert f"198.18.2.{i}/32" in state.routes and f"198.18.1.{i}/32" not in state.routes
    for earlier, _ in pairs:  # the winners go: the others take their interfaces back
        calc.on_workload_endpoint(earlier[0], None, None)
    calc.flush()
    state = rec.desired_state()
    assert all(f"felix-from-{i:02d}" in state.chains[(4, "filter")] for i in range(20))
    assert all(state.endpoints[later[0]].error is None for _, later in pairs)


def test_host_endpoints_sharing_an_interface_hand_it_over() -> None:
    calc, rec = endpoints_rig()
    a = model(keyspace.host_endpoint_key(HOST, "a"), json.dumps({"name": "eth0"}))
    b = model(keyspace.host_endpoint_key(HOST, "b"), json.dumps({"name": "eth0",
                                                                  "profile_ids": ["p"]}))
    calc.on_host_endpoint(*b)
    calc.on_host_endpoint(*a)
    calc.flush()
    hto = rec.desired_state().chains[(4, "filter")]["felix-hto-eth0"]
    assert not any("felix-p-p-o" in r.action for r in hto.rules)  # a (the lower key) wins
    calc.on_host_endpoint(a[0], None)
    calc.flush()
    hto = rec.desired_state().chains[(4, "filter")]["felix-hto-eth0"]
    assert any("felix-p-p-o" in r.action for r in hto.rules)  # b took it over


def test_inactive_endpoint_keeps_drop_chains_but_no_route_or_interface() -> None:
    key, ep = model(*wep(HOST, "w1", "cali1", ["198.18.1.1/32"], [], state="inactive",
                         mac="aa:bb:cc:dd:ee:01"))
    calc, rec = endpoints_rig()
    calc.on_workload_endpoint(key, ep, None)
    calc.flush()
    state = rec.desired_state()
    assert state.endpoints[key].error == "inactive"
    assert not state.routes and not state.interfaces and not state.neighbours
    assert state.chains[(4, "filter")]["felix-from-1"].rules[-1].action == "-j DROP"


# ---- the graph: interface clashes in any order -------------------------------------------

def test_clashes_with_flushes_in_between_do_not_depend_on_order() -> None:
    rng = random.Random(5)
    extra = [wep(HOST, f"x{i}", f"cali9{i % 4}", [f"198.18.3.{i}/32"], [], ("prof-a",),
                 {"role": "web"}, None, rng.choice(["active", "inactive"])) for i in range(12)]
    extra += [(keyspace.host_endpoint_key(HOST, f"e{i}"),
               json.dumps({"name": f"eth{i % 2}", "profile_ids": ["prof-a"]})) for i in range(4)]
    pool = base_updates() + extra
    keys = sorted({k for k, _ in pool})
    for trial in range(60):
        r = random.Random(trial)
        g = CalcGraph(CalcSettings(HOST))
        final: dict[str, str | None] = {}
        for _ in range(80):
            key, value = (r.choice(keys), None) if r.random() < 0.25 else r.choice(pool)
            g.on_update(key, value)
            final[key] = value
            if r.random() < 0.4:
                g.flush()
        g.flush()
        ref = CalcGraph(CalcSettings(HOST))
        ref.on_updates((k, v) for k, v in final.items() if v is not None)
        ref.flush()
        assert g.desired_state() == ref.desired_state(), f"trial {trial}"
