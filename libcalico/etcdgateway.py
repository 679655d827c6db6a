"""etcd's v3 JSON gateway (HTTP/1.1, standard library only) as a transport for
`libcalico.datastore`, for short-lived programs that cannot pay for grpc.

Owns: the HTTP conversation with etcd's gRPC gateway (`POST /v3/kv/range` and friends,
JSON bodies with base64 bytes and int64 as strings) over TCP, TLS (the same CA and
client certificate files) or etcd's unix socket, one kept-alive `http.client`
connection per endpoint, logging in first when etcd has authentication on (the token
goes with every call as the `Authorization` header); and a stand-in for the parts of
etcd3's generated gRPC modules that the datastore uses (`GATEWAY_RPC.RangeRequest(...)`,
`client.kvstub.Range(rq, timeout, metadata=...)`, the lease and maintenance stubs,
`client.metadata`), so the datastore's logic - paging, transactions, compare-and-swap,
fail-over, re-authentication - is the same code whichever transport carries it.

Why: a CNI plugin is one process per call. `import etcd3` (grpc and protobuf) costs
~0.2 s of start-up on this hardware, more than the whole rest of an ADD; this module
costs a few milliseconds. Daemons keep grpc (watches need its streams; the gateway's
streaming watch is not implemented here: `watch` needs the grpc transport).

Errors: every failure is a `GatewayError` carrying the gRPC status code etcd reports
(14 UNAVAILABLE for a connection that fails or is closed, 4 DEADLINE_EXCEEDED for a
timeout), which `libcalico.datastore.translate_error` maps onto `libcalico.errors` like
a grpc error.

Leaves to others: what to read and write and the error hierarchy (`libcalico.datastore`).
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
from collections.abc import Iterable, Iterator
from typing import Any

# etcd3's call metadata: (("token", TOKEN),) once logged in, else None.
Metadata = Iterable[tuple[str, str]] | None

# gRPC status codes (grpc/status.h) that the datastore distinguishes.
CANCELLED, DEADLINE_EXCEEDED, OUT_OF_RANGE, UNAVAILABLE = 1, 4, 11, 14


class GatewayError(Exception):
    """A gateway call failed; `code` is the gRPC status code (14: etcd unreachable)."""

    def __init__(self, code: int, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"etcd gateway: {details} (code {code})")


class Msg:
    """A request or response value: named fields, like a protobuf message.

    Requests keep the fields they were given (`to_json` encodes them the way the gateway
    expects); responses are built by the decoders below with every field the datastore
    reads present, defaults included (0, False, b"", [])."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def __repr__(self) -> str:
        return f"Msg({self.__dict__!r})"


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Msg):
        return {k: _encode(v) for k, v in value.__dict__.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _message(**defaults: Any) -> Any:
    def build(**fields: Any) -> Msg:
        return Msg(**{**defaults, **fields})

    return build


class _Compare:
    """`rpc.Compare(...)` plus the enum values the datastore names (the gateway takes
    enum values by name)."""

    EQUAL = "EQUAL"
    MOD = "MOD"
    VALUE = "VALUE"

    def __new__(cls, **fields: Any) -> Msg:  # type: ignore[misc]
        return Msg(**fields)


class _Rpc:
    """The request constructors of etcd3's `etcdrpc` module that the datastore uses."""

    RangeRequest = staticmethod(_message())
    PutRequest = staticmethod(_message())
    DeleteRangeRequest = staticmethod(_message())
    TxnRequest = staticmethod(_message())
    RequestOp = staticmethod(_message())
    Compare = _Compare
    LeaseGrantRequest = staticmethod(_message())
    LeaseKeepAliveRequest = staticmethod(_message())
    LeaseRevokeRequest = staticmethod(_message())
    CompactionRequest = staticmethod(_message())
    StatusRequest = staticmethod(_message())


GATEWAY_RPC = _Rpc()


# --- decoding responses -----------------------------------------------------------------------


def _int(data: dict[str, Any], name: str) -> int:
    return int(data.get(name) or 0)


def _bytes(data: dict[str, Any], name: str) -> bytes:
    raw = data.get(name)
    return base64.b64decode(raw) if raw else b""


def _header(data: dict[str, Any]) -> Msg:
    return Msg(revision=_int(data.get("header") or {}, "revision"))


def _kv(data: dict[str, Any]) -> Msg:
    return Msg(key=_bytes(data, "key"), value=_bytes(data, "value"),
               mod_revision=_int(data, "mod_revision"),
               create_revision=_int(data, "create_revision"), lease=_int(data, "lease"),
               version=_int(data, "version"))


def _range(data: dict[str, Any]) -> Msg:
    return Msg(header=_header(data), kvs=[_kv(kv) for kv in data.get("kvs") or []],
               more=bool(data.get("more")), count=_int(data, "count"))


def _txn(data: dict[str, Any]) -> Msg:
    responses = []
    for r in data.get("responses") or []:
        responses.append(Msg(response_range=_range(r.get("response_range") or {}),
                             response_put=Msg(header=_header(r.get("response_put") or {})),
                             response_delete_range=Msg(deleted=_int(
                                 r.get("response_delete_range") or {}, "deleted"))))
    return Msg(header=_header(data), succeeded=bool(data.get("succeeded")),
               responses=responses)


# --- the connection -----------------------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    """`http.client`'s connection over etcd's unix socket (`unix://`, and `unixs://` with
    TLS, the server checked as "localhost" as gRPC does for a unix socket)."""

    def __init__(self, path: str, timeout: float, context: Any = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path
        self.context = context

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname="localhost")
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _tls_context(tls: tuple[str | None, str | None, str | None]) -> Any:
    import ssl

    ca, cert, key = tls
    context = ssl.create_default_context(cafile=ca)
    if cert:
        context.load_cert_chain(cert, key)
    return context


def _connection(scheme: str, host: str, port: int, timeout: float,
                tls: tuple[str | None, str | None, str | None]
                ) -> http.client.HTTPConnection:
    """One kept-alive HTTP/1.1 connection (`http.client`): TCP, TLS or a unix socket."""
    if scheme in ("unix", "unixs"):
        return _UnixHTTPConnection(host, timeout,
                                   _tls_context(tls) if scheme == "unixs" else None)
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout,
                                           context=_tls_context(tls))
    return http.client.HTTPConnection(host, port, timeout=timeout)


class GatewayClient:
    """One endpoint's gateway: `kvstub`, `leasestub`, `maintenancestub`, `metadata` and
    `close()` as the datastore uses them on etcd3's client. Not thread-safe (one request
    at a time). With a user and password it logs in first (`/v3/auth/authenticate`) and
    sends the token with every call, as etcd3 does over gRPC; `metadata` holds it in
    etcd3's form so the datastore passes it back per call."""

    def __init__(self, scheme: str, host: str, port: int, timeout: float,
                 ca_cert: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, user: str | None = None,
                 password: str | None = None) -> None:
        self.scheme, self.host, self.port, self.timeout = scheme, host, port, timeout
        self._conn = _connection(scheme, host, port, timeout, (ca_cert, cert_file, key_file))
        self.kvstub = _KVStub(self)
        self.leasestub = _LeaseStub(self)
        self.maintenancestub = _MaintenanceStub(self)
        self.metadata: tuple[tuple[str, str], ...] | None = None
        if user:
            token = self.call("/v3/auth/authenticate", {"name": user, "password": password})
            self.metadata = (("token", str(token.get("token", ""))),)

    def call(self, path: str, request: Msg | dict[str, Any], timeout: float | None = None,
             metadata: Metadata = None) -> dict[str, Any]:
        """POST one request; the decoded JSON answer. A kept-alive connection that the
        server closed meanwhile is re-opened once."""
        body = json.dumps(_encode(request) if isinstance(request, Msg) else request).encode()
        headers = {"Content-Type": "application/json"}
        token = dict(metadata or ()).get("token")
        if token:
            headers["Authorization"] = token
        for attempt in (1, 2):
            reused = self._conn.sock is not None
            self._conn.timeout = timeout or self.timeout
            try:
                self._conn.request("POST", path, body, headers)
                response = self._conn.getresponse()
                status, raw = response.status, response.read()
            except TimeoutError:
                self.close()
                raise GatewayError(DEADLINE_EXCEEDED, f"{self._where()}: timed out") from None
            except (ConnectionResetError, BrokenPipeError,
                    http.client.RemoteDisconnected) as exc:
                self.close()
                if attempt == 1 and reused:
                    continue
                raise GatewayError(UNAVAILABLE, f"{self._where()}: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise GatewayError(UNAVAILABLE, f"{self._where()}: {exc}") from None
            try:
                data = json.loads(raw) if raw else {}
            except ValueError:
                data = {"error": raw[:200].decode(errors="replace")}
            if not isinstance(data, dict):
                data = {}
            if status != 200:
                code = data.get("code")
                message = data.get("message") or data.get("error") or f"HTTP {status}"
                raise GatewayError(int(code) if isinstance(code, int) else UNAVAILABLE,
                                   str(message))
            return data
        raise AssertionError("unreachable")

    def _where(self) -> str:
        return self.host if self.scheme.startswith("unix") else f"{self.host}:{self.port}"

    def close(self) -> None:
        self._conn.close()


class _MaintenanceStub:
    def __init__(self, client: GatewayClient) -> None:
        self._client = client

    def Status(self, rq: Msg, timeout: float | None = None,  # noqa: N802 - gRPC name
               metadata: Metadata = None) -> Msg:
        data = self._client.call("/v3/maintenance/status", rq, timeout, metadata)
        return Msg(version=str(data.get("version", "")))


class _KVStub:
    def __init__(self, client: GatewayClient) -> None:
        self._client = client

    def Range(self, rq: Msg, timeout: float | None = None,  # noqa: N802 - gRPC name
              metadata: Metadata = None) -> Msg:
        return _range(self._client.call("/v3/kv/range", rq, timeout, metadata))

    def Put(self, rq: Msg, timeout: float | None = None,  # noqa: N802
            metadata: Metadata = None) -> Msg:
        return Msg(header=_header(self._client.call("/v3/kv/put", rq, timeout, metadata)))

    def DeleteRange(self, rq: Msg, timeout: float | None = None,  # noqa: N802
                    metadata: Metadata = None) -> Msg:
        data = self._client.call("/v3/kv/deleterange", rq, timeout, metadata)
        return Msg(header=_header(data), deleted=_int(data, "deleted"))

    def Txn(self, rq: Msg, timeout: float | None = None,  # noqa: N802
            metadata: Metadata = None) -> Msg:
        return _txn(self._client.call("/v3/kv/txn", rq, timeout, metadata))

    def Compact(self, rq: Msg, timeout: float | None = None,  # noqa: N802
                metadata: Metadata = None) -> Msg:
        data = self._client.call("/v3/kv/compaction", rq, timeout, metadata)
        return Msg(header=_header(data))


class _LeaseStub:
    def __init__(self, client: GatewayClient) -> None:
        self._client = client

    def LeaseGrant(self, rq: Msg, timeout: float | None = None,  # noqa: N802
                   metadata: Metadata = None) -> Msg:
        data = self._client.call("/v3/lease/grant", rq, timeout, metadata)
        return Msg(ID=_int(data, "ID"), TTL=_int(data, "TTL"))

    def LeaseKeepAlive(self, requests: Iterable[Msg],  # noqa: N802
                       timeout: float | None = None,
                       metadata: Metadata = None) -> Iterator[Msg]:
        for rq in requests:
            data = self._client.call("/v3/lease/keepalive", rq, timeout, metadata)
            yield Msg(ID=_int(data.get("result") or {}, "ID"),
                      TTL=_int(data.get("result") or {}, "TTL"))

    def LeaseRevoke(self, rq: Msg, timeout: float | None = None,  # noqa: N802
                    metadata: Metadata = None) -> Msg:
        data = self._client.call("/v3/lease/revoke", rq, timeout, metadata)
        return Msg(header=_header(data))
