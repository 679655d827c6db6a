"""calicoctl hostendpoint and policy trace against a real etcd (the trace through the
calico-felix-trace program it runs)."""

from __future__ import annotations

import json

import pytest

from libcalico import keyspace as ks
from tests.support.ctl import Ctl

pytestmark = pytest.mark.etcd


@pytest.fixture
def ctl(datastore, etcd_server):
    return Ctl(etcd_server.env())


def test_hostendpoint_add_show_remove(ctl, datastore):
    ctl("profile", "add", "edge")
    ctl("hostendpoint", "add", "fabric", "--node", "h1", "--interface", "eth0", "--ip",
        "198.18.0.1", "--ip", "FD00::1", "--profile", "edge", "--label", "role=edge")
    stored = json.loads(datastore.get_value(ks.host_endpoint_key("h1", "fabric")))
    assert stored == {"name": "eth0", "expected_ipv4_addrs": ["198.18.0.1"],
                      "expected_ipv6_addrs": ["fd00::1"], "profile_ids": ["edge"],
                      "labels": {"role": "edge"}}
    ctl("hostendpoint", "add", "lo", "--ip", "198.18.0.9")  # --node defaults to $HOSTNAME
    assert datastore.get_value(ks.host_endpoint_key("ctl-host", "lo")) is not None
    table = ctl("hostendpoint", "show").out
    assert "| h1       | fabric | eth0      | 198.18.0.1,fd00::1 | edge     | role=edge |" in \
        table
    docs = json.loads(ctl("hostendpoint", "show", "--node", "h1", "-o", "json").out)
    assert [d["metadata"]["endpoint_id"] for d in docs] == ["fabric"]
    ctl("hostendpoint", "remove", "fabric", "--node", "h1")
    assert datastore.get_value(ks.host_endpoint_key("h1", "fabric")) is None


@pytest.mark.parametrize("args,code,words", [
    (["--interface", "eth0", "--profile", "ghost"], 2, "unknown profile"),
    (["--interface", "bad name"], 2, "name"),
    (["--ip", "198.18.0.300"], 2, "198.18.0.300"),
    (["--label", "novalue"], 2, "KEY=VALUE"),
    ([], 2, "interface name or an expected address"),
])
def test_hostendpoint_add_refuses_bad_input_and_writes_nothing(ctl, datastore, args, code,
                                                               words):
    res = ctl("hostendpoint", "add", "x", "--node", "h1", *args, code=code)
    assert words in res.err and res.err.count("\n") == 1
    assert datastore.list(ks.HOST_DIR)[0] == []


def test_hostendpoint_add_twice_and_remove_missing(ctl):
    ctl("hostendpoint", "add", "x", "--node", "h1", "--interface", "eth0")
    assert "already exists" in ctl("hostendpoint", "add", "x", "--node", "h1", "--interface",
                                   "eth1", code=3).err
    assert "does not exist" in ctl("hostendpoint", "remove", "y", "--node", "h1", code=3).err


def _seed(datastore):
    for key, value in (
            (ks.workload_endpoint_key("h1", "k8s", "web", "eth0"),
             {"state": "active", "name": "cali1", "profile_ids": ["web"],
              "ipv4_nets": ["198.18.10.1/32"], "labels": {"app": "web"}}),
            (ks.workload_endpoint_key("h1", "k8s", "db", "eth0"),
             {"state": "active", "name": "cali2", "profile_ids": ["db"],
              "ipv4_nets": ["198.18.10.2/32"]}),
            (ks.profile_key("web", "rules"), {"outbound_rules": [{"action": "allow"}]}),
            (ks.profile_key("db", "rules"), {"inbound_rules": [
                {"action": "allow", "protocol": "tcp", "src_selector": "app == 'web'",
                 "dst_ports": [5432]}]})):
        datastore.put(key, json.dumps(value))


def test_policy_trace_prints_and_exits_zero_whatever_the_verdict(ctl, datastore):
    _seed(datastore)
    res = ctl("policy", "trace", "--from", "web", "--to", "db", "--port", "5432")
    assert res.out.splitlines()[-1] == "verdict: allow"
    assert """profile db, inbound rule 0: allow tcp from selector 'app == "web"' to ports """ \
           "5432" in res.out
    res = ctl("policy", "trace", "--from", "db", "--to", "198.18.10.1", "--port", "80")
    assert res.out.splitlines()[-1] == "verdict: deny"
    doc = json.loads(ctl("policy", "trace", "--from", "web", "--to", "db", "--port", "22",
                         "-o", "json").out)
    assert doc["verdict"] == "deny"
    assert [d["direction"] for d in doc["directions"]] == ["out", "in"]
    assert doc["directions"][1]["decided_by"]["kind"] == "no-policy-accepted"
    assert "--from SRC" in ctl("policy", "trace", "--help").out


@pytest.mark.parametrize("args,code,words", [
    (["--from", "web", "--to", "db", "--port", "0"], 2, "invalid --port 0"),
    (["--from", "web", "--to", "db", "--port", "http"], 2, "invalid --port 'http'"),
    (["--from", "web", "--to", "db"], 2, "needs a destination port"),
    (["--from", "web", "--to", "db", "--protocol", "icmp", "--port", "1"], 2, "no ports"),
    (["--from", "nobody", "--to", "db", "--port", "1"], 3, "no workload endpoint named nobody"),
    (["--from", "web", "--to", "hep:h1/eth9", "--port", "1"], 3, "does not exist"),
    (["--to", "db"], 2, "--from"),
])
def test_policy_trace_bad_input(ctl, datastore, args, code, words):
    _seed(datastore)
    res = ctl("policy", "trace", *args, code=code)
    assert words in res.err and res.err.count("\n") == 1 and res.out == ""


def test_policy_trace_with_etcd_away_exits_4(etcd_server):
    res = Ctl({"ETCD_ENDPOINTS": "http://127.0.0.1:9"})(
        "policy", "trace", "--from", "a", "--to", "b", "--port", "1", code=4)
    assert res.err.startswith("Error:")
