"""Fuzzing the Docker driver's plugin calls (`calico_libnetwork`) over its real sockets.

The driver runs as it does on a host: both plugin applications on waitress, each on its
unix socket (`calico_libnetwork.server.serve`), against a real etcd, the host ends of
veths in a namespace of the test's own. Every call of both protocols is sent over HTTP,
with a valid body that has one field mutated (missing, of another JSON type, huge,
unicode or shell syntax, nested wrongly), a body of arbitrary JSON, or bytes that are not
JSON at all.

Properties, for any request: the plugin answers (HTTP 200, 400 or 404) with a JSON object
in the plugin content type; a refusal is `{"Err": "<one line>"}` and is never the
catch-all of an unexpected exception (nothing logged with a traceback); a refusal of a
mutated field names that field (by its Docker name or the `docker` flag it comes from);
a refused call writes nothing to etcd (every key and value under /calico and the
revision unchanged) and leaves no interface behind; after every call both sockets still
answer `Plugin.Activate`. What a call accepts is undone with its inverse call
(DeleteEndpoint, DeleteNetwork, ReleaseAddress), so the state stays bounded.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from calico_libnetwork import api
from calico_libnetwork.ipam import IpamDriver
from calico_libnetwork.network import NetworkDriver
from calico_libnetwork.server import PluginApp, serve
from calico_libnetwork.state import DriverState, NetworkRecord
from libcalico import keyspace
from libcalico.client import CalicoClient
from libcalico.datastore import Datastore
from libcalico.ipam import IPAMClient
from netsim.etcd import EtcdServer
from netsim.netns import Namespace
from tests.fuzz.strategies import JSON, LONG_TEXT, NASTY_TEXT, TEXT, field_paths

pytestmark = [pytest.mark.etcd, pytest.mark.root]

HOST = "fuzzhost"
POOL4 = "198.19.0.0/24"
POOL6 = "fd00:198:19::/120"
NETWORK = "f" * 64  # a network stored with its name, as after a real CreateNetwork
ENDPOINT = "e" * 64
ADDRESS = "198.19.0.200"


class NoEngine:
    """The engine lookup: no engine here (the seeded network has its name already)."""

    def network(self, network_id: str) -> None:
        return None

    def wait_for(self, network_id: str, timeout: float, interval: float = 0.05) -> None:
        return None


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)


def post(sock: str, path: str, body: bytes) -> tuple[int, str, bytes]:
    conn = UnixHTTPConnection(sock)
    try:
        conn.request("POST", "/" + urllib.parse.quote(path), body=body,
                     headers={"Content-Type": api.CONTENT_TYPE})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


class Tracebacks(logging.Handler):
    """Records every log record that carries an exception (the catch-all's traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.seen.append(f"{record.name}: {record.getMessage()}")


@dataclass
class Plugin:
    sockets: dict[str, str]  # protocol -> socket path
    store: Datastore
    ns: Namespace
    tracebacks: Tracebacks

    def call(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        protocol = path.split(".")[0]
        return post(self.sockets.get(protocol, self.sockets[api.NETWORK_DRIVER]), path, body)


@pytest.fixture(scope="module")
def plugin(etcd_server: EtcdServer) -> Iterator[Plugin]:
    store = etcd_server.client()
    store.delete_prefix(keyspace.ROOT + "/")
    client = CalicoClient(store)
    ipam = IPAMClient(store)
    from libcalico.model import IPPool

    client.add_pool(IPPool.from_json({"cidr": POOL4}))
    client.add_pool(IPPool.from_json({"cidr": POOL6}))
    state = DriverState(store, client)
    state.create_network(NetworkRecord(NETWORK, HOST, (), (), True))
    state.name_network(NETWORK, "fuzznet", {"tier": "fuzz"})
    state.ensure_profile("fuzznet")
    ns = Namespace("lnfz")
    tmp = tempfile.mkdtemp(prefix="lnfz-")
    sockets = {api.NETWORK_DRIVER: os.path.join(tmp, "calico.sock"),
               api.IPAM_DRIVER: os.path.join(tmp, "calico-ipam.sock")}
    network = NetworkDriver(state, ipam, NoEngine(), HOST,  # type: ignore[arg-type]
                            host_netns=ns.name, name_wait=0.0)
    apps = {sockets[api.NETWORK_DRIVER]: PluginApp([api.NETWORK_DRIVER], network.calls()),
            sockets[api.IPAM_DRIVER]: PluginApp([api.IPAM_DRIVER],
                                                IpamDriver(client, ipam, HOST).calls())}
    tracebacks = Tracebacks()
    logging.getLogger("calico_libnetwork").addHandler(tracebacks)
    stop, ready = threading.Event(), threading.Event()
    server = threading.Thread(target=serve, args=(apps, stop, ready.set), daemon=True)
    server.start()
    try:
        assert ready.wait(30), "the plugin sockets did not come up"
        yield Plugin(sockets, store, ns, tracebacks)
    finally:
        stop.set()
        server.join(30)
        logging.getLogger("calico_libnetwork").removeHandler(tracebacks)
        ns.delete()
        for path in sockets.values():
            if os.path.exists(path):
                os.unlink(path)
        os.rmdir(tmp)
        store.delete_prefix(keyspace.ROOT + "/")
        store.close()


# --- requests ------------------------------------------------------------------------------

HEX_ID = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)

# A valid body for every call of both protocols (what Docker sends), built per example
# so ids are fresh.
def _templates(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    net_id, ep_id = draw(HEX_ID), draw(HEX_ID)
    v4 = [{"AddressSpace": api.GLOBAL_ADDRESS_SPACE, "Pool": "0.0.0.0/0",
           "Gateway": "0.0.0.0/0", "AuxAddresses": None}]
    ids = {"NetworkID": NETWORK, "EndpointID": ep_id}
    return {
        "NetworkDriver.GetCapabilities": {},
        "NetworkDriver.CreateNetwork": {
            "NetworkID": net_id, "IPv4Data": v4, "IPv6Data": [],
            "Options": {api.ENABLE_IPV6: False, api.GENERIC_OPTIONS: {}}},
        "NetworkDriver.DeleteNetwork": {"NetworkID": net_id},
        "NetworkDriver.CreateEndpoint": {
            **ids, "Interface": {"Address": "198.19.0.7/32", "AddressIPv6": "",
                                 "MacAddress": ""}, "Options": {}},
        "NetworkDriver.EndpointOperInfo": dict(ids),
        "NetworkDriver.DeleteEndpoint": dict(ids),
        "NetworkDriver.Join": {**ids, "SandboxKey": f"/var/run/docker/netns/{ep_id[:12]}",
                               "Options": {}},
        "NetworkDriver.Leave": dict(ids),
        "NetworkDriver.DiscoverNew": {"DiscoveryType": 1, "DiscoveryData": {}},
        "NetworkDriver.DiscoverDelete": {"DiscoveryType": 1, "DiscoveryData": {}},
        "NetworkDriver.ProgramExternalConnectivity": {**ids, "Options": {}},
        "NetworkDriver.RevokeExternalConnectivity": dict(ids),
        "NetworkDriver.AllocateNetwork": {"NetworkID": net_id, "IPv4Data": v4,
                                          "IPv6Data": [], "Options": {}},
        "NetworkDriver.FreeNetwork": {"NetworkID": net_id},
        "IpamDriver.GetCapabilities": {},
        "IpamDriver.GetDefaultAddressSpaces": {},
        "IpamDriver.RequestPool": {"AddressSpace": api.GLOBAL_ADDRESS_SPACE, "Pool": "",
                                   "SubPool": "", "Options": {}, "V6": False},
        "IpamDriver.ReleasePool": {"PoolID": api.ANY_POOL[4]},
        "IpamDriver.RequestAddress": {"PoolID": api.ANY_POOL[4], "Address": "",
                                      "Options": {}},
        "IpamDriver.ReleaseAddress": {"PoolID": api.ANY_POOL[4], "Address": ADDRESS},
    }


CALLS = sorted(_templates(lambda s: "0" * 64).keys())  # type: ignore[arg-type, return-value]
# The fields each call reads: a value of another JSON type (or a required one missing)
# must be refused by naming the field.
READS = {
    "NetworkDriver.CreateNetwork": {"NetworkID", "Options", "IPv4Data", "IPv6Data", "Pool",
                                    api.GENERIC_OPTIONS, api.ENABLE_IPV6},
    "NetworkDriver.DeleteNetwork": {"NetworkID"},
    "NetworkDriver.CreateEndpoint": {"NetworkID", "EndpointID", "Interface", "Address",
                                     "AddressIPv6", "MacAddress"},
    "NetworkDriver.EndpointOperInfo": {"EndpointID"},
    "NetworkDriver.DeleteEndpoint": {"EndpointID"},
    "NetworkDriver.Join": {"NetworkID", "EndpointID", "SandboxKey"},
    "NetworkDriver.Leave": {"EndpointID"},
    "IpamDriver.RequestPool": {"Pool", "SubPool", "Options", "V6"},
    "IpamDriver.RequestAddress": {"PoolID", "Address", "Options"},
    "IpamDriver.ReleaseAddress": {"Address"},
}
REQUIRED = {"NetworkID", "EndpointID", "SandboxKey", "PoolID"} | {"Address"}
# What a refusal of each field must name: the field, or the `docker` flag it comes from.
ALIASES = {"Pool": ("--subnet", "Pool"), "SubPool": ("--ip-range", "SubPool"),
           "Address": ("Address", "--ip", "address"), "AddressSpace": ("--ipam-driver",),
           "Gateway": ("Gateway", "--gateway"), "V6": ("V6", "--ipv6"),
           api.ENABLE_IPV6: ("--ipv6", api.ENABLE_IPV6),
           api.GENERIC_OPTIONS: ("option", api.GENERIC_OPTIONS),
           api.REQUEST_ADDRESS_TYPE: ("--gateway", api.REQUEST_ADDRESS_TYPE)}
BAD_VALUES = (JSON | TEXT | LONG_TEXT | NASTY_TEXT
              | st.sampled_from(["../../x", "a/b", "0.0.0.0/0", "::/0", "198.19.0.0/24",
                                 "198.19.0.300/32", "fd00::zz", "x" * 100_000,
                                 "f" * 65, "F" * 64, api.ANY_POOL[6], "é" * 64,
                                 "198.19.0.7/32\n", {"a": []}, [[]], 2**64, -1, 1e308]))



@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, str | None]:
    """(call, body, the field whose refusal must be named or None)."""
    templates = _templates(draw)
    path = draw(st.sampled_from(CALLS + ["NetworkDriver.Nope", "Plugin.X", "IpamDriver.é",
                                         ""]))
    body = templates.get(path, {})
    kind = draw(st.sampled_from(["mutate", "mutate", "mutate", "drop", "extra", "json",
                                 "bytes", "valid"]))
    if kind == "json":
        return path, json.dumps(draw(JSON)).encode("utf-8", "surrogatepass"), None
    if kind == "bytes":
        raw = draw(st.binary(max_size=64) | st.just(b"{" * 100_000)
                   | st.just(b'{"NetworkID": "' + b"a" * 2_000_000 + b'"}'))
        return path, raw, None
    paths = field_paths(body)
    if kind == "valid" or not paths:
        return path, json.dumps(body).encode(), None
    if kind == "extra":
        body[draw(TEXT)] = draw(BAD_VALUES)
        return path, json.dumps(body).encode("utf-8", "surrogatepass"), None
    where = draw(st.sampled_from(paths))
    parent = body
    for step in where[:-1]:
        parent = parent[step]
    old = parent[where[-1]]
    if kind == "drop":
        del parent[where[-1]]
        new: Any = None
    else:
        new = parent[where[-1]] = draw(BAD_VALUES)
    named = next((p for p in reversed(where) if isinstance(p, str)), None)
    # Strict: a field the call reads, dropped when required or given another JSON type
    # (a list item counts as its list's field).
    strict = named in READS.get(path, ()) and (
        (kind == "drop" and named in REQUIRED and isinstance(where[-1], str)
         and not (path == "IpamDriver.RequestAddress" and named == "Address"))
        or (new is not None and not isinstance(where[-1], int)
            and type(new) is not type(old) and not (old == "" and new == "")))
    return path, json.dumps(body).encode("utf-8", "surrogatepass"), \
        named if strict else None


# --- state ---------------------------------------------------------------------------------

def etcd_state(store: Datastore) -> tuple[dict[str, str], int]:
    kvs, _ = store.list(keyspace.ROOT + "/")
    return {kv.key: kv.value for kv in kvs}, store.revision()


def links(ns: Namespace) -> set[str]:
    out = ns.ip("-o", "link", "show").stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def undo(plugin: Plugin, path: str, request: Mapping[str, Any], answer: Mapping[str, Any]
         ) -> None:
    """The inverse call of an accepted one that made something."""
    inverse = {"NetworkDriver.CreateEndpoint": "NetworkDriver.DeleteEndpoint",
               "NetworkDriver.CreateNetwork": "NetworkDriver.DeleteNetwork",
               "NetworkDriver.Join": "NetworkDriver.Leave"}
    if path in inverse:
        status, _, raw = plugin.call(inverse[path], json.dumps(request).encode())
        assert status == 200 and "Err" not in json.loads(raw), (path, raw)
    elif path == "IpamDriver.RequestAddress" and answer.get("Address"):
        body = {"PoolID": request.get("PoolID"), "Address": answer["Address"]}
        status, _, raw = plugin.call("IpamDriver.ReleaseAddress", json.dumps(body).encode())
        assert status == 200 and "Err" not in json.loads(raw), raw


@given(requests())
def test_every_call_answers_in_the_protocol_and_a_refusal_changes_nothing(
        plugin: Plugin, case: tuple[str, bytes, str | None]) -> None:
    path, body, named = case
    plugin.tracebacks.seen.clear()
    before, before_links = etcd_state(plugin.store), links(plugin.ns)
    status, ctype, raw = plugin.call(path, body)
    assert status in (200, 400, 404), (status, raw[:300])
    assert ctype == api.CONTENT_TYPE, ctype
    answer = json.loads(raw)
    assert isinstance(answer, dict), raw[:300]
    assert not plugin.tracebacks.seen, f"{path}: an unexpected exception: " \
        f"{plugin.tracebacks.seen} for {body[:300]!r}"
    err = answer.get("Err")
    event(f"{'refused' if err else 'accepted'} (HTTP {status})")
    if err is not None:
        assert isinstance(err, str) and err and "\n" not in err and "\r" not in err, err
        assert len(err) <= 600, f"{len(err)} characters: {err[:300]}"
        assert "Traceback" not in err and "Error:" not in err, err
        if named is not None and status == 200:
            names = ALIASES.get(named, (named,))
            assert any(n in err for n in names), f"{path}: {named} not named in {err!r}"
        assert etcd_state(plugin.store) == before, f"{path} refused but wrote to etcd"
        assert links(plugin.ns) == before_links, f"{path} refused but left an interface"
    else:
        assert status == 200
        request = json.loads(body) if body.strip() else {}
        undo(plugin, path, request, answer)
    for sock in plugin.sockets.values():
        alive = post(sock, "Plugin.Activate", b"")
        assert alive[0] == 200, alive


def test_a_valid_endpoint_goes_through_and_is_undone(plugin: Plugin) -> None:
    """The fuzz's baseline: the templates are what Docker sends, and they work."""
    before, before_links = etcd_state(plugin.store)[0], links(plugin.ns)
    ep = {"NetworkID": NETWORK, "EndpointID": ENDPOINT}
    ask = {"PoolID": api.ANY_POOL[4], "Address": "", "Options": {}}
    status, _, raw = plugin.call("IpamDriver.RequestAddress", json.dumps(ask).encode())
    address = json.loads(raw)["Address"]
    create = {**ep, "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": ""}}
    answer = json.loads(plugin.call("NetworkDriver.CreateEndpoint",
                                    json.dumps(create).encode())[2])
    assert "MacAddress" in answer["Interface"], answer
    assert len(links(plugin.ns)) == len(before_links) + 2
    join = json.loads(plugin.call("NetworkDriver.Join", json.dumps(
        {**ep, "SandboxKey": "/var/run/docker/netns/x", "Options": {}}).encode())[2])
    assert join["Gateway"] == "169.254.1.1", join
    for call in ("NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint"):
        assert json.loads(plugin.call(call, json.dumps(ep).encode())[2]) == {}
    release = {"PoolID": api.ANY_POOL[4], "Address": address}
    assert json.loads(plugin.call("IpamDriver.ReleaseAddress",
                                  json.dumps(release).encode())[2]) == {}
    assert links(plugin.ns) == before_links
    after = etcd_state(plugin.store)[0]
    # What stays: the host's IPAM block affinity (kept for the next address).
    assert {k for k in after if "/ipam/" not in k} == {k for k in before if "/ipam/" not in k}
