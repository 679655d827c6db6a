"""Fuzzing the `calico` CNI plugin's inputs: the CNI_* environment and the network
configuration on stdin.

The plugin runs as a runtime runs it: the executable `calicoctl cni install` puts in a
bin dir, inside a simulated host's namespace (tests/support/cnidriver.py), against a
real etcd, with a real container namespace. Each example is one call (ADD, DEL, CHECK,
GC, STATUS or VERSION) whose valid environment and configuration have one variable or
field mutated (missing, of another JSON type, huge, unicode or shell syntax), or whose
stdin is arbitrary JSON or bytes.

Properties, for any call: the exit status is 0 or 1 and stdout is one JSON object; a
failure is a CNI error (`code` an integer, `msg` one line of bounded length), never a
Python traceback (stdout or stderr) and never the plugin's catch-all "internal error"; a
mutated variable or field of the wrong type is named in `msg`; a failed call writes
nothing to etcd (every key and value under /calico unchanged) and changes no interface
in the host or the container namespace. An ADD that succeeds is undone by its DEL, which
leaves no endpoint and no interface.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

from libcalico import keyspace
from libcalico.client import CalicoClient
from libcalico.datastore import Datastore
from libcalico.model import IPPool
from netsim.etcd import EtcdServer
from netsim.netns import Namespace
from netsim.topology import calicoctl_path
from tests.fuzz.strategies import JSON, LONG_TEXT, NASTY_TEXT, TEXT
from tests.support.cnidriver import Call, Driver

pytestmark = [pytest.mark.etcd, pytest.mark.root]

POOL4, POOL6 = "198.18.112.0/24", "fd00:198:112::/120"
NODE = "cni-fuzz"


@dataclass
class Plugin:
    driver: Driver
    store: Datastore
    etcd_url: str
    log: Path
    host: Namespace
    container: Namespace

    def conf(self) -> dict[str, Any]:
        return {"cniVersion": "1.1.0", "name": "fuzznet", "type": "calico",
                "etcd_endpoints": self.etcd_url, "nodename": NODE,
                "log_file_path": str(self.log), "mtu": 1400,
                "ipam": {"type": "calico-ipam", "assign_ipv4": True, "assign_ipv6": False,
                         "ipv4_pools": [POOL4]},
                "policy": {"type": "network"}, "dns": {}, "args": {"cni": {"labels": []}}}


@pytest.fixture(scope="module")
def plugin(unix_etcd: EtcdServer) -> Iterator[Plugin]:
    store = unix_etcd.client()
    store.delete_prefix(keyspace.ROOT + "/")
    client = CalicoClient(store)
    client.add_pool(IPPool(POOL4))
    client.add_pool(IPPool(POOL6))
    host, container = Namespace("cnifz-h"), Namespace("cnifz-c")
    try:
        with tempfile.TemporaryDirectory(prefix="cnifz-") as tmp:
            proc = subprocess.run([calicoctl_path(), "cni", "install", "--bin-dir", tmp],
                                  capture_output=True, text=True, check=False)
            assert proc.returncode == 0, proc.stderr
            yield Plugin(Driver(host.name, [tmp]), store, unix_etcd.client_url,
                         Path(tmp) / "cni.log", host, container)
    finally:
        container.delete()
        host.delete()
        store.delete_prefix(keyspace.ROOT + "/")
        store.close()


# --- inputs --------------------------------------------------------------------------------

COMMANDS = ("ADD", "ADD", "ADD", "DEL", "DEL", "CHECK", "GC", "STATUS", "VERSION")
ENV_VARS = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS",
            "CNI_PATH")
BAD_TEXT = (TEXT | LONG_TEXT | NASTY_TEXT
            | st.sampled_from(["../../etc", "/proc/1/ns/net", "/run/netns/nope", "eth0 x",
                               "IP=198.18.112.5;IgnoreUnknown=1", "IP=10.0.0.1",
                               "K8S_POD_NAMESPACE=a;K8S_POD_NAME=$(id);IgnoreUnknown=1",
                               "IP=;;==", "IgnoreUnknown=1;IgnoreUnknown=1", "x" * 20_000,
                               "a" * 16, "é", "$(touch /tmp/cni-pwned)"]))
BAD_VALUES = (JSON | BAD_TEXT
              | st.sampled_from([2**64, -1, 0, 1e308, True, [], {}, [[]], {"type": 1},
                                 "0.2.0", "99.0.0", "198.18.112.0/33", ["fd00::/8"],
                                 [{"key": "a", "value": 1}], "x" * 100_000]))
# Configuration fields the plugin reads: a value of another JSON type must be refused
# naming the field.
CONF_READS = {"cniVersion", "name", "type", "etcd_endpoints", "log_level", "log_file_path",
              "mtu", "nodename", "ipam", "assign_ipv4", "assign_ipv6", "ipv4_pools",
              "ipv6_pools", "policy", "dns", "args", "labels"}
ALIASES = {"cniVersion": ("CNI version", "cniVersion")}


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    return out


def _env_safe(value: str) -> bool:
    """A value a process environment can carry (no NUL, encodable)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


@dataclass
class Case:
    command: str
    env: dict[str, str]
    stdin: bytes
    named: str | None  # the variable or field a failure must name


@st.composite
def cases(draw: st.DrawFn, plugin: Plugin) -> Case:
    command = draw(st.sampled_from(COMMANDS))
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": draw(st.text("0123456789abcdef",
                                                                   min_size=12, max_size=64)),
           "CNI_NETNS": f"/run/netns/{plugin.container.name}", "CNI_IFNAME": "eth0",
           "CNI_ARGS": "IgnoreUnknown=1", "CNI_PATH": str(Path(plugin.log).parent)}
    conf = plugin.conf()
    kind = draw(st.sampled_from(["env", "env", "conf", "conf", "conf", "drop", "json",
                                 "bytes", "valid"]))
    named: str | None = None
    stdin = b""
    if kind == "env":
        name = draw(st.sampled_from(ENV_VARS))
        if draw(st.booleans()):
            del env[name]
        else:
            value = draw(BAD_TEXT)
            assume(_env_safe(value))
            env[name] = value
        if name != "CNI_PATH" and not (name == "CNI_ARGS" and env.get(name) is None):
            named = name
    elif kind in ("conf", "drop"):
        where = draw(st.sampled_from(_paths(conf)))
        parent = conf
        for step in where[:-1]:
            parent = parent[step]
        old = parent[where[-1]]
        if kind == "drop":
            del parent[where[-1]]
        else:
            new = parent[where[-1]] = draw(BAD_VALUES)
            leaf = where[-1]
            # The log goes where the configuration says: fuzz only paths it refuses.
            assume(leaf != "log_file_path" or not str(new).startswith("/"))
            if leaf in CONF_READS and new is not None and type(new) is not type(old) \
                    and not (isinstance(new, (dict, list)) and not new):
                named = ".".join(str(p) for p in where) if len(where) > 1 else leaf
    elif kind == "json":
        stdin = json.dumps(draw(JSON)).encode("utf-8", "surrogatepass")
    elif kind == "bytes":
        stdin = draw(st.binary(max_size=64) | st.just(b"[" * 50_000))
    if not stdin:
        stdin = json.dumps(conf).encode("utf-8", "surrogatepass")
    return Case(command, env, stdin, named)


# --- state ---------------------------------------------------------------------------------

def etcd_state(store: Datastore) -> dict[str, str]:
    kvs, _ = store.list(keyspace.ROOT + "/")
    return {kv.key: kv.value for kv in kvs}


def links(ns: Namespace) -> set[str]:
    out = ns.ip("-o", "link", "show").stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def call(plugin: Plugin, case: Case) -> Call:
    env = dict(case.env)
    return plugin.driver.call(env.pop("CNI_COMMAND", ""), case.stdin, plugin="calico",
                              container=env.get("CNI_CONTAINERID", ""),
                              netns=env.get("CNI_NETNS", ""), ifname=env.get("CNI_IFNAME", ""),
                              args=env.get("CNI_ARGS", ""),
                              env={k: v for k, v in case.env.items()},
                              drop=[v for v in ENV_VARS if v not in case.env])


@given(st.data())
def test_every_call_answers_in_the_protocol_and_a_failure_changes_nothing(
        plugin: Plugin, data: st.DataObject) -> None:
    case = data.draw(cases(plugin))
    before = etcd_state(plugin.store)
    host_before, container_before = links(plugin.host), links(plugin.container)
    res = call(plugin, case)
    assert "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
    assert res.rc in (0, 1), (res.rc, res.stdout, res.stderr)
    if res.rc == 0:
        event(f"{case.command}: exit 0")
        assert res.out is None or isinstance(res.out, dict), res.stdout[:300]
        if case.env.get("CNI_COMMAND") == "ADD":
            undo = Case("DEL", {**case.env, "CNI_COMMAND": "DEL"}, case.stdin, None)
            gone = call(plugin, undo)
            assert gone.rc == 0, gone.stdout
            assert links(plugin.host) == host_before, "DEL left an interface in the host"
            assert links(plugin.container) == container_before
            assert not [k for k in etcd_state(plugin.store) if "/workload/" in k]
        return
    out = res.out
    assert isinstance(out, dict), res.stdout[:300]
    code, msg = out.get("code"), out.get("msg")
    event(f"{case.command}: code {code}")
    assert isinstance(code, int) and not isinstance(code, bool), out
    assert isinstance(msg, str) and msg and "\n" not in msg, out
    assert len(msg) <= 600, f"{len(msg)} characters: {msg[:300]}"
    assert "internal error" not in msg, out
    # A mutated variable must be named when it is what the plugin refused (code 4; a
    # value that is valid fails later, e.g. CHECK of a container that has no endpoint).
    env_mutation = case.named is not None and case.named.startswith("CNI_")
    # With only a variable changed, the configuration is valid: never code 7.
    assert not (env_mutation and code == 7), f"{case.named} reported as configuration: {out}"
    if case.named is not None and (code == 4 or not env_mutation):
        leaf = case.named.rsplit(".", 1)[-1]
        names = ALIASES.get(leaf, (leaf,))
        assert any(n in msg for n in names), f"{case.named} not named in {msg!r}"
    assert etcd_state(plugin.store) == before, f"a failed {case.command} wrote to etcd: {out}"
    assert links(plugin.host) == host_before, f"a failed {case.command} left an interface"
    assert links(plugin.container) == container_before
