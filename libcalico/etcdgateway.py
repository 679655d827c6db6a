"""etcd's v3 JSON gateway (HTTP/1.1, standard library only) as a transport for
`libcalico.datastore`, for short-lived programs that cannot pay for grpc.

Owns: the HTTP conversation with etcd's gRPC gateway (`POST /v3/kv/range` and friends,
JSON bodies with base64 bytes and int64 as strings) over TCP, TLS (the same CA and
client certificate files) or etcd's unix socket, one kept-alive `http.client`
connection per endpoint, logging in first when etcd has authentication on (the token
goes with every call as the `Authorization` header); watches; and a stand-in for the parts of
etcd3's generated gRPC modules that the datastore uses (`GATEWAY_RPC.RangeRequest(...)`,
`client.kvstub.Range(rq, timeout, metadata=...)`, the lease and maintenance stubs,
`client.metadata`), so the datastore's logic - paging, transactions, compare-and-swap,
fail-over, re-authentication - is the same code whichever transport carries it.

Watches: `GatewayClient.watch(creates)` opens one streaming `POST /v3/watch` per
watcher, each on a connection of its own (etcd keeps the watch after the request body
ends and streams one JSON result per line, chunked), with TCP keepalive so that a dead
peer breaks the stream as grpc's keepalive pings would; one thread reads them all
through one selector. `http.client` connects and sends the request; the streamed answer
is decoded here from the socket, because `http.client`'s buffered reader would hide
bytes it has already read from the selector.

Why: a CNI plugin is one process per call. `import etcd3` (grpc and protobuf) costs
~0.2 s of start-up on this hardware, more than the whole rest of an ADD; this module
costs a few milliseconds. The per-host daemons (felix, confd) use it too: grpc and
protobuf cost each of them ~30 MB of resident memory, and a host runs two of them
(docs/scale.md).

Errors: every failure is a `GatewayError` carrying the gRPC status code etcd reports
(14 UNAVAILABLE for a connection that fails or is closed, 4 DEADLINE_EXCEEDED for a
timeout), which `libcalico.datastore.translate_error` maps onto `libcalico.errors` like
a grpc error.

Leaves to others: what to read and write and the error hierarchy (`libcalico.datastore`).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

# etcd3's call metadata: (("token", TOKEN),) once logged in, else None.
Metadata = Iterable[tuple[str, str]] | None

# gRPC status codes (grpc/status.h) that the datastore distinguishes.
CANCELLED, DEADLINE_EXCEEDED, OUT_OF_RANGE, UNAVAILABLE = 1, 4, 11, 14
# TCP keepalive of a watch stream: like grpc's keepalive (30 s, then 5 s to answer), a
# peer that vanished without closing the connection breaks the stream in ~45 s.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 30, 5, 3


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
    WatchCreateRequest = staticmethod(_message())


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


def decode_watch_event(event: dict[str, Any]) -> tuple[str, str | None, int]:
    """(key, value or None for a delete, mod_revision) of one event of a watch result."""
    kv = event.get("kv") or {}
    key = _bytes(kv, "key").decode()
    if event.get("type") == "DELETE":
        return key, None, _int(kv, "mod_revision")
    return key, _bytes(kv, "value").decode("utf-8", "replace"), _int(kv, "mod_revision")


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
    """One endpoint's gateway: `kvstub`, `leasestub`, `maintenancestub`, `metadata`,
    `watch()` and `close()` as the datastore uses them on etcd3's client. Thread-safe:
    unary calls take turns on one kept-alive connection (a lock); each watch has a
    connection of its own. With a user and password it logs in first
    (`/v3/auth/authenticate`) and sends the token with every call, as etcd3 does over
    gRPC; `metadata` holds it in etcd3's form so the datastore passes it back per call."""

    def __init__(self, scheme: str, host: str, port: int, timeout: float,
                 ca_cert: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, user: str | None = None,
                 password: str | None = None) -> None:
        self.scheme, self.host, self.port, self.timeout = scheme, host, port, timeout
        self._tls = (ca_cert, cert_file, key_file)
        self._conn = _connection(scheme, host, port, timeout, self._tls)
        self._lock = threading.Lock()
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
        with self._lock:
            return self._call(path, body, headers, timeout)

    def _call(self, path: str, body: bytes, headers: dict[str, str],
              timeout: float | None) -> dict[str, Any]:
        for attempt in (1, 2):
            reused = self._conn.sock is not None
            self._conn.timeout = timeout or self.timeout
            if self._conn.sock is not None:  # a kept-alive socket has the last call's
                self._conn.sock.settimeout(self._conn.timeout)
            try:
                self._conn.request("POST", path, body, headers)
                response = self._conn.getresponse()
                status, raw = response.status, response.read()
            except TimeoutError:
                self._conn.close()
                raise GatewayError(DEADLINE_EXCEEDED, f"{self._where()}: timed out") from None
            except (ConnectionResetError, BrokenPipeError,
                    http.client.RemoteDisconnected) as exc:
                self._conn.close()
                if attempt == 1 and reused:
                    continue
                raise GatewayError(UNAVAILABLE, f"{self._where()}: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self._conn.close()
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

    def watch(self, creates: Sequence[Msg], metadata: Metadata = None) -> GatewayWatch:
        """Open one watch stream with a watcher per create request (see GatewayWatch)."""
        return GatewayWatch(self, creates, metadata)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class GatewayWatch:
    """Watches over the gateway: one `POST /v3/watch` per create request, each on a
    connection of its own, read together by the iterating thread (one selector).

    Why one request per watcher: the gateway reads the first create request of a body
    before it answers and the rest concurrently with its answer, and Go's HTTP/1.1 server
    discards whatever is still unread of a request body when the answer's headers go
    out, so a second create in the same body is lost now and then (seen: 12 streams in
    60 lost half their watchers).

    Iterating yields each watch response's `result` (a dict, as etcd's gateway spells it:
    base64 keys and values, int64 as strings), in order per watcher; it raises
    `GatewayError` (UNAVAILABLE) when a connection breaks or etcd ends a stream, or with
    the code etcd puts in a streamed error (16 for a refused auth token). `cancel()` may
    be called from any thread: it shuts the sockets down, and the iteration then ends
    quietly."""

    def __init__(self, client: GatewayClient, creates: Sequence[Msg],
                 metadata: Metadata = None) -> None:
        self._where = client._where()
        self.cancelled = False
        self._streams: list[_WatchConnection] = []
        try:
            for create in creates:
                self._streams.append(_WatchConnection(client, create, metadata))
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import selectors

        sel = selectors.DefaultSelector()
        try:
            # What came with each answer's headers first (a watch etcd refused at once,
            # for a stale auth token, says so there and then stays silent).
            ready = [(stream, False) for stream in self._streams]
            for stream in self._streams:
                sel.register(stream.sock, selectors.EVENT_READ, stream)
            while True:
                for stream, receive in ready:
                    try:
                        results = stream.read() if receive else stream.decode()
                    except (OSError, ValueError) as exc:
                        if self.cancelled:
                            return
                        raise GatewayError(UNAVAILABLE,
                                           f"{self._where}: watch broke: {exc}") from None
                    if results is None:
                        if self.cancelled:
                            return
                        raise GatewayError(UNAVAILABLE,
                                           f"{self._where}: etcd ended the watch stream")
                    yield from results
                ready = [(key.data, True) for key, _ in sel.select()]
        finally:
            sel.close()
            self.close()

    def cancel(self) -> None:
        self.cancelled = True
        for stream in self._streams:
            with contextlib.suppress(OSError):
                stream.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for stream in self._streams:
            stream.conn.close()


class _WatchConnection:
    """One watch request and the incremental decoding of its answer from the socket:
    status line and headers, then chunks, then newline-separated JSON messages."""

    def __init__(self, client: GatewayClient, create: Msg, metadata: Metadata) -> None:
        where = client._where()
        self.conn = _connection(client.scheme, client.host, client.port, client.timeout,
                                client._tls)
        body = json.dumps({"create_request": _encode(create)}).encode()
        headers = {"Content-Type": "application/json"}
        token = dict(metadata or ()).get("token")
        if token:
            headers["Authorization"] = token
        self._raw = b""
        try:
            self.conn.connect()
            assert self.conn.sock is not None
            self.sock: socket.socket = self.conn.sock
            if client.scheme in ("http", "https"):  # a dead peer breaks it after ~45 s
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for option, value in ((socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S),
                                      (socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S),
                                      (socket.TCP_KEEPCNT, KEEPALIVE_PROBES)):
                    self.sock.setsockopt(socket.IPPROTO_TCP, option, value)
            self.conn.request("POST", "/v3/watch", body, headers)
            status, answer = self._read_head()
        except TimeoutError:
            self.conn.close()
            raise GatewayError(DEADLINE_EXCEEDED, f"{where}: timed out") from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            self.conn.close()
            raise GatewayError(UNAVAILABLE, f"{where}: {exc}") from None
        if status != 200 or answer.get(b"transfer-encoding", b"").lower() != b"chunked":
            self.conn.close()
            code, message = UNAVAILABLE, f"watch refused (HTTP {status})"
            with contextlib.suppress(ValueError):  # etcd's error body, when it sent one
                data = json.loads(self._raw)
                if isinstance(data, dict) and isinstance(data.get("code"), int):
                    code, message = data["code"], str(data.get("message") or message)
            raise GatewayError(code, f"{where}: {message}")
        self.sock.settimeout(None)  # events may be hours apart; keepalive watches the peer
        self._pending = b""  # chunk data not yet split into lines
        self._chunk_left = -1  # bytes of the current chunk still to come; -1: a size line

    def _read_head(self) -> tuple[int, dict[bytes, bytes]]:
        """The answer's status and headers; what follows them stays in `_raw`."""
        while b"\r\n\r\n" not in self._raw:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("connection closed by etcd")
            self._raw += chunk
        head, self._raw = self._raw.split(b"\r\n\r\n", 1)
        status_line, *lines = head.split(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ValueError(f"bad status line {status_line[:80]!r}")
        headers: dict[bytes, bytes] = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding", b"").lower() != b"chunked":
            length = int(headers.get(b"content-length", b"0"))
            while len(self._raw) < length:  # an error answer: read its body
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self._raw += chunk
        return int(parts[1]), headers

    def read(self) -> list[dict[str, Any]] | None:
        """The messages completed by what the socket holds now; None at the stream's end."""
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionResetError("connection closed by etcd")
        pending = getattr(self.sock, "pending", None)  # TLS: records already decrypted,
        while pending is not None and pending():  # which the selector cannot see
            data += self.sock.recv(1 << 16)
        self._raw += data
        return self.decode()

    def decode(self) -> list[dict[str, Any]] | None:
        """The messages completed by what was received so far; None at the stream's end."""
        out: list[dict[str, Any]] = []
        raw = self._raw
        while True:
            if self._chunk_left < 0:
                end = raw.find(b"\r\n")
                if end < 0:
                    break
                size = int(raw[:end].split(b";")[0], 16)
                raw = raw[end + 2:]
                if size == 0:
                    self._raw = raw
                    return None
                self._chunk_left = size + 2  # the data and its CRLF
            if len(raw) < self._chunk_left:
                break
            self._pending += raw[:self._chunk_left - 2]
            raw = raw[self._chunk_left:]
            self._chunk_left = -1
        self._raw = raw
        while b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            if line.strip():
                out.append(_watch_result(line))
        return out


def _watch_result(line: bytes) -> dict[str, Any]:
    """The `result` of one streamed watch message; a streamed error raises."""
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError(f"unexpected watch message {line[:80]!r}")
    error = data.get("error")
    if isinstance(error, dict):
        code = error.get("grpc_code", error.get("code"))
        raise GatewayError(int(code) if isinstance(code, int) else UNAVAILABLE,
                           str(error.get("message") or error))
    result = data.get("result")
    return result if isinstance(result, dict) else {}


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
