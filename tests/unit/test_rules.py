"""The v1 rule grammar: every field and negation, constraints, ports, rendering."""

from __future__ import annotations

from typing import Any

import pytest

from libcalico.errors import ValidationError
from libcalico.model.rules import PortRange, Rule, Rules, parse_ports
from libcalico.model.selector import parse_selector

# Each dict is already canonical: from_dict then to_dict gives it back unchanged.
CANONICAL_RULES: list[dict[str, Any]] = [
    {},
    {"action": "deny"},
    {"action": "log", "log_prefix": "calico-drop"},
    {"action": "next-tier"},
    {"protocol": "tcp"},
    {"protocol": "udp"},
    {"protocol": "icmp"},
    {"protocol": "icmpv6"},
    {"protocol": "sctp"},
    {"protocol": "udplite"},
    {"protocol": 47},
    {"!protocol": "udp"},
    {"!protocol": 255},
    {"src_net": "10.0.0.0/8"},
    {"!src_net": "10.1.2.3/32"},
    {"dst_net": "2001:db8::/32"},
    {"!dst_net": "2001:db8::1/128"},
    {"src_tag": "web-servers"},
    {"!src_tag": "a_b.c"},
    {"dst_tag": "db"},
    {"!dst_tag": "db"},
    {"src_selector": 'role == "web"'},
    {"!src_selector": "has(role)"},
    {"dst_selector": "all()"},
    {"!dst_selector": 'env in {"dev", "test"}'},
    {"protocol": "tcp", "src_ports": [80]},
    {"protocol": "udp", "!src_ports": [53, "1000:2000"]},
    {"protocol": "sctp", "dst_ports": ["0:65535"]},
    {"protocol": "udplite", "!dst_ports": [1, 2, 3]},
    {"protocol": "icmp", "icmp_type": 8},
    {"protocol": "icmp", "icmp_type": 3, "icmp_code": 1},
    {"protocol": "icmpv6", "!icmp_type": 128},
    {"protocol": "icmpv6", "!icmp_type": 1, "!icmp_code": 4},
    {"protocol": "icmp", "icmp_type": 0, "icmp_code": 0},
    {"protocol": "icmp", "icmp_type": 255, "icmp_code": 255},
    {"action": "deny", "protocol": "tcp", "!protocol": "udp", "src_net": "10.0.0.0/8",
     "!src_net": "10.1.0.0/16", "src_tag": "a", "!src_tag": "b", "src_selector": "has(x)",
     "!src_selector": 'y == "1"', "src_ports": [1, "2:3"], "!src_ports": [4],
     "dst_net": "192.168.0.0/16", "!dst_net": "192.168.1.0/24", "dst_tag": "c",
     "!dst_tag": "d", "dst_selector": "has(z)", "!dst_selector": 'w != "2"',
     "dst_ports": [443], "!dst_ports": ["8000:9000"], "log_prefix": "p"},
]


@pytest.mark.parametrize("data", CANONICAL_RULES, ids=lambda d: ",".join(d) or "empty")
def test_round_trip(data: dict[str, Any]) -> None:
    rule = Rule.from_dict(data)
    assert rule.to_dict() == data
    assert Rule.from_dict(rule.to_dict()) == rule
    assert hash(rule) == hash(Rule.from_dict(data))


def test_every_field_has_a_negation() -> None:
    """Every positive match field has a `not_` twin, spelled `!field` in JSON."""
    rule = Rule.from_dict(CANONICAL_RULES[-1])
    out = rule.to_dict()
    for key in ("protocol", "src_net", "src_tag", "src_selector", "src_ports", "dst_net",
                "dst_tag", "dst_selector", "dst_ports"):
        assert key in out and f"!{key}" in out
        assert getattr(rule, f"not_{key}") is not None
    icmp = Rule.from_dict({"protocol": "icmp", "icmp_type": 1, "icmp_code": 2,
                           "!icmp_type": 3, "!icmp_code": 4})
    assert (icmp.icmp_type, icmp.icmp_code, icmp.not_icmp_type, icmp.not_icmp_code) == (1, 2, 3, 4)
    assert Rule.from_dict(icmp.to_dict()) == icmp


@pytest.mark.parametrize(("data", "field", "expected"), [
    ({"protocol": "TCP"}, "protocol", "tcp"),
    ({"protocol": "ICMPv6"}, "protocol", "icmpv6"),
    ({"protocol": "6"}, "protocol", 6),
    ({"protocol": 17}, "protocol", 17),
    ({"!protocol": "UDP"}, "not_protocol", "udp"),
    ({"src_net": "10.1.2.3"}, "src_net", "10.1.2.3/32"),
    ({"src_net": "10.1.2.3/24"}, "src_net", "10.1.2.0/24"),
    ({"!dst_net": "2001:DB8:0:0::1"}, "not_dst_net", "2001:db8::1/128"),
    ({"dst_net": "2001:db8::1/64"}, "dst_net", "2001:db8::/64"),
    ({"src_selector": "  role=='web'"}, "src_selector", 'role == "web"'),
    ({"dst_selector": ""}, "dst_selector", "all()"),
    ({"log_prefix": "a" * 40}, "log_prefix", "a" * 27),
    ({"protocol": "tcp", "dst_ports": "80,8000:8080"}, "dst_ports",
     (PortRange(80, 80), PortRange(8000, 8080))),
    ({"protocol": "tcp", "dst_ports": ["22", "1:2"]}, "dst_ports",
     (PortRange(22, 22), PortRange(1, 2))),
    ({"protocol": "tcp", "dst_ports": []}, "dst_ports", ()),
    ({"action": "allow"}, "action", "allow"),
])
def test_canonicalisation(data: dict[str, Any], field: str, expected: Any) -> None:
    assert getattr(Rule.from_dict(data), field) == expected


def test_defaults_are_not_written() -> None:
    assert Rule.from_dict({"action": "allow"}).to_dict() == {}
    assert Rule.from_dict({"protocol": "tcp", "dst_ports": []}).to_dict() == {"protocol": "tcp"}


@pytest.mark.parametrize(("data", "field", "value"), [
    ({"action": "accept"}, "action", "accept"),
    ({"action": None}, "action", None),
    ({"protocol": "gre"}, "protocol", "gre"),
    ({"protocol": 0}, "protocol", 0),
    ({"protocol": 256}, "protocol", 256),
    ({"protocol": True}, "protocol", True),
    ({"!protocol": "ipx"}, "!protocol", "ipx"),
    ({"src_net": "10.0.0.0/33"}, "src_net", "10.0.0.0/33"),
    ({"!src_net": "bogus"}, "!src_net", "bogus"),
    ({"dst_net": 10}, "dst_net", 10),
    ({"!dst_net": "::/129"}, "!dst_net", "::/129"),
    ({"src_tag": ""}, "src_tag", ""),
    ({"!src_tag": "has space"}, "!src_tag", "has space"),
    ({"dst_tag": "a/b"}, "dst_tag", "a/b"),
    ({"!dst_tag": 5}, "!dst_tag", 5),
    ({"src_selector": "a =="}, "src_selector", "a =="),
    ({"!src_selector": "has("}, "!src_selector", "has("),
    ({"dst_selector": 3}, "dst_selector", 3),
    ({"!dst_selector": "a = 'b'"}, "!dst_selector", "a = 'b'"),
    ({"src_ports": [80]}, "src_ports", [80]),
    ({"protocol": "icmp", "dst_ports": [80]}, "dst_ports", [80]),
    ({"!protocol": "tcp", "!src_ports": [80]}, "!src_ports", [80]),
    ({"protocol": 1, "!dst_ports": ["1:2"]}, "!dst_ports", ["1:2"]),
    ({"protocol": "tcp", "src_ports": [65536]}, "src_ports", 65536),
    ({"protocol": "tcp", "src_ports": [-1]}, "src_ports", -1),
    ({"protocol": "tcp", "src_ports": ["90:80"]}, "src_ports", "90:80"),
    ({"protocol": "tcp", "src_ports": ["http"]}, "src_ports", "http"),
    ({"protocol": "tcp", "src_ports": [True]}, "src_ports", True),
    ({"protocol": "tcp", "dst_ports": 80}, "dst_ports", 80),
    ({"protocol": "tcp", "dst_ports": [1.5]}, "dst_ports", 1.5),
    ({"icmp_type": 8}, "icmp_type", 8),
    ({"protocol": "tcp", "icmp_type": 8}, "icmp_type", 8),
    ({"!protocol": "icmp", "!icmp_type": 8}, "!icmp_type", 8),
    ({"protocol": "icmp", "icmp_code": 0}, "icmp_code", 0),
    ({"protocol": "icmp", "icmp_type": 8, "!icmp_code": 0}, "!icmp_code", 0),
    ({"protocol": "icmp", "icmp_type": 256}, "icmp_type", 256),
    ({"protocol": "icmp", "icmp_type": -1}, "icmp_type", -1),
    ({"protocol": "icmp", "icmp_type": "8"}, "icmp_type", "8"),
    ({"protocol": "icmp", "icmp_type": 8, "icmp_code": 300}, "icmp_code", 300),
    ({"protocol": "icmpv6", "!icmp_type": 1, "!icmp_code": 1.0}, "!icmp_code", 1.0),
    ({"log_prefix": ""}, "log_prefix", ""),
    ({"log_prefix": "bad\nprefix"}, "log_prefix", "bad\nprefix"),
    ({"log_prefix": 'quote"'}, "log_prefix", 'quote"'),
    ({"log_prefix": 7}, "log_prefix", 7),
    ({"src_port": [80]}, "src_port", [80]),
    ({"!action": "deny"}, "!action", "deny"),
    ({"!log_prefix": "x"}, "!log_prefix", "x"),
    ({"id": "x"}, "id", "x"),
])
def test_validation_errors(data: dict[str, Any], field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        Rule.from_dict(data)
    assert info.value.field == field
    assert info.value.value == value
    assert str(info.value).startswith(f"invalid {field} {value!r}: ")


@pytest.mark.parametrize(("data", "field"), [
    ({"src_net": "10.0.0.0/8", "dst_net": "2001:db8::/32"}, "dst_net"),
    ({"src_net": "2001:db8::/32", "!src_net": "10.0.0.0/8"}, "!src_net"),
    ({"dst_net": "10.0.0.0/8", "!dst_net": "::/0"}, "!dst_net"),
    ({"!src_net": "::1", "dst_net": "10.0.0.1"}, "dst_net"),
    ({"protocol": "icmpv6", "src_net": "10.0.0.0/8"}, "src_net"),
    ({"protocol": 58, "dst_net": "10.0.0.0/8"}, "dst_net"),
    ({"protocol": "icmp", "dst_net": "2001:db8::/32"}, "dst_net"),
    ({"protocol": 1, "!src_net": "2001:db8::/32"}, "!src_net"),
])
def test_mixed_ip_versions(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Rule.from_dict(data)
    assert info.value.field == field
    assert "IPv" in info.value.reason


@pytest.mark.parametrize(("data", "version"), [
    ({}, None),
    ({"protocol": "tcp"}, None),
    ({"!protocol": "icmp"}, None),
    ({"protocol": "icmp"}, 4),
    ({"protocol": 1}, 4),
    ({"protocol": "icmpv6"}, 6),
    ({"protocol": 58}, 6),
    ({"src_net": "10.0.0.0/8"}, 4),
    ({"!dst_net": "::/0"}, 6),
    ({"src_net": "10.0.0.0/8", "dst_net": "10.1.0.0/16", "protocol": "icmp"}, 4),
    ({"src_tag": "a", "src_selector": "has(x)"}, None),
])
def test_ip_version(data: dict[str, Any], version: int | None) -> None:
    assert Rule.from_dict(data).ip_version == version


@pytest.mark.parametrize("protocol", ["tcp", "udp", "sctp", "udplite", 6, 17, 132, 136])
def test_ports_allowed_with_port_protocols(protocol: str | int) -> None:
    rule = Rule.from_dict({"protocol": protocol, "dst_ports": [80], "!src_ports": [1]})
    assert rule.dst_ports == (PortRange(80, 80),)


@pytest.mark.parametrize(("text", "expected"), [
    ("80", [(80, 80)]),
    (" 80 ", [(80, 80)]),
    ("8000:8080", [(8000, 8080)]),
    ("22,80,8000:8080", [(22, 22), (80, 80), (8000, 8080)]),
    ("0", [(0, 0)]),
    ("65535", [(65535, 65535)]),
    ("0:65535", [(0, 65535)]),
    ("5:5", [(5, 5)]),
    ([80, "81", "90:100"], [(80, 80), (81, 81), (90, 100)]),
    ((1, 2), [(1, 1), (2, 2)]),
    ([PortRange(1, 3)], [(1, 3)]),
    ([], []),
])
def test_parse_ports(text: Any, expected: list[tuple[int, int]]) -> None:
    assert parse_ports("dst_ports", text) == tuple(PortRange(lo, hi) for lo, hi in expected)


@pytest.mark.parametrize(("value", "bad"), [
    ("", ""),
    ("80,", ""),
    ("a", "a"),
    ("80-90", "80-90"),
    ("1:2:3", "1:2:3"),
    ("65536", "65536"),
    ("10:5", "10:5"),
    (":5", ":5"),
    ("-1", "-1"),
    ([80, None], None),
    ([True], True),
    (80, 80),
    ({"80": 1}, {"80": 1}),
])
def test_parse_ports_errors(value: Any, bad: Any) -> None:
    with pytest.raises(ValidationError) as info:
        parse_ports("src_ports", value)
    assert info.value.field == "src_ports"
    assert info.value.value == bad


def test_port_range() -> None:
    assert PortRange(80, 80).to_json() == 80
    assert PortRange(1, 2).to_json() == "1:2"
    assert str(PortRange(1, 2)) == "1:2"
    assert PortRange(1, 2) < PortRange(2, 2)
    with pytest.raises(ValidationError, match="invalid port range '3:2'"):
        PortRange(3, 2)
    with pytest.raises(ValidationError, match="invalid port 70000"):
        PortRange(1, 70000)


@pytest.mark.parametrize(("data", "text"), [
    ({}, "allow"),
    ({"action": "deny", "protocol": "icmp"}, "deny icmp"),
    ({"protocol": "icmp", "icmp_type": 8, "icmp_code": 0}, "allow icmp type 8 code 0"),
    ({"protocol": "icmp", "!icmp_type": 8}, "allow icmp !type 8"),
    ({"!protocol": "tcp"}, "allow !tcp"),
    ({"protocol": "tcp", "src_ports": [80], "src_tag": "foo", "src_net": "1.2.3.0/24",
      "dst_ports": [443, "8000:8080"]},
     "allow tcp from ports 80 tag foo cidr 1.2.3.0/24 to ports 443,8000:8080"),
    ({"protocol": "udp", "!src_ports": [53], "!dst_tag": "x", "!dst_net": "10.0.0.0/8"},
     "allow udp from !ports 53 to !tag x !cidr 10.0.0.0/8"),
    ({"src_selector": "has(a)", "!dst_selector": "b == 'c'"},
     "allow from selector \"has(a)\" to !selector 'b == \"c\"'"),
    ({"action": "log", "log_prefix": "drop"}, 'log log-prefix "drop"'),
])
def test_pprint(data: dict[str, Any], text: str) -> None:
    assert Rule.from_dict(data).pprint() == text


def test_direct_construction_validates_and_canonicalises() -> None:
    rule = Rule(protocol="TCP", dst_ports=(PortRange(1, 1),), src_net="10.0.0.1")
    assert (rule.protocol, rule.src_net) == ("tcp", "10.0.0.1/32")
    assert rule == Rule.from_dict({"protocol": "tcp", "dst_ports": [1], "src_net": "10.0.0.1/32"})
    with pytest.raises(ValidationError, match="invalid action 'drop'"):
        Rule(action="drop")


def test_rule_from_non_mapping() -> None:
    with pytest.raises(ValidationError, match="invalid rule"):
        Rule.from_dict(["allow"])  # type: ignore[arg-type]


# --- Rules -------------------------------------------------------------------------------

def test_rules_round_trip() -> None:
    data = {"inbound_rules": [{"action": "deny", "protocol": "tcp", "dst_ports": [22]}, {}],
            "outbound_rules": [{"dst_net": "10.0.0.0/8"}]}
    rules = Rules.from_dict(data)
    assert len(rules.inbound) == 2 and len(rules.outbound) == 1
    assert rules.to_dict() == data
    assert Rules.from_dict(rules.to_dict()) == rules


@pytest.mark.parametrize(("data", "inbound", "outbound"), [
    ({}, 0, 0),
    ({"inbound_rules": [{}]}, 1, 0),
    ({"outbound_rules": [{}, {}]}, 0, 2),
    ({"inbound_rules": None, "outbound_rules": []}, 0, 0),
    ({"id": "prof", "inbound_rules": [{}]}, 1, 0),  # libcalico's legacy "id" is ignored
])
def test_rules_missing_lists(data: dict[str, Any], inbound: int, outbound: int) -> None:
    rules = Rules.from_dict(data)
    assert (len(rules.inbound), len(rules.outbound)) == (inbound, outbound)
    assert set(rules.to_dict()) == {"inbound_rules", "outbound_rules"}


@pytest.mark.parametrize(("data", "field", "value"), [
    ({"inbound": []}, "inbound", []),
    ({"inbound_rules": {}}, "inbound_rules", {}),
    ({"inbound_rules": [{}, {"action": "drop"}]}, "inbound_rules[1].action", "drop"),
    ({"outbound_rules": [{"src_ports": [1]}]}, "outbound_rules[0].src_ports", [1]),
    ({"outbound_rules": ["allow"]}, "outbound_rules[0].rule", "allow"),
])
def test_rules_errors(data: dict[str, Any], field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        Rules.from_dict(data)
    assert (info.value.field, info.value.value) == (field, value)


def test_rules_tags_and_selectors_used() -> None:
    rules = Rules.from_dict({
        "inbound_rules": [{"src_tag": "a", "!dst_tag": "b"}, {"src_selector": "has(x)"}],
        "outbound_rules": [{"dst_tag": "a", "!src_tag": "c", "!dst_selector": " has( x ) "},
                           {"dst_selector": "y == 'z'", "!src_selector": "all()"}],
    })
    assert rules.tags_used() == {"a", "b", "c"}
    assert rules.selectors_used() == {parse_selector("has(x)"), parse_selector('y == "z"'),
                                      parse_selector("")}
    assert Rules().tags_used() == frozenset()
    assert Rules().selectors_used() == frozenset()
