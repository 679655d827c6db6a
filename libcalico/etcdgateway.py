"""etcd's v3 JSON gateway (HTTP/1.1, standard library only) as a transport for
`libcalico.datastore`, for short-lived programs that cannot pay for grpc.

Owns: the HTTP conversation with etcd's gRPC gateway (`POST /v3/kv/range` and friends,
JSON bodies with base64 bytes and int64 as strings) over TCP, TLS (the same CA and
client certificate files) or etcd's unix socket, one kept-alive HTTP/1.1 connection per
endpoint (a small client of its own: `http.client` imports `ssl` and `email`, ~20 ms of
start-up); and a stand-in for the parts of etcd3's generated gRPC modules that the
datastore uses (`GATEWAY_RPC.RangeRequest(...)`, `client.kvstub.Range(rq, timeout)`,
the lease stubs, `client.status()`), so the datastore's logic - paging, transactions,
compare-and-swap, fail-over - is the same code whichever transport carries it.

Watches: `GatewayClient.watch(creates)` opens one streaming `POST /v3/watch` per
watcher, each on a connection of its own (etcd keeps the watch after the request body
ends and streams one JSON result per line, chunked), with TCP keepalive so that a dead
peer breaks the stream as grpc's keepalive pings would; one thread reads them all.

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
import json
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

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


class _Connection:
    """One kept-alive HTTP/1.1 connection, POST only: TCP, TLS or a unix socket.

    Why not `http.client`: it imports `ssl` and the `email` package (~20 ms of start-up
    for every plugin call); the gateway needs one request shape and two response
    framings (Content-Length and chunked), written here in a few lines."""

    def __init__(self, scheme: str, host: str, port: int, timeout: float,
                 tls: tuple[str | None, str | None, str | None]) -> None:
        self.scheme, self.host, self.port, self.timeout, self.tls = (scheme, host, port,
                                                                     timeout, tls)
        self.sock: socket.socket | None = None
        self._buf = b""
        self.keepalive = False  # TCP keepalive probes (a long-lived watch stream)

    def _open(self) -> socket.socket:
        if self.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.host)
            except OSError:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((self.host, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.keepalive:  # a dead peer breaks the stream after ~45 s of silence
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in ((socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S),
                                  (socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S),
                                  (socket.TCP_KEEPCNT, KEEPALIVE_PROBES)):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
        if self.scheme == "https":
            import ssl

            ca, cert, key = self.tls
            context = ssl.create_default_context(cafile=ca)
            if cert:
                context.load_cert_chain(cert, key)
            return context.wrap_socket(sock, server_hostname=self.host)
        return sock

    def _read_more(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("connection closed by etcd")
        self._buf += chunk

    def _read_line(self) -> bytes:
        while b"\r\n" not in self._buf:
            self._read_more()
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _read_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._read_more()
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def start(self, path: str, body: bytes, timeout: float) -> tuple[int, dict[bytes, bytes]]:
        """Send one POST and read the answer's status and headers; reconnects when there
        is no connection yet."""
        if self.sock is None:
            self.sock = self._open()
            self._buf = b""
        self.sock.settimeout(timeout)
        host = "localhost" if self.scheme == "unix" else self.host
        self.sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                          f"application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                          .encode() + body)
        status_line = self._read_line()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ConnectionResetError(f"bad status line {status_line[:80]!r}")
        headers: dict[bytes, bytes] = {}
        while line := self._read_line():
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def take_buffer(self) -> bytes:
        """What was read past the headers so far (the caller decodes the body itself)."""
        data, self._buf = self._buf, b""
        return data

    def chunks(self) -> Iterator[bytes]:
        """The chunks of a chunked body, as they arrive; ends after the last one."""
        while size := int(self._read_line().split(b";")[0], 16):
            yield self._read_exactly(size)
            self._read_line()
        while self._read_line():  # trailers, then the blank line
            pass

    def post(self, path: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        """(status, body) of one POST; reconnects when there is no connection yet."""
        status, headers = self.start(path, body, timeout)
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            data = b"".join(self.chunks())
        else:
            data = self._read_exactly(int(headers.get(b"content-length", b"0")))
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, data

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class GatewayClient:
    """One endpoint's gateway: `kvstub`, `leasestub`, `status()`, `watch()` and `close()`
    as the datastore calls them on etcd3's client. Thread-safe: unary calls take turns
    on one kept-alive connection (a lock); each watch has a connection of its own."""

    def __init__(self, scheme: str, host: str, port: int, timeout: float,
                 ca_cert: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None) -> None:
        self.scheme, self.host, self.port, self.timeout = scheme, host, port, timeout
        self._tls = (ca_cert, cert_file, key_file)
        self._conn = _Connection(scheme, host, port, timeout, self._tls)
        self._lock = threading.Lock()
        self.kvstub = _KVStub(self)
        self.leasestub = _LeaseStub(self)

    def call(self, path: str, request: Msg | dict[str, Any],
             timeout: float | None = None) -> dict[str, Any]:
        """POST one request; the decoded JSON answer. A kept-alive connection that the
        server closed meanwhile is re-opened once."""
        body = json.dumps(_encode(request) if isinstance(request, Msg) else request).encode()
        with self._lock:
            return self._call(path, body, timeout)

    def _call(self, path: str, body: bytes, timeout: float | None) -> dict[str, Any]:
        for attempt in (1, 2):
            reused = self._conn.sock is not None
            try:
                status, raw = self._conn.post(path, body, timeout or self.timeout)
            except TimeoutError:
                self._conn.close()
                raise GatewayError(DEADLINE_EXCEEDED, f"{self._where()}: timed out") from None
            except (ConnectionResetError, BrokenPipeError) as exc:
                self._conn.close()
                if attempt == 1 and reused:
                    continue
                raise GatewayError(UNAVAILABLE, f"{self._where()}: {exc}") from None
            except (OSError, ValueError) as exc:
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
        return self.host if self.scheme == "unix" else f"{self.host}:{self.port}"

    def status(self) -> Msg:
        return Msg(version=str(self.call("/v3/maintenance/status", {}).get("version", "")))

    def watch(self, creates: Sequence[Msg]) -> GatewayWatch:
        """Open one watch stream with a watcher per create request (see GatewayWatch)."""
        return GatewayWatch(self, creates)

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
    the code etcd puts in a streamed error. `cancel()` may be called from any thread: it
    shuts the sockets down, and the iteration then ends quietly."""

    def __init__(self, client: GatewayClient, creates: Sequence[Msg]) -> None:
        self._where = client._where()
        self.cancelled = False
        self._streams: list[_WatchConnection] = []
        try:
            for create in creates:
                self._streams.append(_WatchConnection(client, create, self._where))
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import selectors

        sel = selectors.DefaultSelector()
        try:
            for stream in self._streams:
                sel.register(stream.sock, selectors.EVENT_READ, stream)
            while True:
                for key, _ in sel.select():
                    stream = key.data
                    try:
                        results = stream.read()
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
    """One watch request and the incremental decoding of its chunked answer: chunks,
    then newline-separated JSON messages."""

    def __init__(self, client: GatewayClient, create: Msg, where: str) -> None:
        self.conn = _Connection(client.scheme, client.host, client.port, client.timeout,
                                client._tls)
        self.conn.keepalive = True
        body = json.dumps({"create_request": _encode(create)}).encode()
        try:
            status, headers = self.conn.start("/v3/watch", body, client.timeout)
        except TimeoutError:
            self.conn.close()
            raise GatewayError(DEADLINE_EXCEEDED, f"{where}: timed out") from None
        except (OSError, ValueError) as exc:
            self.conn.close()
            raise GatewayError(UNAVAILABLE, f"{where}: {exc}") from None
        if status != 200 or headers.get(b"transfer-encoding", b"").lower() != b"chunked":
            self.conn.close()
            raise GatewayError(UNAVAILABLE, f"{where}: watch refused (HTTP {status})")
        assert self.conn.sock is not None
        self.sock = self.conn.sock
        self.sock.settimeout(None)  # events may be hours apart; keepalive watches the peer
        self._raw = self.conn.take_buffer()  # what arrived with the headers
        self._pending = b""  # chunk data not yet split into lines
        self._chunk_left = -1  # bytes of the current chunk still to come; -1: a size line

    def read(self) -> list[dict[str, Any]] | None:
        """The messages completed by what the socket holds now; None at the stream's end."""
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionResetError("connection closed by etcd")
        pending = getattr(self.sock, "pending", None)  # TLS: records already decrypted,
        while pending is not None and pending():  # which the selector cannot see
            data += self.sock.recv(1 << 16)
        self._raw += data
        return self._decode()

    def _decode(self) -> list[dict[str, Any]] | None:
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


class _KVStub:
    def __init__(self, client: GatewayClient) -> None:
        self._client = client

    def Range(self, rq: Msg, timeout: float | None = None) -> Msg:  # noqa: N802 - gRPC name
        return _range(self._client.call("/v3/kv/range", rq, timeout))

    def Put(self, rq: Msg, timeout: float | None = None) -> Msg:  # noqa: N802
        return Msg(header=_header(self._client.call("/v3/kv/put", rq, timeout)))

    def DeleteRange(self, rq: Msg, timeout: float | None = None) -> Msg:  # noqa: N802
        data = self._client.call("/v3/kv/deleterange", rq, timeout)
        return Msg(header=_header(data), deleted=_int(data, "deleted"))

    def Txn(self, rq: Msg, timeout: float | None = None) -> Msg:  # noqa: N802
        return _txn(self._client.call("/v3/kv/txn", rq, timeout))

    def Compact(self, rq: Msg, timeout: float | None = None) -> Msg:  # noqa: N802
        return Msg(header=_header(self._client.call("/v3/kv/compaction", rq, timeout)))


class _LeaseStub:
    def __init__(self, client: GatewayClient) -> None:
        self._client = client

    def LeaseGrant(self, rq: Msg, timeout: float | None = None) -> Msg:  # noqa: N802
        data = self._client.call("/v3/lease/grant", rq, timeout)
        return Msg(ID=_int(data, "ID"), TTL=_int(data, "TTL"))

    def LeaseKeepAlive(self, requests: Iterable[Msg],  # noqa: N802
                       timeout: float | None = None) -> Iterator[Msg]:
        for rq in requests:
            data = self._client.call("/v3/lease/keepalive", rq, timeout)
            yield Msg(ID=_int(data.get("result") or {}, "ID"),
                      TTL=_int(data.get("result") or {}, "TTL"))

    def LeaseRevoke(self, rq: Msg, timeout: float | None = None) -> Msg:  # noqa: N802
        return Msg(header=_header(self._client.call("/v3/lease/revoke", rq, timeout)))
