"""The Docker driver's HTTP side and settings, without an engine: what each kind of call
is answered with (Activate per socket, refusals in one line, unknown calls as "not
implemented", bad bodies), the settings from the environment, and the records' JSON."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from calico_libnetwork import api
from calico_libnetwork.api import PluginError
from calico_libnetwork.main import settings_from
from calico_libnetwork.server import PluginApp
from calico_libnetwork.state import EndpointRecord, NetworkRecord
from calicoctl.dockerworkloads import DOCKER_NETWORK_ORCHESTRATOR
from libcalico.errors import AddressInUse, ValidationError


def call(app: PluginApp, path: str, body: bytes = b"", method: str = "POST"
         ) -> tuple[str, dict[str, str], dict[str, Any]]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    out = app({"REQUEST_METHOD": method, "PATH_INFO": f"/{path}",
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)},
              start_response)
    return seen["status"], seen["headers"], json.loads(b"".join(out))


def failing(exc: BaseException) -> Any:
    def handler(req: Any) -> dict[str, Any]:
        raise exc
    return handler


APP = PluginApp([api.NETWORK_DRIVER], {
    "NetworkDriver.Echo": lambda req: {"got": req},
    "NetworkDriver.Refuse": failing(PluginError("no such pool\nreally")),
    "NetworkDriver.Crash": failing(KeyError("boom")),
})
IPAM_APP = PluginApp([api.IPAM_DRIVER], {
    "IpamDriver.RequestAddress": failing(AddressInUse("198.19.0.5", "h")),
})


def test_activate_names_what_this_socket_implements() -> None:
    status, headers, body = call(APP, "Plugin.Activate")
    assert status.startswith("200") and body == {"Implements": ["NetworkDriver"]}
    assert headers["Content-Type"] == api.CONTENT_TYPE
    assert call(IPAM_APP, "Plugin.Activate")[2] == {"Implements": ["IpamDriver"]}


def test_calls_get_their_json_and_an_empty_body_is_an_empty_request() -> None:
    assert call(APP, "NetworkDriver.Echo", b'{"NetworkID": "n1"}')[2] == \
        {"got": {"NetworkID": "n1"}}
    assert call(APP, "NetworkDriver.Echo")[2] == {"got": {}}


def test_refusals_are_one_line_in_err_and_ipam_ones_in_error_too() -> None:
    status, _, body = call(APP, "NetworkDriver.Refuse", b"{}")
    assert status.startswith("200") and body == {"Err": "no such pool really"}
    _, _, body = call(APP, "NetworkDriver.Crash", b"{}")
    assert body["Err"].startswith("NetworkDriver.Crash failed: KeyError")
    _, _, body = call(IPAM_APP, "IpamDriver.RequestAddress", b"{}")
    assert body["Err"] == body["Error"] and "198.19.0.5 is already in use" in body["Err"]


def test_unknown_calls_bad_bodies_and_methods() -> None:
    status, _, body = call(APP, "NetworkDriver.Bogus", b"{}")
    assert status.startswith("404") and "not implemented" in body["Err"]
    # a call of the other protocol is unknown on this socket
    assert call(APP, "IpamDriver.RequestPool", b"{}")[0].startswith("404")
    assert call(APP, "NetworkDriver.Echo", b"{nope")[0].startswith("400")
    assert call(APP, "NetworkDriver.Echo", b"[1]")[0].startswith("400")
    assert call(APP, "NetworkDriver.Echo", method="GET")[0].startswith("405")


def test_settings_from_the_environment() -> None:
    s = settings_from({"HOSTNAME": "h1", "CALICO_LIBNETWORK_SOCKET": "/p/calico.sock",
                       "CALICO_LIBNETWORK_VETH_MTU": "1400"})
    assert (s.socket, s.ipam_socket, s.hostname, s.mtu) == \
        ("/p/calico.sock", "/p/calico-ipam.sock", "h1", 1400)
    assert s.docker_host == "unix:///var/run/docker.sock"
    with pytest.raises(ValidationError, match="CALICO_LIBNETWORK_SOCKET"):
        settings_from({"CALICO_LIBNETWORK_SOCKET": "calico.sock"})
    with pytest.raises(ValidationError, match="CALICO_LIBNETWORK_VETH_MTU"):
        settings_from({"CALICO_LIBNETWORK_VETH_MTU": "big"})


def test_records_round_trip_and_calicoctl_names_the_same_orchestrator() -> None:
    net = NetworkRecord("n1", "h1", ("198.19.0.0/16",), (), True, "net1", {"tier": "web"})
    assert NetworkRecord.from_json(json.loads(json.dumps(net.to_json()))) == net
    ep = EndpointRecord("e1", "n1", "/run/docker/netns/abc", True)
    assert EndpointRecord.from_json(ep.to_json()) == ep
    with pytest.raises(ValidationError):
        NetworkRecord.from_json({**net.to_json(), "labels": {"bad key!": "x"}})
    assert DOCKER_NETWORK_ORCHESTRATOR == api.ORCHESTRATOR


# --- request fields (found by tests/fuzz/test_fuzz_libnetwork.py) ------------------------------

def refusal(fn: Any, *args: Any, **kw: Any) -> str:
    with pytest.raises(PluginError) as info:
        fn(*args, **kw)
    return str(info.value)


def test_request_fields_are_typed_and_refusals_name_them() -> None:
    from calico_libnetwork import request as rq

    assert rq.docker_id({"NetworkID": "ab" * 32}, "NetworkID") == "ab" * 32
    assert refusal(rq.docker_id, {}, "NetworkID") == "the request has no NetworkID"
    # Ids become etcd keys and interface names: nothing but hexadecimal.
    for bad in ("../../x", "a/b", "é" * 64, "F" * 64, 5, ["a"]):
        msg = refusal(rq.docker_id, {"EndpointID": bad}, "EndpointID")
        assert msg.startswith("invalid EndpointID ") and "\n" not in msg, msg
    assert rq.obj({"Options": None}, "Options") == {}
    assert "invalid Options 'x" in refusal(rq.obj, {"Options": "x" * 1000}, "Options")
    assert len(refusal(rq.obj, {"Options": "x" * 100_000}, "Options")) < 120
    assert refusal(rq.items, {"IPv4Data": [1]}, "IPv4Data").startswith("invalid IPv4Data")
    assert rq.flag({}, "V6") is False and rq.flag({"V6": True}, "V6") is True
    assert "invalid V6 1" in refusal(rq.flag, {"V6": 1}, "V6")
    assert "\\n" in refusal(rq.text, {"SubPool": "a\nb"}, "SubPool")  # one line, quoted
    assert rq.mac({"MacAddress": "AA:bb:cc:dd:ee:ff"}, "MacAddress") == "aa:bb:cc:dd:ee:ff"
    assert rq.mac({"MacAddress": ""}, "MacAddress") is None
    assert "MAC address" in refusal(rq.mac, {"MacAddress": "aa:bb"}, "MacAddress")
    assert "absolute path" in refusal(rq.sandbox_key, {"SandboxKey": "netns/x"})
