"""felix.rules: rendering compared as Chain/Rule values."""

from __future__ import annotations

import random

import pytest

from felix.dataplane.types import MAX_CHAIN_NAME, MAX_IPSET_NAME, Chain, Rule
from felix.rules.dispatch import LEAF_MAX, render_workload_dispatch
from felix.rules.match import render_matches, split_ports
from felix.rules.names import (
    Marks,
    from_endpoint_chain,
    policy_chain,
    profile_chain,
    selector_ipset,
    tag_ipset,
    uniquely_shorten,
)
from felix.rules.policy import (
    EndpointSpec,
    TierPolicies,
    render_endpoint_chains,
    render_policy_chains,
    render_profile_chains,
)
from felix.rules.static import render_base_jumps, render_filter_chains, render_nat_chains
from libcalico.model.rules import PortRange
from libcalico.model.rules import Rule as MRule
from libcalico.model.selector import parse_selector

MARKS = Marks.from_mask(0xFF000000)
ACCEPT_MARK = "-j MARK --set-xmark 0x1000000/0x1000000"
PASS_MARK = "-j MARK --set-xmark 0x2000000/0x2000000"
RETURN_IF_ACCEPT = Rule("-m mark --mark 0x1000000/0x1000000", "-j RETURN")
RETURN_IF_PASS = Rule("-m mark --mark 0x2000000/0x2000000", "-j RETURN")


def m(**kw: object) -> list[str]:
    return render_matches(MRule(**kw), 4)  # type: ignore[arg-type]


def test_every_match_field_and_negation() -> None:
    sel = 'role == "db"'
    sel_set = selector_ipset(parse_selector(sel).unique_id, 4)
    cases = {
        "protocol": ({"protocol": "tcp"}, "-p tcp"),
        "!protocol": ({"not_protocol": "udp"}, "! -p udp"),
        "numeric protocol": ({"protocol": 132}, "-p 132"),
        "src_net": ({"src_net": "198.18.0.0/24"}, "-s 198.18.0.0/24"),
        "!src_net": ({"not_src_net": "198.18.0.0/24"}, "! -s 198.18.0.0/24"),
        "dst_net": ({"dst_net": "198.18.1.0/24"}, "-d 198.18.1.0/24"),
        "!dst_net": ({"not_dst_net": "198.18.1.0/24"}, "! -d 198.18.1.0/24"),
        "src_tag": ({"src_tag": "web"}, "-m set --match-set felix-v4-web src"),
        "!src_tag": ({"not_src_tag": "web"}, "-m set ! --match-set felix-v4-web src"),
        "dst_tag": ({"dst_tag": "web"}, "-m set --match-set felix-v4-web dst"),
        "!dst_tag": ({"not_dst_tag": "web"}, "-m set ! --match-set felix-v4-web dst"),
        "src_selector": ({"src_selector": sel}, f"-m set --match-set {sel_set} src"),
        "!src_selector": ({"not_src_selector": sel}, f"-m set ! --match-set {sel_set} src"),
        "dst_selector": ({"dst_selector": sel}, f"-m set --match-set {sel_set} dst"),
        "!dst_selector": ({"not_dst_selector": sel}, f"-m set ! --match-set {sel_set} dst"),
        "src_ports": ({"protocol": "tcp", "src_ports": [80, "1000:2000"]},
                      "-p tcp -m multiport --sports 80,1000:2000"),
        "!src_ports": ({"protocol": "udp", "not_src_ports": [53]},
                       "-p udp -m multiport ! --sports 53"),
        "dst_ports": ({"protocol": "tcp", "dst_ports": [443]}, "-p tcp -m multiport --dports 443"),
        "!dst_ports": ({"protocol": "tcp", "not_dst_ports": [22]},
                       "-p tcp -m multiport ! --dports 22"),
        "icmp_type": ({"protocol": "icmp", "icmp_type": 8}, "-p icmp -m icmp --icmp-type 8"),
        "icmp_code": ({"protocol": "icmp", "icmp_type": 3, "icmp_code": 1},
                      "-p icmp -m icmp --icmp-type 3/1"),
        "!icmp": ({"protocol": "icmp", "not_icmp_type": 3, "not_icmp_code": 0},
                  "-p icmp -m icmp ! --icmp-type 3/0"),
    }
    for name, (kw, expected) in cases.items():
        assert m(**kw) == [expected], name


def test_positive_and_negated_net_together_use_iprange() -> None:
    assert m(src_net="198.18.0.0/16", not_src_net="198.18.1.0/24") == [
        "-s 198.18.0.0/16 -m iprange ! --src-range 198.18.1.0-198.18.1.255"]


def test_icmpv6_in_v6_table_and_version_filtering() -> None:
    rule = MRule(protocol="icmpv6", icmp_type=128, not_icmp_type=1)
    assert render_matches(rule, 6) == [
        "-p icmpv6 -m icmp6 --icmpv6-type 128 -m icmp6 ! --icmpv6-type 1"]
    assert render_matches(rule, 4) == []
    assert render_matches(MRule(src_net="fd00::/64"), 4) == []
    assert render_matches(MRule(src_tag="t"), 6) == ["-m set --match-set felix-v6-t src"]


def test_multiport_splitting() -> None:
    ports = list(range(1, 21))  # 20 single ports -> 15 + 5
    assert [len(c) for c in split_ports([PortRange(p, p) for p in ports])] == [15, 5]
    ranges = [PortRange(p * 10, p * 10 + 5) for p in range(8)]  # 8 ranges cost 16
    assert [len(c) for c in split_ports(ranges)] == [7, 1]
    out = m(protocol="tcp", dst_ports=ports)
    assert out == ["-p tcp -m multiport --dports " + ",".join(map(str, range(1, 16))),
                   "-p tcp -m multiport --dports 16,17,18,19,20"]
    # source and destination lists both split: the cross product (OR semantics)
    assert len(m(protocol="tcp", src_ports=ports, dst_ports=ports)) == 4
    # negated lists: every chunk in the same rule (AND of "not in")
    neg = m(protocol="tcp", not_dst_ports=ports)
    assert neg == ["-p tcp -m multiport ! --dports " + ",".join(map(str, range(1, 16)))
                   + " -m multiport ! --dports 16,17,18,19,20"]


def test_profile_chain_actions() -> None:
    rules = [MRule(action="deny", protocol="tcp", dst_ports=[22]),
             MRule(action="log", log_prefix="dropped"),
             MRule(action="allow", src_tag="web"),
             MRule(action="next-tier", protocol="udp")]
    inbound, outbound = render_profile_chains("prof", rules, [], 4, MARKS)
    assert inbound == Chain("felix-p-prof-i", (
        Rule("-p tcp -m multiport --dports 22", "-j DROP", "rule 0: deny"),
        Rule("", '-j LOG --log-prefix "dropped: " --log-level 5', "rule 1: log"),
        Rule("-m set --match-set felix-v4-web src", ACCEPT_MARK, "rule 2: allow"),
        RETURN_IF_ACCEPT,
        # in a profile next-tier behaves like allow
        Rule("-p udp", ACCEPT_MARK, "rule 3: next-tier"),
        RETURN_IF_ACCEPT,
    ))
    assert outbound == Chain("felix-p-prof-o", ())


def test_policy_chain_next_tier_sets_pass_mark() -> None:
    inbound, _ = render_policy_chains("t1", "p1", [MRule(action="next-tier")], [], 4, MARKS)
    assert inbound == Chain(policy_chain("t1", "p1", True), (
        Rule("", PASS_MARK, "rule 0: next-tier"), RETURN_IF_PASS))


def test_split_rule_sets_mark_for_every_piece() -> None:
    inbound, _ = render_profile_chains(
        "p", [MRule(protocol="tcp", dst_ports=list(range(1, 21)))], [], 4, MARKS)
    assert [r.action for r in inbound.rules] == [ACCEPT_MARK, ACCEPT_MARK, "-j RETURN"]


def test_workload_endpoint_chains_with_tiers() -> None:
    spec = EndpointSpec("cali12ab", "12ab", ("198.18.1.1/32",), ("fd00::1/128",),
                        "aa:bb:cc:dd:ee:ff",
                        (TierPolicies("t1", ("a", "b")), TierPolicies("t2", ("c",))),
                        ("prof1", "prof2"))
    frm, to = render_endpoint_chains(spec, 4, MARKS)
    clear = Rule("", "-j MARK --set-xmark 0x0/0x7000000")

    def tier(name: str, pols: tuple[str, ...], inbound: bool) -> list[Rule]:
        out = [Rule("", "-j MARK --set-xmark 0x0/0x2000000", f"tier {name}")]
        for p in pols:
            out += [Rule("-m mark --mark 0x0/0x2000000", f"-j {policy_chain(name, p, inbound)}"),
                    RETURN_IF_ACCEPT]
        return [*out, Rule("-m mark --mark 0x0/0x2000000", "-j DROP", f"end of tier {name}")]

    def tail(inbound: bool) -> list[Rule]:
        return [*tier("t1", ("a", "b"), inbound), *tier("t2", ("c",), inbound),
                Rule("", f"-j {profile_chain('prof1', inbound)}"), RETURN_IF_ACCEPT,
                Rule("", f"-j {profile_chain('prof2', inbound)}"), RETURN_IF_ACCEPT,
                Rule("", "-j DROP", "no policy or profile accepted")]

    assert frm == Chain("felix-from-12ab", (
        clear,
        Rule("-m mac ! --mac-source aa:bb:cc:dd:ee:ff", "-j DROP", "anti-spoofing: source MAC"),
        Rule("! -s 198.18.1.1/32", "-j DROP", "anti-spoofing: source address"),
        *tail(False)))
    assert to == Chain("felix-to-12ab", (clear, *tail(True)))
    frm6, _ = render_endpoint_chains(spec, 6, MARKS)
    assert frm6.rules[1:3] == (
        Rule("-p icmpv6 -m icmp6 --icmpv6-type 134", "-j DROP", "no router advertisement from "
             "workloads"),
        Rule("-p icmpv6 -m icmp6 --icmpv6-type 137", "-j DROP", "no redirect from workloads"))


def test_endpoint_with_several_addresses_and_none_of_a_version() -> None:
    spec = EndpointSpec("cali1", "1", ("198.18.1.1/32", "198.18.1.2/32"))
    frm, _ = render_endpoint_chains(spec, 4, MARKS)
    assert frm.rules[1:4] == (
        Rule("-s 198.18.1.1/32", "-j MARK --set-xmark 0x4000000/0x4000000"),
        Rule("-s 198.18.1.2/32", "-j MARK --set-xmark 0x4000000/0x4000000"),
        Rule("-m mark --mark 0x0/0x4000000", "-j DROP", "anti-spoofing: source address"))
    frm6, to6 = render_endpoint_chains(spec, 6, MARKS)
    assert frm6.rules == to6.rules == (Rule("", "-j DROP", "no addresses of this IP version"),)


def _walk(chains: dict[str, Chain], start: str, ifname: str, flag: str) -> str:
    """Follow a dispatch tree the way the kernel would for one interface name."""
    chain = chains[start]
    for rule in chain.rules:
        if not rule.match:
            return rule.action
        want = rule.match.split()[1]
        hit = ifname.startswith(want[:-1]) if want.endswith("+") else ifname == want
        assert rule.match.startswith(flag)
        if hit:
            target = rule.action.split()[1]
            return _walk(chains, target, ifname, flag) if target in chains else rule.action
    return "fell off"


def test_dispatch_is_a_tree_and_routes_every_interface() -> None:
    rng = random.Random(4)
    names = sorted({"cali" + "".join(rng.choice("0123456789abcdef") for _ in range(11))
                    for _ in range(2000)} | {"cali1", "cali12"})
    mapping = {n: (f"felix-from-{n[4:]}"[:28], f"felix-to-{n[4:]}"[:28]) for n in names}
    chains = {c.name: c for c in render_workload_dispatch(mapping)}
    assert all(len(c.rules) <= max(LEAF_MAX, 17) + 1 for c in chains.values())
    assert all(len(name) <= MAX_CHAIN_NAME for name in chains)
    for n in names:
        assert _walk(chains, "felix-FROM-ENDPOINT", n, "-i") == f"-g {mapping[n][0]}"
        assert _walk(chains, "felix-TO-ENDPOINT", n, "-o") == f"-g {mapping[n][1]}"
    assert _walk(chains, "felix-FROM-ENDPOINT", "cali_unknown", "-i") == "-j DROP"
    assert _walk(chains, "felix-FROM-ENDPOINT", names[5][:-1] + "z", "-i") == "-j DROP"


def test_small_dispatch_is_flat() -> None:
    chains = render_workload_dispatch({"calia": ("felix-from-a", "felix-to-a")})
    assert chains == [
        Chain("felix-FROM-ENDPOINT", (Rule("-i calia", "-g felix-from-a"),
                                      Rule("", "-j DROP", "unknown interface"))),
        Chain("felix-TO-ENDPOINT", (Rule("-o calia", "-g felix-to-a"),
                                    Rule("", "-j DROP", "unknown interface")))]


@pytest.mark.parametrize("action,expect", [
    ("DROP", [Rule("-i cali+", "-j DROP", "DefaultEndpointToHostAction")]),
    ("RETURN", [Rule("-i cali+", "-j felix-FROM-ENDPOINT", "workload outbound policy"),
                Rule("-i cali+", "-j RETURN", "DefaultEndpointToHostAction")]),
    ("ACCEPT", [Rule("-i cali+", "-j felix-FROM-ENDPOINT", "workload outbound policy"),
                Rule("-i cali+", "-j ACCEPT", "DefaultEndpointToHostAction")]),
])
def test_endpoint_to_host_action(action: str, expect: list[Rule]) -> None:
    chains = {c.name: c for c in render_filter_chains(4, ("cali",), action, MARKS,
                                                      (("tcp", 22), ("udp", 68), ("tcp", 179)),
                                                      (("tcp", 2379),))}
    rules = list(chains["felix-INPUT"].rules)
    start = rules.index(Rule("-i cali+ -p udp -m udp --dport 53", "-j ACCEPT", "DNS")) + 1
    assert rules[start:start + len(expect)] == expect
    assert chains["felix-FORWARD"].rules[:2] == (
        Rule("-m conntrack --ctstate INVALID", "-j DROP"),
        Rule("-m conntrack --ctstate RELATED,ESTABLISHED", "-j ACCEPT"))
    assert chains["felix-FAILSAFE-IN"].rules == (
        Rule("-p tcp -m multiport --dports 22,179", "-j ACCEPT", "failsafe"),
        Rule("-p udp -m multiport --dports 68", "-j ACCEPT", "failsafe"))
    assert chains["felix-FAILSAFE-OUT"].rules == (
        Rule("-p tcp -m multiport --dports 2379", "-j ACCEPT", "failsafe"),)
    # forwarded traffic that is not a workload's: host endpoint policy of both interfaces
    assert chains["felix-FORWARD"].rules[-4:] == (
        Rule("", "-j MARK --set-xmark 0x0/0x7000000"), Rule("", "-j felix-FROM-HOST-IF-FWD"),
        Rule("", "-j felix-TO-HOST-IF-FWD"),
        Rule("-m mark --mark 0x1000000/0x1000000", "-j ACCEPT"))


def test_encapsulation_between_cluster_hosts_comes_just_before_host_endpoints() -> None:
    """VXLAN (UDP VXLANPort) and IP-in-IP (protocol 4) from / to the all-hosts set are
    accepted right before the host endpoint dispatch on INPUT and OUTPUT - after the
    workload rules, so workloads never get the exemption - and only for what the pools
    use; nothing for IPv6 or without encapsulated pools."""
    def chains(version: int, encaps: tuple[str, ...], port: int = 4789) -> dict[str, Chain]:
        return {c.name: c for c in render_filter_chains(
            version, ("cali",), "DROP", MARKS, (("tcp", 22),), (("tcp", 2379),), encaps,
            port)}

    def before_dispatch(chain: Chain, dispatch: str) -> list[Rule]:
        rules = list(chain.rules)
        end = rules.index(Rule("", f"-j {dispatch}"))
        start = max(i for i, r in enumerate(rules[:end]) if "cali+" in r.match) + 1
        return rules[start:end]

    both = chains(4, ("vxlan", "ipip"), 4790)
    assert before_dispatch(both["felix-INPUT"], "felix-FROM-HOST-IF") == [
        Rule("-p udp -m udp --dport 4790 -m set --match-set felix-all-hosts src", "-j ACCEPT",
             "VXLAN from a cluster host"),
        Rule("-p 4 -m set --match-set felix-all-hosts src", "-j ACCEPT",
             "IP-in-IP from a cluster host")]
    assert before_dispatch(both["felix-OUTPUT"], "felix-TO-HOST-IF") == [
        Rule("-p udp -m udp --dport 4790 -m set --match-set felix-all-hosts dst", "-j ACCEPT",
             "VXLAN to a cluster host"),
        Rule("-p 4 -m set --match-set felix-all-hosts dst", "-j ACCEPT",
             "IP-in-IP to a cluster host")]
    vxlan = chains(4, ("vxlan",))
    assert [r.comment for r in before_dispatch(vxlan["felix-INPUT"], "felix-FROM-HOST-IF")] \
        == ["VXLAN from a cluster host"]
    ipip = chains(4, ("ipip",))
    assert [r.comment for r in before_dispatch(ipip["felix-OUTPUT"], "felix-TO-HOST-IF")] \
        == ["IP-in-IP to a cluster host"]
    for plain in (chains(4, ()), chains(6, ("vxlan", "ipip"))):
        assert before_dispatch(plain["felix-INPUT"], "felix-FROM-HOST-IF") == []
        assert before_dispatch(plain["felix-OUTPUT"], "felix-TO-HOST-IF") == []
    # everything else is as without encapsulation
    assert chains(4, ("vxlan",))["felix-FORWARD"] == chains(4, ())["felix-FORWARD"]
    assert chains(6, ("vxlan",)) == chains(6, ())


def test_base_jumps_and_nat() -> None:
    assert render_base_jumps("filter") == {
        "INPUT": (Rule("", "-j felix-INPUT"),), "FORWARD": (Rule("", "-j felix-FORWARD"),),
        "OUTPUT": (Rule("", "-j felix-OUTPUT"),)}
    assert render_base_jumps("nat") == {"POSTROUTING": (Rule("", "-j felix-POSTROUTING"),)}
    assert render_nat_chains() == [Chain("felix-POSTROUTING", (Rule(
        "-m set --match-set felix-masq-ipam-pools src -m set ! --match-set "
        "felix-all-ipam-pools dst", "-j MASQUERADE", "nat-outgoing"),))]


def test_names_fit_kernel_limits_and_stay_unique() -> None:
    long = "x" * 100
    assert uniquely_shorten("short", 16) == "short"
    assert len(uniquely_shorten(long, 16)) == 16
    assert uniquely_shorten(long, 16) != uniquely_shorten(long + "y", 16)
    assert uniquely_shorten("_" + "a" * 15, 16) != "_" + "a" * 15
    for name in (from_endpoint_chain(long), profile_chain(long, True),
                 policy_chain(long, long, False)):
        assert len(name) <= MAX_CHAIN_NAME
    assert len(tag_ipset(long, 6)) <= MAX_IPSET_NAME
    assert len(selector_ipset(parse_selector("a == 'b'").unique_id, 6)) <= MAX_IPSET_NAME


def test_a_reused_dispatch_renderer_gives_what_a_fresh_one_gives() -> None:
    """Cached subtrees must never leak: after every change the reused renderer's output
    equals a fresh render, and unchanged subtrees come back as the same objects."""
    import random

    from felix.rules.dispatch import DispatchRenderer

    rng = random.Random(7)
    names = [f"cali{rng.getrandbits(44):011x}" for _ in range(600)]
    mapping = {n: (f"felix-from-{n[4:]}", f"felix-to-{n[4:]}") for n in names[:400]}
    renderer = DispatchRenderer()
    previous = {c.name: c for c in renderer.render(mapping)}
    for step in range(60):
        n = rng.choice(names)
        if n in mapping and step % 3:
            del mapping[n]
        else:
            mapping[n] = (f"felix-from-{n[4:]}", f"felix-to-{n[4:]}")
        got = renderer.render(mapping)
        assert sorted(got, key=lambda c: c.name) == sorted(render_workload_dispatch(mapping),
                                                             key=lambda c: c.name)
        current = {c.name: c for c in got}
        reused = sum(1 for name, c in current.items() if previous.get(name) is c)
        assert reused >= len(current) - 16  # only chains near the changed path are rebuilt
        previous = current


def test_dispatch_target_reads_a_tree_back() -> None:
    from felix.rules.dispatch import dispatch_target, is_workload_dispatch_chain

    rng = random.Random(9)
    names = sorted({f"cali{rng.getrandbits(40):010x}" for _ in range(500)})
    mapping = {n: (f"felix-from-{n[4:]}", f"felix-to-{n[4:]}") for n in names}
    chains = {c.name: c for c in render_workload_dispatch(mapping)}
    assert all(is_workload_dispatch_chain(n) for n in chains)
    assert not is_workload_dispatch_chain("felix-from-0123")
    for n in names:
        assert dispatch_target(chains.get, "felix-FROM-ENDPOINT", n) == mapping[n][0]
        assert dispatch_target(chains.get, "felix-TO-ENDPOINT", n) == mapping[n][1]
    assert dispatch_target(chains.get, "felix-FROM-ENDPOINT", "caliunknown") is None
    # a sub-chain missing (not in the kernel): exactly the interfaces below it are lost
    prefix, sub = next((r.match[3:-1], r.action[3:]) for r in chains["felix-FROM-ENDPOINT"].rules
                       if r.match.endswith("+"))
    del chains[sub]
    for n in names:
        got = dispatch_target(chains.get, "felix-FROM-ENDPOINT", n)
        assert got == (None if n.startswith(prefix) else mapping[n][0])
