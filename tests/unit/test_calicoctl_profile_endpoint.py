"""calicoctl profile and endpoint commands against a real etcd."""

from __future__ import annotations

import json

import pytest

from libcalico import keyspace as ks
from tests.support.ctl import Ctl, golden

pytestmark = pytest.mark.etcd


@pytest.fixture
def ctl(datastore, etcd_server):
    return Ctl(etcd_server.env())


def _rules(datastore, name):
    return json.loads(datastore.get_value(ks.profile_key(name, "rules")))


def test_profile_add_show_remove(ctl, datastore):
    ctl("profile", "add", "web")
    ctl("profile", "add", "db")
    assert json.loads(datastore.get_value(ks.profile_key("web", "tags"))) == ["web"]
    assert _rules(datastore, "web") == {"inbound_rules": [{"src_tag": "web"}],
                                        "outbound_rules": [{}]}  # allow is the default
    res = ctl("profile", "add", "web", code=3)
    assert "already exists" in res.err
    ctl("profile", "add", "bad/name", code=2)
    golden("profile_show.txt", ctl("profile", "show").out)
    golden("profile_show_detailed.txt", ctl("profile", "show", "--detailed").out)
    docs = json.loads(ctl("profile", "show", "-o", "json").out)
    assert [d["metadata"]["name"] for d in docs] == ["db", "web"]
    ctl("profile", "remove", "db")
    assert datastore.list(ks.profile_dir("db"))[0] == []
    res = ctl("profile", "remove", "db", code=3)
    assert "db" in res.err


def test_profile_tags(ctl, datastore):
    ctl("profile", "add", "web")
    ctl("profile", "web", "tag", "add", "frontend")
    assert json.loads(datastore.get_value(ks.profile_key("web", "tags"))) == ["frontend", "web"]
    assert ctl("profile", "web", "tag", "show").out.count("frontend") == 1
    ctl("profile", "web", "tag", "remove", "web")
    assert json.loads(datastore.get_value(ks.profile_key("web", "tags"))) == ["frontend"]
    ctl("profile", "web", "tag", "remove", "nope", code=3)
    ctl("profile", "web", "tag", "add", "bad tag", code=2)
    res = ctl("profile", "ghost", "tag", "add", "x", code=3)
    assert "ghost" in res.err


def test_profile_rule_grammar(ctl, datastore):
    ctl("profile", "add", "p")
    ctl("profile", "p", "rule", "add", "inbound", "allow", "tcp", "from", "ports",
        "80,8000:8080", "tag", "web", "cidr", "198.18.0.0/16", "to", "ports", "443")
    ctl("profile", "p", "rule", "add", "inbound", "--at", "0", "deny", "icmp", "type", "8",
        "code", "0", "from", "!cidr", "198.18.1.0/24")
    ctl("profile", "p", "rule", "add", "outbound", "deny", "udp", "to", "not", "ports", "53",
        "selector", "role == 'dns'")
    ctl("profile", "p", "rule", "add", "outbound", "allow", "icmpv6", "type", "128",
        "to", "cidr", "fd00::/8")
    ctl("profile", "p", "rule", "add", "inbound", "allow", "!tcp")
    rules = _rules(datastore, "p")
    assert rules["inbound_rules"][0] == {"action": "deny", "protocol": "icmp", "icmp_type": 8,
                                         "icmp_code": 0, "!src_net": "198.18.1.0/24"}
    assert rules["inbound_rules"][2] == {"protocol": "tcp",
                                         "src_ports": [80, "8000:8080"], "src_tag": "web",
                                         "src_net": "198.18.0.0/16", "dst_ports": [443]}
    assert rules["inbound_rules"][3] == {"!protocol": "tcp"}
    assert rules["outbound_rules"][1] == {"action": "deny", "protocol": "udp",
                                          "!dst_ports": [53], "dst_selector": "role == \"dns\""}
    assert rules["outbound_rules"][2]["protocol"] == "icmpv6"
    golden("profile_rule_show.txt", ctl("profile", "p", "rule", "show").out)
    assert json.loads(ctl("profile", "p", "rule", "json").out) == rules

    # Removal by words and by position.
    ctl("profile", "p", "rule", "remove", "inbound", "allow", "!tcp")
    ctl("profile", "p", "rule", "remove", "outbound", "--at", "0")
    rules2 = _rules(datastore, "p")
    assert len(rules2["inbound_rules"]) == 3 and rules2["outbound_rules"][0].get("action") == "deny"
    ctl("profile", "p", "rule", "remove", "inbound", "deny", "tcp", code=3)
    ctl("profile", "p", "rule", "remove", "inbound", "--at", "9", code=2)
    ctl("profile", "p", "rule", "remove", "inbound", code=2)

    # Malformed rules: nothing changes and the error names the problem.
    before = _rules(datastore, "p")
    bad = [
        (["allow", "icmp", "from", "ports", "80"], "src_ports"),
        (["allow", "tcp", "type", "8"], "icmp_type"),
        (["allow", "tcp", "from", "cidr", "198.18.0.0/33"], "src_net"),
        (["allow", "tcp", "from", "ports", "99999"], "src_ports"),
        (["allow", "tcp", "from", "selector", "a ==="], "src_selector"),
        (["allow", "from", "cidr", "198.18.0.0/16", "to", "cidr", "fd00::/8"], "dst_net"),
        (["allow", "tcp", "sideways"], "sideways"),
        (["allow", "from", "tag"], "tag"),
    ]
    for words, needle in bad:
        res = ctl("profile", "p", "rule", "add", "inbound", *words, code=2)
        assert needle in res.err, (words, res.err)
    ctl("profile", "p", "rule", "add", "inbound", "permit", code=2)
    ctl("profile", "p", "rule", "add", "sideways", "allow", code=2)
    assert _rules(datastore, "p") == before


def test_profile_rule_update_from_stdin(ctl, datastore):
    ctl("profile", "add", "p")
    new = {"inbound_rules": [{"action": "deny", "protocol": "tcp", "dst_ports": [22]}],
           "outbound_rules": []}
    ctl("profile", "p", "rule", "update", input=json.dumps(new))
    assert _rules(datastore, "p") == new
    res = ctl("profile", "p", "rule", "update", input='{"inbound_rules": [', code=2)
    assert "line 1" in res.err
    res = ctl("profile", "p", "rule", "update",
              input='{"inbound_rules": [{"action": "allow", "bogus": 1}]}', code=2)
    assert "bogus" in res.err
    assert _rules(datastore, "p") == new


def _put_wep(datastore, host, orch, workload, ep, **extra):
    value = {"state": "active", "name": f"cali{ep}", "profile_ids": [], "labels": {},
             "ipv4_nets": ["198.18.5.1/32"], "ipv6_nets": [], "mac": "ee:ee:ee:ee:ee:ee",
             **extra}
    datastore.put(ks.workload_endpoint_key(host, orch, workload, ep), json.dumps(value))


def _wep(datastore, host, orch, workload, ep):
    return json.loads(datastore.get_value(ks.workload_endpoint_key(host, orch, workload, ep)))


def test_endpoint_show_and_profiles(ctl, datastore):
    _put_wep(datastore, "h1", "docker", "w1", "e1")
    _put_wep(datastore, "h1", "docker", "w1", "e2", ipv4_nets=["198.18.5.2/32"])
    _put_wep(datastore, "h2", "netns", "w2", "e3", ipv4_nets=["198.18.6.1/32"],
             ipv6_nets=["fd00::6:1/128"])
    datastore.put(ks.workload_endpoint_key("h2", "netns", "w9", "bad"), "{not json")
    golden("endpoint_show.txt", ctl("endpoint", "show").out)
    golden("endpoint_show_detailed.txt", ctl("endpoint", "show", "--detailed").out)
    out = ctl("endpoint", "show", "--host", "h2", "--detailed").out
    assert "e3" in out and "e1" not in out
    assert "e2" in ctl("endpoint", "show", "--endpoint", "e2", "--detailed").out
    docs = json.loads(ctl("endpoint", "show", "--workload", "w1", "-o", "json").out)
    assert sorted(d["metadata"]["endpoint_id"] for d in docs) == ["e1", "e2"]

    ctl("profile", "add", "a")
    ctl("profile", "add", "b")
    ctl("endpoint", "e1", "profile", "append", "a", "b")
    assert _wep(datastore, "h1", "docker", "w1", "e1")["profile_ids"] == ["a", "b"]
    res = ctl("endpoint", "e1", "profile", "append", "ghost", code=2)
    assert "ghost" in res.err and "unknown profile" in res.err
    ctl("endpoint", "e1", "profile", "remove", "a")
    assert _wep(datastore, "h1", "docker", "w1", "e1")["profile_ids"] == ["b"]
    ctl("endpoint", "e1", "profile", "remove", "a", code=3)
    ctl("endpoint", "e1", "profile", "set", "a", "b")
    assert _wep(datastore, "h1", "docker", "w1", "e1")["profile_ids"] == ["a", "b"]
    out = ctl("endpoint", "e1", "profile", "show", "--host", "h1").out
    assert out.index("| a") < out.index("| b")
    ctl("endpoint", "e1", "profile", "set")
    assert _wep(datastore, "h1", "docker", "w1", "e1")["profile_ids"] == []
    ctl("endpoint", "nope", "profile", "show", code=3)
    # Removing a profile still in use is refused.
    ctl("endpoint", "e2", "profile", "set", "a")
    res = ctl("profile", "remove", "a", code=3)
    assert "e2" in res.err
    ctl("profile", "remove", "a", "--no-check")
