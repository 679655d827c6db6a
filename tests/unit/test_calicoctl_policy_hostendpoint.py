"""calicoctl hostendpoint and policy trace against a real etcd (the trace through the
calico-felix-trace program it runs)."""

from __future__ import annotations

import json
import os
import subprocess

import click
import pytest

from calicoctl import launch
from libcalico import keyspace as ks
from netsim.topology import calicoctl_path
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


def _program(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The installed `calicoctl` program (its launcher hands `policy trace` over)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    return subprocess.run([calicoctl_path(), *args], env={**base, **env},
                          capture_output=True, text=True, check=False)


@pytest.mark.parametrize("args", [
    ["--from", "web", "--to", "db", "--port", "5432"],
    ["--from", "db", "--to", "198.18.10.1", "--port", "80", "-o", "json"],
    ["--from", "nobody", "--to", "db", "--port", "1"],
    ["--from", "web", "--to", "db", "--port", "0"],
])
def test_policy_trace_program_hands_over_like_the_command(ctl, datastore, etcd_server, args):
    """`calicoctl [GLOBAL OPTIONS] policy trace` run as a program execs the trace program
    before click loads; what it prints and its exit code are the click command's."""
    _seed(datastore)
    url = etcd_server.env()["ETCD_ENDPOINTS"]
    want = ctl("policy", "trace", *args, code=None)
    for env, opts in (({"ETCD_ENDPOINTS": url}, []),
                      ({"ETCD_ENDPOINTS": "http://127.0.0.1:9"}, ["--etcd-endpoints", url]),
                      ({}, [f"--etcd-endpoints={url}", "--log-level", "info"])):
        got = _program(env, *opts, "policy", "trace", *args)
        assert (got.returncode, got.stdout, got.stderr) == (want.code, want.out, want.err)
    # ... without loading click (a query pays for one program's start-up only)
    got = _program({"ETCD_ENDPOINTS": url, "PYTHONPROFILEIMPORTTIME": "1"}, "policy",
                   "trace", *args)
    imported = {line.split("|")[-1].strip() for line in got.stderr.splitlines()
                if line.startswith("import time:")}
    assert "felix.trace.main" in imported and "click" not in imported
    # and the options it does not know go through click, which names them
    got = _program({"ETCD_ENDPOINTS": url}, "--log-level", "loud", "policy", "trace", *args)
    assert got.returncode == 2 and "loud" in got.stderr


def test_launcher_knows_the_groups_options():
    """calicoctl.launch's table of global options is the click group's."""
    from calicoctl.main import LOG_LEVELS, cli

    values = {o for p in cli.params if isinstance(p, click.Option) and not p.is_flag
              for o in p.opts}
    flags = {o for p in cli.params if isinstance(p, click.Option) and p.is_flag
             for o in p.opts}
    assert set(launch.VALUE_OPTIONS) == values
    assert flags == {"--debug"}
    assert launch.LOG_LEVELS == LOG_LEVELS


@pytest.mark.parametrize("argv,cmd,env", [
    (["policy", "trace", "--from", "a"], ["--from", "a"], {}),
    (["--etcd-endpoints", "http://e:1", "--debug", "policy", "trace", "--to", "b"],
     ["--to", "b", "--debug"], {"ETCD_ENDPOINTS": "http://e:1"}),
    (["--etcd-username=u", "--log-level=error", "--etcd-ca-cert-file", "ca", "policy",
      "trace", "--debug"], ["--debug"], {"ETCD_USERNAME": "u", "ETCD_CA_CERT_FILE": "ca"}),
    (["--etcd-authority", "", "policy", "trace"], [], {}),
    (["policy", "show"], None, None),
    (["--help", "policy", "trace"], None, None),
    (["--unknown", "policy", "trace"], None, None),
    (["--etcd-endpoints", "policy", "trace"], None, None),
    (["--log-level", "loud", "policy", "trace"], None, None),
    (["profile", "add", "policy", "trace"], None, None),
    (["--etcd-endpoints"], None, None),
])
def test_trace_handoff(argv, cmd, env):
    got = launch.trace_handoff(argv, {"HOME": "/root"}, "/bin/prog")
    if cmd is None:
        assert got is None
    else:
        assert got == (["/bin/prog", "--prog", "calicoctl policy trace", *cmd],
                       {"HOME": "/root", **env})
