"""Fuzzing the `calico` CNI plugin's inputs: the CNI_* environment and the network
configuration on stdin.

The plugin runs as a runtime runs it, inside a simulated host's namespace, against a
real etcd, with a real container namespace, in two ways:
- the executable `calicoctl cni install` puts in a bin dir, one process per case
  (tests/support/cnidriver.py): the only way to see what the installed program prints
  (interpreter start-up, console script, real stdout and stderr). At ~0.3-0.9 s a case
  it runs EXEC_EXAMPLES (60) cases in every profile, and each case is made again
  through the worker below, which must answer it the same way;
- `cni.main.run` (the function the console script calls) in one long-lived worker
  process in the same host namespace (tests/support/cniworker.py: a fresh process's
  environment, logging and caches before every call, cases and answers as JSON over a
  pipe; ~3-100 ms a case): the breadth, 200 cases in the quick profile and 10,000 in
  the full one.
Each case is one call (ADD, DEL, CHECK, GC, STATUS or VERSION) whose valid environment
and configuration have one variable or field mutated (missing, of another JSON type,
huge, unicode or shell syntax), or whose stdin is arbitrary JSON or bytes.

Properties, for any call: the exit status is 0 or 1 and stdout is one JSON object; a
failure is a CNI error (`code` an integer, `msg` one line of bounded length), never a
Python traceback (stdout or stderr) and never the plugin's catch-all "internal error"; a
mutated variable or field of the wrong type is named in `msg`; a failed call writes
nothing to etcd (every key and value under /calico unchanged) and changes no interface
in the host or the container namespace. An ADD that succeeds is undone by its DEL, which
leaves no endpoint and no interface. Through the worker also: no exception escapes
`run`, and no call leaves a file descriptor or a thread behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import assume, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from libcalico import keyspace
from libcalico.client import CalicoClient
from libcalico.datastore import Datastore
from libcalico.model import IPPool
from netsim.etcd import EtcdServer
from netsim.netns import Namespace
from netsim.topology import calicoctl_path
from rtnl.sock import NetlinkSocket
from tests.fuzz.strategies import JSON, LONG_TEXT, NASTY_TEXT, TEXT, field_paths
from tests.support.cnidriver import Call, Driver
from tests.support.cniworker import Answer, Worker

pytestmark = [pytest.mark.etcd, pytest.mark.root]

R = TypeVar("R", Call, Answer)
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



def _valid_other_form(leaf: Any, value: Any) -> bool:
    """A value of another JSON type that is valid all the same: Calico's string form of
    the IPAM booleans ("true"/"false", any case; cni.config._bool)."""
    return leaf in ("assign_ipv4", "assign_ipv6") and isinstance(value, str) \
        and value.lower() in ("true", "false")


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
        where = draw(st.sampled_from(field_paths(conf, lists=False)))
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
                    and not (isinstance(new, (dict, list)) and not new) \
                    and not _valid_other_form(leaf, new):
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
    with NetlinkSocket(ns.name) as sock:
        return {link.name for link in sock.dump_links(detail=False)}


def full_env(case: Case) -> dict[str, str]:
    """The environment the plugin gets: what `Driver.call` gives the executable."""
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **case.env}


def exec_call(plugin: Plugin, case: Case) -> Call:
    env = dict(case.env)
    return plugin.driver.call(env.pop("CNI_COMMAND", ""), case.stdin, plugin="calico",
                              container=env.get("CNI_CONTAINERID", ""),
                              netns=env.get("CNI_NETNS", ""), ifname=env.get("CNI_IFNAME", ""),
                              args=env.get("CNI_ARGS", ""),
                              env={k: v for k, v in case.env.items()},
                              drop=[v for v in ENV_VARS if v not in case.env])


def _event(text: str) -> None:
    if currently_in_test_context():  # check_call also serves a plain test
        event(text)


def check_call(plugin: Plugin, case: Case, call: Callable[[Case], R]) -> R:
    """The properties of one call, whichever way it is made; its answer."""
    before = etcd_state(plugin.store)
    host_before, container_before = links(plugin.host), links(plugin.container)
    res = call(case)
    assert "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
    assert res.rc in (0, 1), (res.rc, res.stdout, res.stderr)
    assert not res.stdout.strip() or isinstance(res.out, dict), res.stdout[:300]
    if res.rc == 0:
        _event(f"{case.command}: exit 0")
        if case.env.get("CNI_COMMAND") == "ADD":
            undo = Case("DEL", {**case.env, "CNI_COMMAND": "DEL"}, case.stdin, None)
            gone = call(undo)
            assert gone.rc == 0, gone.stdout
            assert links(plugin.host) == host_before, "DEL left an interface in the host"
            assert links(plugin.container) == container_before
            assert not [k for k in etcd_state(plugin.store) if "/workload/" in k]
        return res
    out = res.out
    assert isinstance(out, dict), res.stdout[:300]
    code, msg = out.get("code"), out.get("msg")
    _event(f"{case.command}: code {code}")
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
    return res


@pytest.fixture(scope="module")
def worker(plugin: Plugin) -> Iterator[Worker]:
    with tempfile.TemporaryFile(prefix="cnifz-worker-") as log:
        w = Worker(plugin.host.name, log)
        try:
            yield w
        finally:
            w.close()


def worker_call(worker: Worker, case: Case) -> Answer:
    """`case` through the worker: no exception may escape `run`, and the process keeps
    the descriptors and threads it had after its first call."""
    answer = worker.call(full_env(case), case.stdin)
    assert answer.escaped is None, answer.escaped
    if worker.baseline is None:
        worker.baseline = (answer.fds, answer.threads)
    assert (answer.fds, answer.threads) == worker.baseline, \
        f"descriptors and threads after the call {answer.fds, answer.threads}, after the " \
        f"first call {worker.baseline}"
    return answer


def error_of(res: Call | Answer) -> Any:
    return (res.out.get("code"), res.out.get("msg")) if res.rc == 1 else None


# The executable itself, one process per case (~0.3-0.9 s each): what alone shows that
# the installed program (its console script, interpreter start-up, real stdout and
# stderr) never prints a traceback. The breadth comes from the worker property below, so
# this runs EXEC_EXAMPLES cases in every profile (fewer if CALICO_FUZZ_EXAMPLES asks).
# Each case is then made again through the worker, which must answer it the same way
# (exit status, and a failure's code and msg): the worker's answers stand for the
# executable's.
EXEC_EXAMPLES = 60


@settings(max_examples=min(EXEC_EXAMPLES, settings().max_examples))
@given(st.data())
def test_every_call_answers_in_the_protocol_and_a_failure_changes_nothing(
        plugin: Plugin, worker: Worker, data: st.DataObject) -> None:
    case = data.draw(cases(plugin))
    res = check_call(plugin, case, lambda c: exec_call(plugin, c))
    twin = check_call(plugin, case, lambda c: worker_call(worker, c))
    assert (twin.rc, error_of(twin)) == (res.rc, error_of(res)), (res.stdout, twin.stdout)


@given(st.data())
def test_the_plugin_code_path_in_one_process_answers_every_call_in_the_protocol(
        plugin: Plugin, worker: Worker, data: st.DataObject) -> None:
    """The same calls through `cni.main.run` (what the executable's console script
    calls) in one long-lived process inside the host namespace (tests/support/
    cniworker.py, which gives every call a fresh process's environment, logging and
    caches): the same properties, plus no exception escapes `run` and no call leaves a
    file descriptor or thread behind. 200 cases in the quick profile, 10,000 in the
    full one."""
    check_call(plugin, data.draw(cases(plugin)), lambda c: worker_call(worker, c))


def _log_lines(stderr: str) -> list[str]:
    """Log records without their time and process id."""
    return [line.split("] ", 1)[-1] for line in stderr.splitlines()]


def test_the_worker_answers_a_sequence_of_calls_as_the_executable_does(
        plugin: Plugin, worker: Worker) -> None:
    """Calls whose answers a long-lived process could get wrong, in an order that would
    show it: a log file that cannot be opened (the records go to stderr), then calls
    that log to the file again (stderr must stay empty), a successful ADD and its DEL,
    a configuration that is not JSON. Each through the executable and the worker: the
    same exit status, error and stderr records."""
    good = plugin.conf()
    unwritable = {**good, "log_file_path": "/proc/nonexistent/cni.log"}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee0123456789",
           "CNI_NETNS": f"/run/netns/{plugin.container.name}", "CNI_IFNAME": "eth0",
           "CNI_ARGS": "IgnoreUnknown=1", "CNI_PATH": str(plugin.log.parent)}
    sequence = [
        Case("ADD", {**env, "CNI_IFNAME": "bad name"}, json.dumps(unwritable).encode(),
             "CNI_IFNAME"),
        Case("STATUS", {**env, "CNI_COMMAND": "STATUS"}, json.dumps(good).encode(), None),
        Case("ADD", env, json.dumps(good).encode(), None),
        Case("CHECK", {**env, "CNI_COMMAND": "CHECK"}, json.dumps(unwritable).encode(), None),
        Case("ADD", env, b"{not json", None),
        Case("VERSION", {**env, "CNI_COMMAND": "VERSION"}, json.dumps(good).encode(), None),
    ]
    for case in sequence:
        res = check_call(plugin, case, lambda c: exec_call(plugin, c))
        twin = check_call(plugin, case, lambda c: worker_call(worker, c))
        assert (twin.rc, error_of(twin)) == (res.rc, error_of(res)), (res.stdout, twin.stdout)
        assert _log_lines(twin.stderr) == _log_lines(res.stderr), (res.stderr, twin.stderr)
        if case.stdin == json.dumps(unwritable).encode():
            assert f"{case.command} failed" in twin.stderr, twin.stderr
        else:
            assert twin.stderr == "", twin.stderr
