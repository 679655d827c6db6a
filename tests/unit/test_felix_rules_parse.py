"""felix.rules.parse reads back every rule felix renders, strictly; felix.rules.evaluate
walks chain values as iptables does."""

from __future__ import annotations

import ipaddress
import random

import pytest

from felix.calc.graph import CalcGraph, CalcSettings
from felix.dataplane.types import Chain, IPSetState, Rule
from felix.rules.dispatch import dispatch_target, render_host_dispatch, render_workload_dispatch
from felix.rules.evaluate import Packet, walk
from felix.rules.names import Marks
from felix.rules.parse import (
    Action,
    AddressRange,
    IcmpType,
    Interface,
    MacSource,
    MarkMatch,
    Net,
    Ports,
    Protocol,
    SetMatch,
    parse_action,
    parse_match,
)
from felix.rules.policy import (
    EndpointSpec,
    TierPolicies,
    render_endpoint_chains,
    render_rule_list,
    rule_index,
)
from felix.rules.static import render_base_jumps, render_filter_chains, render_nat_chains
from libcalico.model.rules import Rule as MRule
from libcalico.model.rules import parse_ports

MARKS = Marks.from_mask(0xFF000000)


def random_model_rule(rng: random.Random, version: int) -> MRule:
    """A valid model rule using a random subset of every field (negations too)."""
    kw: dict[str, object] = {"action": rng.choice(["allow", "deny", "log", "next-tier"])}
    proto = rng.choice([None, "tcp", "udp", "icmp" if version == 4 else "icmpv6", 132, "sctp"])
    if proto is not None:
        kw["protocol"] = proto
    if rng.random() < 0.3:
        kw["not_protocol"] = rng.choice(["udp", 47])
    nets = (["198.18.1.0/24", "198.18.1.7/32", "198.19.0.0/16"] if version == 4
            else ["fd00::/64", "fd00::7/128", "fd00:1::/48"])
    for side in ("src", "dst"):
        for neg in ("", "not_"):
            if rng.random() < 0.25:
                kw[f"{neg}{side}_net"] = rng.choice(nets)
            if rng.random() < 0.25:
                kw[f"{neg}{side}_tag"] = rng.choice(["web", "db", "a" * 40])
            if rng.random() < 0.25:
                kw[f"{neg}{side}_selector"] = rng.choice(['role == "db"', "has(x) && y != 'z'",
                                                          "all()"])
            if proto in ("tcp", "udp", 132, "sctp") and rng.random() < 0.4:
                count = rng.choice([1, 3, 20])
                kw[f"{neg}{side}_ports"] = parse_ports("p", [
                    rng.choice([rng.randint(1, 65535), f"{rng.randint(1, 100)}:"
                                f"{rng.randint(100, 200)}"]) for _ in range(count)])
    if proto in ("icmp", "icmpv6"):
        if rng.random() < 0.5:
            kw["icmp_type"] = rng.randint(0, 255)
            if rng.random() < 0.5:
                kw["icmp_code"] = rng.randint(0, 255)
        if rng.random() < 0.3:
            kw["not_icmp_type"] = rng.randint(0, 255)
            if rng.random() < 0.5:
                kw["not_icmp_code"] = rng.randint(0, 255)
    if kw["action"] == "log" and rng.random() < 0.5:
        kw["log_prefix"] = "trace me"
    return MRule(**kw)  # type: ignore[arg-type]


def all_rendered_chains(seed: int) -> list[Chain]:
    """Every kind of chain felix renders, with random profile/policy rules."""
    rng = random.Random(seed)
    chains: list[Chain] = []
    for version in (4, 6):
        for action in ("DROP", "RETURN", "ACCEPT"):
            chains += render_filter_chains(version, ("cali", "tap"), action, MARKS,
                                           (("tcp", 22), ("udp", 68)),
                                           (("tcp", p) for p in range(1, 40)),  # type: ignore[arg-type]
                                           ("vxlan", "ipip"), 4789)
        rules = [random_model_rule(rng, version) for _ in range(60)]
        chains.append(render_rule_list("felix-p-x-i", rules, version, MARKS, True))
        chains.append(render_rule_list("felix-p-y-o", rules, version, MARKS, False))
        for spec in (
                EndpointSpec("cali1", "1", ("198.18.1.1/32",), ("fd00::1/128",),
                             "aa:bb:cc:dd:ee:ff", (TierPolicies("t", ("a", "b")),), ("p",)),
                EndpointSpec("cali2", "2", ("198.18.1.2/32", "198.18.1.3/32"),
                             ("fd00::2/128", "fd00::3/128")),
                EndpointSpec("cali3", "3"),
                EndpointSpec("eth0", "eth0", tiers=(TierPolicies("t", ("a",)),),
                             profile_ids=("p",), host_endpoint=True)):
            chains += render_endpoint_chains(spec, version, MARKS)
    names = {f"cali{i:03d}{c}": (f"felix-from-{i}{c}", f"felix-to-{i}{c}")
             for i in range(40) for c in "ab"}
    chains += render_workload_dispatch(names)
    chains += render_host_dispatch({"eth0": ("felix-hfrom-eth0", "felix-hto-eth0"),
                                    "eth1": ("felix-hfrom-eth1", "felix-hto-eth1")})
    chains += render_nat_chains()
    for table in ("filter", "nat"):
        chains += [Chain(k, v) for k, v in render_base_jumps(table).items()]
    return chains


@pytest.mark.parametrize("seed", range(5))
def test_every_rule_felix_renders_parses(seed: int) -> None:
    for chain in all_rendered_chains(seed):
        for rule in chain.rules:
            criteria = parse_match(rule.match)
            action = parse_action(rule.action)
            # nothing is lost: every option of the string became a criterion
            assert len(criteria) == sum(1 for t in rule.match.split()
                                        if t in ("-i", "-o", "-p", "-s", "-d", "--ctstate",
                                                 "--match-set", "--sports", "--dports",
                                                 "--sport", "--dport", "--icmp-type",
                                                 "--icmpv6-type", "--mark", "--mac-source",
                                                 "--src-range", "--dst-range")), rule
            assert action.kind in ("ACCEPT", "DROP", "RETURN", "LOG", "MARK", "MASQUERADE",
                                   "jump", "goto")


def test_parsed_values() -> None:
    assert parse_match("! -i cali+ -p tcp -s 198.18.0.0/24 -m iprange ! --src-range "
                       "198.18.0.1-198.18.0.9 -m multiport ! --dports 80,8000:8080 "
                       "-m set ! --match-set felix-v4-s:abc dst -m mark --mark 0x0/0x2000000 "
                       "-m mac ! --mac-source AA:BB:CC:DD:EE:FF") == (
        Interface(True, "cali+", True), Protocol(6),
        Net(True, ipaddress.ip_network("198.18.0.0/24")),
        AddressRange(True, ipaddress.ip_address("198.18.0.1"),
                     ipaddress.ip_address("198.18.0.9"), True),
        Ports(False, ((80, 80), (8000, 8080)), True), SetMatch("felix-v4-s:abc", False, True),
        MarkMatch(0, 0x2000000), MacSource("aa:bb:cc:dd:ee:ff", True))
    assert parse_match("-p icmpv6 -m icmp6 ! --icmpv6-type 128/0 -m udp --dport 53") == (
        Protocol(58), IcmpType(6, 128, 0, True), Ports(False, ((53, 53),)))
    assert parse_match("-p udp ! --dport 4789 --sport 1:2") == (
        Protocol(17), Ports(False, ((4789, 4789),), True), Ports(True, ((1, 2),)))
    assert parse_action('-j LOG --log-prefix "calico-packet: " --log-level 5') == Action(
        "LOG", log_prefix="calico-packet: ")
    assert parse_action("-j MARK --set-xmark 0x1000000/0x1000000") == Action(
        "MARK", mark_value=0x1000000, mark_mask=0x1000000)
    assert parse_action("-g felix-to-a") == Action("goto", "felix-to-a")
    assert parse_action("-j felix-p-x-i") == Action("jump", "felix-p-x-i")
    assert rule_index("rule 12: allow") == 12 and rule_index("end of tier t") is None


@pytest.mark.parametrize("text", ["-m addrtype --dst-type LOCAL", "-x", "-m set --match-set s",
                                  "--dport 80", "-p icmp --dport 80",
                                  "-p nosuch", "-m multiport --dports x", "--comment a",
                                  "-m mark"])
def test_unknown_or_malformed_matches_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_match(text)


@pytest.mark.parametrize("text", ["-j", "ACCEPT", "-j MARK --set-mark 1", "-j DROP extra"])
def test_malformed_actions_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_action(text)


def test_dispatch_target_reads_the_tree_with_the_parser() -> None:
    names = {f"cali{i:03d}": (f"felix-from-{i}", f"felix-to-{i}") for i in range(100)}
    chains = {c.name: c for c in render_workload_dispatch(names)}
    assert dispatch_target(chains.get, "felix-FROM-ENDPOINT", "cali042") == "felix-from-42"
    assert dispatch_target(chains.get, "felix-TO-ENDPOINT", "cali099") == "felix-to-99"
    assert dispatch_target(chains.get, "felix-TO-ENDPOINT", "cali999") is None


# ---- the evaluator -------------------------------------------------------------------------

def _pkt(**kw: object) -> Packet:
    base: dict[str, object] = {"version": 4, "src": "198.18.1.1", "dst": "198.18.1.2",
                               "protocol": 6, "sport": 40000, "dport": 80}
    base.update(kw)
    return Packet(**base)  # type: ignore[arg-type]


def test_jump_goto_return_and_marks() -> None:
    chains = {c.name: c for c in [
        Chain("top", (Rule("", "-j MARK --set-xmark 0x0/0xff"), Rule("-i a+", "-j disp"),
                      Rule("-m mark --mark 0x1/0x1", "-j ACCEPT"), Rule("", "-j DROP"))),
        Chain("disp", (Rule("-i a1", "-g ep"), Rule("", "-j DROP", "unknown"))),
        Chain("ep", (Rule("", "-j pol"), Rule("-m mark --mark 0x1/0x1", "-j RETURN"),
                     Rule("", "-j DROP", "default"))),
        Chain("pol", (Rule("-p tcp -m multiport --dports 80", "-j MARK --set-xmark 0x1/0x1"),
                      Rule("-m mark --mark 0x1/0x1", "-j RETURN"))),
    ]}
    base = (Rule("", "-j top"),)
    ok = walk(chains, "FORWARD", base, _pkt(in_iface="a1"), {})
    assert ok.verdict == "ACCEPT" and ok.mark == 1
    # goto: ep returns straight to top (disp's DROP is skipped)
    assert [s.chain for s in ok.steps if s.index is None] == ["FORWARD", "top", "disp", "ep",
                                                             "pol"]
    assert ok.last is not None and ok.last.rule == Rule("-m mark --mark 0x1/0x1", "-j ACCEPT")
    denied = walk(chains, "FORWARD", base, _pkt(in_iface="a1", dport=81), {})
    assert denied.verdict == "DROP" and denied.last is not None
    assert denied.last.rule is not None and denied.last.rule.comment == "default"
    unknown = walk(chains, "FORWARD", base, _pkt(in_iface="a2"), {})
    assert unknown.verdict == "DROP" and unknown.last is not None
    assert unknown.last.chain == "disp"
    other = walk(chains, "FORWARD", base, _pkt(in_iface="b1"), {})
    assert other.verdict == "DROP"  # top's last rule
    assert walk(chains, "INPUT", (), _pkt(), {}).verdict == "RETURN"


def test_criteria_against_packets() -> None:
    sets = {"felix-v4-web": IPSetState("felix-v4-web", 4, "hash:ip", frozenset({"198.18.1.1"})),
            "pools": IPSetState("pools", 4, "hash:net", frozenset({"198.18.0.0/16"}))}

    def hit(match: str, **kw: object) -> bool:
        chains = {"c": Chain("c", (Rule(match, "-j ACCEPT"),))}
        return walk(chains, "FORWARD", (Rule("", "-j c"),), _pkt(**kw), sets).verdict == "ACCEPT"

    assert hit("-m set --match-set felix-v4-web src")
    assert not hit("-m set --match-set felix-v4-web dst")
    assert hit("-m set ! --match-set felix-v4-web dst")
    assert hit("-m set --match-set pools dst")
    assert hit("-p tcp -m multiport --sports 39000:41000")
    assert not hit("-p udp")
    assert hit("! -p udp")
    assert hit("-s 198.18.1.0/24 -m iprange ! --src-range 198.18.1.5-198.18.1.9")
    assert not hit("-s 198.18.1.0/24 -m iprange ! --src-range 198.18.1.0-198.18.1.9")
    assert not hit("-s fd00::/8")  # another IP version never matches
    assert hit("-p icmp -m icmp --icmp-type 8", protocol=1, sport=None, dport=None,
               icmp_type=8, icmp_code=0)
    assert not hit("-p icmp -m icmp --icmp-type 8/1", protocol=1, icmp_type=8, icmp_code=0)
    assert hit("-p icmp -m icmp ! --icmp-type 8/1", protocol=1, icmp_type=8, icmp_code=0)
    assert not hit("-m multiport --dports 80", protocol=1, sport=None, dport=None)
    assert hit("-m mac ! --mac-source aa:bb:cc:dd:ee:ff", src_mac="aa:bb:cc:dd:ee:00")
    assert not hit("-m mac ! --mac-source aa:bb:cc:dd:ee:ff", src_mac="AA:BB:CC:DD:EE:FF")
    assert hit("-m conntrack --ctstate NEW")
    assert not hit("-m conntrack --ctstate RELATED,ESTABLISHED")
    assert hit("-o cali+", out_iface="cali12") and not hit("-o cali+", out_iface=None)
    with pytest.raises(KeyError):
        hit("-m set --match-set missing src")


def test_encapsulation_from_cluster_hosts_walks_past_host_endpoints() -> None:
    """A deny-all host endpoint on eth0 with a VXLAN and an IPIP pool: VXLAN and IP-in-IP
    from and to cluster hosts are accepted by the encapsulation rules; from or to any
    other address, or to another port, the host endpoint's policy drops them."""
    import json

    from libcalico import keyspace

    g = CalcGraph(CalcSettings("h1", ipv6=False))
    g.on_updates([
        (keyspace.host_endpoint_key("h1", "fabric"), json.dumps(
            {"name": "eth0", "profile_ids": ["deny-all"]})),
        (keyspace.profile_key("deny-all", "rules"), json.dumps({})),
        (keyspace.pool_key("198.19.0.0/16"), json.dumps(
            {"cidr": "198.19.0.0/16", "vxlan": "vxlan.calico"})),
        (keyspace.pool_key("198.20.0.0/16"), json.dumps(
            {"cidr": "198.20.0.0/16", "ipip": "tunl0"})),
        (keyspace.bgp_host_key("h1", "ip_addr_v4"), "198.18.1.1"),
        (keyspace.bgp_host_key("h2", "ip_addr_v4"), "198.18.2.1")])
    g.flush()
    s = g.desired_state()
    chains, jumps = s.chains[(4, "filter")], s.base_jumps[(4, "filter")]

    def verdict(hook: str, peer: str, **kw: object) -> tuple[str, str | None]:
        local = "198.18.1.1"
        src, dst = (peer, local) if hook == "INPUT" else (local, peer)
        iface = {"in_iface": "eth0"} if hook == "INPUT" else {"out_iface": "eth0"}
        pkt = _pkt(**{"src": src, "dst": dst, "protocol": 17, "dport": 4789, **iface, **kw})
        w = walk(chains, hook, jumps[hook], pkt, s.ipsets)
        assert w.last is not None and w.last.rule is not None
        return w.verdict, w.last.rule.comment

    assert verdict("INPUT", "198.18.2.1") == ("ACCEPT", "VXLAN from a cluster host")
    assert verdict("OUTPUT", "198.18.2.1") == ("ACCEPT", "VXLAN to a cluster host")
    assert verdict("INPUT", "198.18.2.1", protocol=4, sport=None, dport=None) == (
        "ACCEPT", "IP-in-IP from a cluster host")
    assert verdict("OUTPUT", "198.18.2.1", protocol=4, sport=None, dport=None) == (
        "ACCEPT", "IP-in-IP to a cluster host")
    assert verdict("INPUT", "198.18.9.9")[0] == "DROP"  # not a cluster host
    assert verdict("OUTPUT", "198.18.9.9")[0] == "DROP"
    assert verdict("INPUT", "198.18.9.9", protocol=4, sport=None, dport=None)[0] == "DROP"
    assert verdict("INPUT", "198.18.2.1", dport=4790)[0] == "DROP"  # not VXLANPort
    assert verdict("INPUT", "198.18.2.1", protocol=6)[0] == "DROP"  # TCP to 4789


def test_a_graph_walks_like_felix_says() -> None:
    """A workload's own chain: spoofed sources and wrong MACs drop, its own pass."""
    import json

    from libcalico import keyspace

    g = CalcGraph(CalcSettings("h1"))
    g.on_update(keyspace.workload_endpoint_key("h1", "k8s", "w", "eth0"), json.dumps(
        {"state": "active", "name": "cali1", "mac": "aa:bb:cc:dd:ee:01",
         "profile_ids": ["p"], "ipv4_nets": ["198.18.1.1/32"]}))
    g.on_update(keyspace.profile_key("p", "rules"), json.dumps(
        {"outbound_rules": [{"action": "allow"}]}))
    g.flush()
    s = g.desired_state()
    chains, jumps = s.chains[(4, "filter")], s.base_jumps[(4, "filter")]

    def forward(**kw: object) -> str:
        pkt = _pkt(**{"in_iface": "cali1", "src_mac": "aa:bb:cc:dd:ee:01", "dst": "192.0.2.1",
                      **kw})
        return walk(chains, "FORWARD", jumps["FORWARD"], pkt, s.ipsets).verdict

    assert forward() == "ACCEPT"
    assert forward(src="198.18.1.9") == "DROP"
    assert forward(src_mac="aa:bb:cc:dd:ee:02") == "DROP"
