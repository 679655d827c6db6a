"""The datastore client: the only module that talks to etcd.

Owns: connection settings (`EtcdSettings`, from `ETCD_ENDPOINTS`, `ETCD_AUTHORITY`, the
TLS variables and `ETCD_USERNAME`/`ETCD_PASSWORD` for etcd's user authentication),
fail-over between endpoints, authentication (a token per connection, renewed when etcd
says it is no longer valid: tokens die with an etcd restart), a timeout on every unary
call, and the
primitive operations everything else is built from: get, paged list by prefix at one
revision (also as bare keys and values decoded from the wire, for reads of many keys),
create-only put, compare-and-swap put and delete on mod_revision (they return
whether they won; losing a race is normal, not an error), multi-key transactions, leases
and raw watch streams. Every etcd3/grpc exception is mapped onto `libcalico.errors`.

Leaves to others: key names (`libcalico.keyspace`), value shapes (`libcalico.model`),
snapshot-and-follow semantics (`libcalico.syncer`) and retry policy above one call
(IPAM and the CLI loop a bounded number of times and re-read).

Transports (`EtcdSettings.transport`): "grpc" (the library's default) opens its own gRPC
channel (set up as etcd3's client would) and uses the etcd3 package's generated stubs
directly for ranges and watches, because the package's high-level calls ignore
`revision`/`limit` and its watch thread re-connects in a tight loop while etcd is down;
reads of many keys (`list_items`, `list_encoded`) and logging in go over the channel as
bare bytes (`libcalico.etcdwire`), so a program that only reads that way never imports
etcd3. "http" speaks to etcd's JSON gateway with the standard library
(`libcalico.etcdgateway`, watches included): for one-shot programs such as the CNI
plugin, which cannot pay grpc's ~0.2 s import, and for the per-host daemons (felix,
confd), which save ~30 MB of resident memory each without grpc and protobuf. The same
calls below run over either (but `list_items` and `list_encoded`: grpc);
`ETCD_TRANSPORT` chooses for the programs that read it.
"""

from __future__ import annotations

import builtins
import functools
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from libcalico.errors import (
    AlreadyExists,
    CalicoError,
    DatastoreError,
    DatastoreUnavailable,
    ValidationError,
)
from libcalico.keyspace import ROOT

_log = logging.getLogger(__name__)

DEFAULT_AUTHORITY = "127.0.0.1:2379"
TRANSPORTS = ("grpc", "http")
DEFAULT_TIMEOUT = 5.0
# Keys per range request of a paged list. Large pages matter: with the pure-Python protobuf
# that protobuf<4 gives on Python 3.11, decoding dominates, and every page is a round trip
# in which etcd 3.4 also re-walks its index over the rest of the range (bench/syncer.py).
PAGE_SIZE = 10000
# Keepalive pings let a watch notice a dead peer (etcd killed, host gone) quickly. Only
# while a call (a watch) is open: etcd's server refuses pings on an idle connection and
# answers them with GOAWAY "too_many_pings". Public: a benchmark baseline sets its raw
# etcd3 client up the same way (bench/syncer.py).
GRPC_OPTIONS = [
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


@dataclass(frozen=True)
class Endpoint:
    scheme: str  # "http", "https", "unix" or "unixs" (host is then the socket's path)
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme in ("https", "unixs")

    @property
    def url(self) -> str:
        if self.scheme in ("unix", "unixs"):
            return f"{self.scheme}://{self.host}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def grpc_target(self) -> tuple[str, int | str]:
        """(host, port) as etcd3.client joins them into a gRPC target."""
        if self.scheme in ("unix", "unixs"):
            # etcd names its socket "<name>:<port>"; gRPC wants "unix:<path>".
            path, _, port = self.host.rpartition(":")
            return f"unix:{path}", port
        return self.host, self.port


@dataclass(frozen=True)
class EtcdSettings:
    """Where etcd is and how to reach it. Pure: parsing only, no connection."""

    endpoints: tuple[Endpoint, ...]
    ca_cert: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    transport: str = "grpc"  # or "http": etcd's JSON gateway, no grpc import
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never printed

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *,
                 endpoints: str | None = None, authority: str | None = None,
                 ca_cert: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, timeout: float | None = None,
                 transport: str = "grpc", username: str | None = None) -> EtcdSettings:
        """Settings from explicit values, falling back to the ETCD_* variables.

        `ETCD_ENDPOINTS` (comma-separated URLs) wins over `ETCD_AUTHORITY` (host:port,
        with `ETCD_SCHEME`); the default is http://127.0.0.1:2379. The password comes
        only from `ETCD_PASSWORD` (never a command-line flag, which `ps` would show).
        """
        env = os.environ if env is None else env
        endpoints = endpoints or env.get("ETCD_ENDPOINTS") or None
        ca_cert = ca_cert or env.get("ETCD_CA_CERT_FILE") or None
        cert_file = cert_file or env.get("ETCD_CERT_FILE") or None
        key_file = key_file or env.get("ETCD_KEY_FILE") or None
        username = username or env.get("ETCD_USERNAME") or None
        password = env.get("ETCD_PASSWORD") or None
        if bool(username) != bool(password):
            raise ValidationError("ETCD_USERNAME/ETCD_PASSWORD", username or "(unset)",
                                  "etcd authentication needs both a user and a password")
        if endpoints:
            eps = tuple(parse_endpoint_url(u) for u in endpoints.split(",") if u.strip())
            if not eps:
                raise ValidationError("ETCD_ENDPOINTS", endpoints, "no endpoint given")
        else:
            authority = authority or env.get("ETCD_AUTHORITY") or DEFAULT_AUTHORITY
            scheme = env.get("ETCD_SCHEME") or ("https" if ca_cert else "http")
            eps = (parse_endpoint_url(f"{scheme}://{authority}", field="ETCD_AUTHORITY"),)
        if bool(cert_file) != bool(key_file):
            raise ValidationError("ETCD_CERT_FILE/ETCD_KEY_FILE", cert_file or key_file,
                                  "a client certificate needs both the cert and the key")
        if any(e.tls for e in eps) and not ca_cert:
            raise ValidationError("ETCD_CA_CERT_FILE", ca_cert,
                                  "https endpoints need a CA certificate")
        if transport not in TRANSPORTS:
            raise ValidationError("transport", transport, f"must be one of {TRANSPORTS}")
        return cls(eps, ca_cert, cert_file, key_file,
                   DEFAULT_TIMEOUT if timeout is None else timeout, transport, username,
                   password)


def parse_endpoint_url(url: str, field: str = "ETCD_ENDPOINTS") -> Endpoint:
    url = url.strip()
    for scheme in ("unix", "unixs"):  # unixs: TLS over the socket
        if url.startswith(f"{scheme}://"):
            path = url[len(f"{scheme}://"):]
            if not path.startswith("/") or ":" not in path.rsplit("/", 1)[-1]:
                raise ValidationError(field, url, f"expected {scheme}:///<path>/<name>:<port>,"
                                      f" the socket etcd makes for {scheme}://<name>:<port>")
            return Endpoint(scheme, path, 0)
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
    except ValueError:  # e.g. "[": an unclosed IPv6 bracket
        raise ValidationError(field, url, "expected http(s)://host:port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(field, url, "expected http(s)://host:port")
    try:
        port = parts.port or 2379
    except ValueError as exc:
        raise ValidationError(field, url, "bad port") from exc
    return Endpoint(parts.scheme, parts.hostname, port)


@dataclass(frozen=True)
class KV:
    key: str
    value: str
    mod_revision: int
    create_revision: int
    lease: int = 0


# --- transaction vocabulary (our own, so callers never import etcd3) ---------------------

@dataclass(frozen=True)
class ModRevisionIs:
    """Compare: the key's mod_revision equals `revision` (0: the key is absent)."""
    key: str
    revision: int


@dataclass(frozen=True)
class ValueIs:
    key: str
    value: str


@dataclass(frozen=True)
class Put:
    key: str
    value: str
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True)
class Get:
    """Read one key inside a transaction (only with `Datastore.txn_result`)."""
    key: str


Compare = ModRevisionIs | ValueIs
Op = Put | Delete


@dataclass(frozen=True)
class TxnResult:
    """Outcome of `Datastore.txn_result`: whether the compares held, the revision the
    transaction ran at (the new revision when it wrote), and the value of each `Get` of
    the branch that ran, by key (None: absent)."""
    succeeded: bool
    revision: int
    gets: dict[str, KV | None]


@dataclass(frozen=True)
class WatchEvent:
    key: str
    value: str | None  # None: the key was deleted
    mod_revision: int


@dataclass(frozen=True)
class WatchBatch:
    revision: int  # the header revision of the response
    events: tuple[WatchEvent, ...]


class AuthTokenInvalid(DatastoreError):
    """etcd no longer accepts the connection's auth token (expired, or etcd restarted):
    the client authenticates again and retries once."""


class Compacted(DatastoreError):
    """A watch asked for history that etcd has compacted away."""

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"revision compacted (oldest available {compact_revision})")


T = TypeVar("T")


def _map_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Translate grpc/etcd3 exceptions into the project's hierarchy."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except DatastoreError:
            raise
        except Exception as exc:  # grpc.RpcError, etcd3 exceptions
            raise translate_error(exc) from exc

    return wrapper


# gRPC status codes (grpc/status.h), as both transports report them.
_CANCELLED, _INVALID_ARGUMENT, _DEADLINE_EXCEEDED, _PERMISSION_DENIED = 1, 3, 4, 7
_FAILED_PRECONDITION, _OUT_OF_RANGE, _UNAVAILABLE, _UNAUTHENTICATED = 9, 11, 14, 16


def _status(exc: BaseException) -> tuple[int, str] | None:
    """(gRPC status code, details) of a transport error, whichever transport raised it."""
    from libcalico.etcdgateway import GatewayError

    if isinstance(exc, GatewayError):
        return exc.code, exc.details
    # A process on the gateway transport never loads grpc; an exception can only be a
    # grpc error when grpc is loaded.
    grpc = sys.modules.get("grpc")
    if grpc is not None and isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return (code.value[0] if code is not None else -1), str(details)
    return None


def translate_error(exc: BaseException) -> DatastoreError:
    status = _status(exc)
    if status is None:
        name = type(exc).__name__
        if name in ("ConnectionFailedError", "ConnectionTimeoutError", "WatchTimedOut"):
            return DatastoreUnavailable(f"etcd unavailable: {name}")
        return DatastoreError(f"etcd error: {name}: {exc}")
    code, details = status
    if code in (_UNAVAILABLE, _DEADLINE_EXCEEDED, _CANCELLED):
        return DatastoreUnavailable(f"etcd unavailable: {details}")
    if code == _OUT_OF_RANGE and "compacted" in details:
        return Compacted(0)
    if code == _UNAUTHENTICATED and "token" in details:
        return AuthTokenInvalid(f"etcd refused the session: {details}")
    if code in (_PERMISSION_DENIED, _UNAUTHENTICATED, _INVALID_ARGUMENT,
                _FAILED_PRECONDITION) and ("auth" in details or "permission" in details):
        return DatastoreError(f"etcd refused the credentials (ETCD_USERNAME/"
                              f"ETCD_PASSWORD, or the user's permissions): {details}")
    return DatastoreError(f"etcd error {code}: {details}")


def _watch_cancelled(reason: str) -> DatastoreError:
    """etcd cancelled a watch: for a stale auth token (etcd restarted) the next call logs
    in again; otherwise the stream is gone as if etcd were unreachable."""
    if "invalid auth token" in reason:
        return AuthTokenInvalid(f"etcd refused the watch: {reason}")
    return DatastoreUnavailable(f"watch cancelled by etcd: {reason}")


def _prefix_end(prefix: bytes) -> bytes:
    buf = bytearray(prefix)
    for i in range(len(buf) - 1, -1, -1):
        if buf[i] < 0xFF:
            buf[i] += 1
            return bytes(buf[: i + 1])
    return b"\0"


class Lease:
    """A granted lease; keys put with `lease=lease.id` vanish when it expires."""

    def __init__(self, store: Datastore, lease_id: int, ttl: int) -> None:
        self._store = store
        self.id = lease_id
        self.ttl = ttl

    def refresh(self) -> None:
        self._store.refresh_lease(self.id)

    def revoke(self) -> None:
        self._store.revoke_lease(self.id)


class _GrpcClient:
    """etcd3's client as the datastore uses it - `channel`, `metadata`, `kvstub`,
    `leasestub`, `maintenancestub`, `close()` - on a channel opened here with grpc alone,
    set up as `etcd3.client` sets up its own (target, TLS files, options), logging in first
    with a user and password (etcd's Authenticate, as etcd3 does; the token goes with every
    call as `metadata`). etcd3's generated modules (~50 ms of start-up) load on the first
    use of a stub, so a short-lived program that reads only through `list_items` /
    `list_encoded` (`calico-felix-trace`) never loads them."""

    _STUBS = {"kvstub": "KVStub", "leasestub": "LeaseStub",
              "maintenancestub": "MaintenanceStub"}

    def __init__(self, endpoint: Endpoint, s: EtcdSettings) -> None:
        import grpc

        host, port = endpoint.grpc_target
        target = f"{host}:{port}"
        # Over a unix socket there is no host name: etcd's certificate must name localhost
        # (as `netsim.etcd.make_tls_material`'s does).
        options = GRPC_OPTIONS + ([("grpc.ssl_target_name_override", "localhost")]
                                  if endpoint.scheme == "unixs" else [])
        if endpoint.tls:
            def read(path: str | None) -> bytes | None:
                if path is None:
                    return None
                with open(path, "rb") as f:
                    return f.read()

            creds = grpc.ssl_channel_credentials(read(s.ca_cert), read(s.key_file),
                                                 read(s.cert_file))
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.metadata: tuple[tuple[str, str], ...] | None = None
        if s.username:
            from libcalico.etcdwire import encode_authenticate_request, message_field

            try:
                authenticate = self.channel.unary_unary("/etcdserverpb.Auth/Authenticate")
                answer = authenticate(encode_authenticate_request(s.username, s.password or ""),
                                      s.timeout)
            except BaseException:
                self.channel.close()
                raise
            self.metadata = (("token", message_field(bytes(answer), 2).decode()),)

    def __getattr__(self, name: str) -> Any:
        if name not in self._STUBS:
            raise AttributeError(name)
        from etcd3 import etcdrpc

        stub = getattr(etcdrpc, self._STUBS[name])(self.channel)
        setattr(self, name, stub)
        return stub

    def close(self) -> None:
        self.channel.close()


class _EtcdRpc:
    """etcd3's `etcdrpc` module (the request constructors), imported on first use."""

    def __getattr__(self, name: str) -> Any:
        from etcd3 import etcdrpc

        return getattr(etcdrpc, name)


@dataclass
class _Conn:
    endpoint: Endpoint
    client: Any  # a _GrpcClient, or an etcdgateway.GatewayClient
    rpc: Any  # etcd3's etcdrpc module (lazily), or etcdgateway.GATEWAY_RPC
    raw_range: Any = None  # KV/Range taking and returning serialized messages
    _watchstub: Any = None
    gateway: bool = False  # etcd's JSON gateway: no gRPC channel, watches by the client

    @property
    def meta(self) -> Any:
        """The call metadata: the auth token when etcd authentication is on, else None."""
        return self.client.metadata

    @property
    def watchstub(self) -> Any:
        """etcd3's Watch stub on the gRPC channel (made on first use); None on the gateway."""
        if self._watchstub is None and not self.gateway:
            from etcd3 import etcdrpc

            self._watchstub = etcdrpc.WatchStub(self.client.channel)
        return self._watchstub


class Datastore:
    """Thread-safe etcd client with fail-over across the configured endpoints.

    State: one lazily opened connection to the current endpoint; on an
    unavailable error the next endpoint is tried, each at most once per call.
    """

    def __init__(self, settings: EtcdSettings | None = None) -> None:
        self.settings = settings or EtcdSettings.from_env()
        self._lock = threading.Lock()
        self._conn: _Conn | None = None
        self._index = 0

    # --- connection ------------------------------------------------------------------------

    def _connect(self, endpoint: Endpoint) -> _Conn:
        s = self.settings
        tls = endpoint.tls
        if tls:  # etcd3 reads these files now; name the setting, not a bare OSError
            for name, path in (("ETCD_CA_CERT_FILE", s.ca_cert), ("ETCD_CERT_FILE", s.cert_file),
                               ("ETCD_KEY_FILE", s.key_file)):
                if path and not os.access(path, os.R_OK):
                    raise ValidationError(name, path, "file missing or unreadable")
        if s.transport == "http":
            from libcalico.etcdgateway import GATEWAY_RPC, GatewayClient

            gateway = GatewayClient(endpoint.scheme, endpoint.host, endpoint.port, s.timeout,
                                    s.ca_cert, s.cert_file, s.key_file, s.username, s.password)
            return _Conn(endpoint, gateway, GATEWAY_RPC, gateway=True)

        return _Conn(endpoint, _GrpcClient(endpoint, s), _EtcdRpc())

    def _current(self) -> _Conn:
        with self._lock:
            if self._conn is None:
                self._conn = self._connect(self.settings.endpoints[self._index])
            return self._conn

    def _fail_over(self, failed: _Conn | None) -> None:
        """Move to the next endpoint (`failed` None: connecting to the current one failed)."""
        with self._lock:
            if failed is None or self._conn is failed:
                url = self.settings.endpoints[self._index].url
                _log.warning("etcd endpoint %s unavailable; failing over", url)
                if failed is not None:
                    failed.client.close()
                self._conn = None
                self._index = (self._index + 1) % len(self.settings.endpoints)

    def _reauthenticate(self, stale: _Conn) -> None:
        """Drop a connection whose auth token etcd refuses; the next call logs in again."""
        with self._lock:
            if self._conn is stale:
                _log.info("etcd auth token refused at %s; authenticating again",
                          stale.endpoint.url)
                stale.client.close()
                self._conn = None

    def _call(self, fn: Callable[[_Conn], T]) -> T:
        last: DatastoreError | None = None
        reauthenticated = False
        attempts = len(self.settings.endpoints)
        while attempts > 0:
            attempts -= 1
            try:
                conn = self._current()
            except CalicoError:  # bad settings (ValidationError), not the network
                raise
            except Exception as exc:  # connecting (and authenticating) failed
                err = translate_error(exc)
                if not isinstance(err, DatastoreUnavailable):
                    raise err from exc
                last = err
                self._fail_over(None)
                continue
            try:
                return fn(conn)
            except DatastoreError:
                raise
            except Exception as exc:
                err = translate_error(exc)
                if isinstance(err, AuthTokenInvalid) and not reauthenticated:
                    reauthenticated = True
                    attempts += 1
                    self._reauthenticate(conn)
                    continue
                if not isinstance(err, DatastoreUnavailable):
                    raise err from exc
                last = err
                self._fail_over(conn)
        assert last is not None
        raise last

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.client.close()
                self._conn = None

    def __enter__(self) -> Datastore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reads ---------------------------------------------------------------------------------

    def _range(self, conn: _Conn, key: bytes, range_end: bytes | None, revision: int = 0,
               limit: int = 0, keys_only: bool = False) -> Any:
        rq = conn.rpc.RangeRequest(key=key, revision=revision, limit=limit,
                                   keys_only=keys_only)
        if range_end is not None:
            rq.range_end = range_end
        return conn.client.kvstub.Range(rq, self.settings.timeout, metadata=conn.meta)

    def _pages(self, prefix: str, revision: int, keys_only: bool = False) -> Iterator[Any]:
        """The range responses covering `prefix`, PAGE_SIZE keys each, all read at the
        first response's revision unless `revision` is given."""
        start = prefix.encode()
        end = _prefix_end(start)
        while True:
            resp = self._call(functools.partial(
                self._range, key=start, range_end=end, revision=revision, limit=PAGE_SIZE,
                keys_only=keys_only))
            revision = revision or resp.header.revision
            yield resp
            if not resp.more or not resp.kvs:
                return
            start = resp.kvs[-1].key + b"\0"

    @staticmethod
    def _kv(kv: Any) -> KV:
        return KV(kv.key.decode(), kv.value.decode("utf-8", "replace"), kv.mod_revision,
                  kv.create_revision, kv.lease)

    def get(self, key: str) -> KV | None:
        resp = self._call(lambda c: self._range(c, key.encode(), None))
        return self._kv(resp.kvs[0]) if resp.kvs else None

    def get_value(self, key: str) -> str | None:
        kv = self.get(key)
        return None if kv is None else kv.value

    def list(self, prefix: str, revision: int = 0) -> tuple[list[KV], int]:
        """All keys below `prefix` as one consistent read; returns (kvs, revision).

        Reads in pages of PAGE_SIZE, all at the revision of the first page, so a large
        prefix is still a snapshot.
        """
        return self.list_many([prefix], revision)

    def list_many(self, prefixes: Sequence[str],
                  revision: int = 0) -> tuple[builtins.list[KV], int]:
        """Several prefixes read at one revision (the first read's, unless given)."""
        out: builtins.list[KV] = []
        for prefix in prefixes:
            for resp in self._pages(prefix, revision):
                revision = revision or resp.header.revision
                out.extend([KV(kv.key.decode(), kv.value.decode("utf-8", "replace"),
                               kv.mod_revision, kv.create_revision, kv.lease)
                            for kv in resp.kvs])
        return out, revision

    def list_items(self, prefix: str,
                   revision: int = 0) -> tuple[builtins.list[tuple[str, str]], int]:
        """Keys and values below `prefix` (no metadata) as one consistent read; returns
        (items, revision). For reads of many keys: the responses are decoded straight from
        the wire (`libcalico.etcdwire`), not into protobuf objects, several times faster."""
        from libcalico.etcdwire import kv_key, kv_value

        kvs, revision = self.list_encoded(prefix, revision)
        return [(kv_key(kv).decode(), kv_value(kv).decode("utf-8", "replace"))
                for kv in kvs], revision

    def list_encoded(self, prefix: str,
                     revision: int = 0) -> tuple[builtins.list[bytes], int]:
        """The KeyValues below `prefix` as etcd serialized them, as one consistent read;
        returns (kvs, revision). For readers that look into few of many values:
        `libcalico.etcdwire.kv_key` / `kv_value` read one (splitting 10,000 costs ~6 ms)."""
        from libcalico.etcdwire import kv_key, split_range

        start = prefix.encode()
        end = _prefix_end(start)
        out: builtins.list[bytes] = []
        while True:
            data = self._call(functools.partial(self._raw_range, key=start, range_end=end,
                                                revision=revision))
            header_revision, more, kvs = split_range(data)
            revision = revision or header_revision
            out.extend(kvs)
            if not more or not kvs:
                return out, revision
            start = kv_key(kvs[-1]) + b"\0"

    def _raw_range(self, conn: _Conn, key: bytes, range_end: bytes, revision: int) -> bytes:
        from libcalico.etcdwire import encode_range_request

        if conn.raw_range is None:  # no (de)serializers: bytes in, bytes out
            conn.raw_range = conn.client.channel.unary_unary("/etcdserverpb.KV/Range")
        rq = encode_range_request(key, range_end, revision, PAGE_SIZE)
        return bytes(conn.raw_range(rq, self.settings.timeout, metadata=conn.meta))

    def list_keys(self, prefix: str, revision: int = 0) -> tuple[builtins.list[str], int]:
        """The keys below `prefix`, without their values, as one consistent read;
        returns (keys, revision). For listings that need only names: etcd sends no values."""
        out: builtins.list[str] = []
        for resp in self._pages(prefix, revision, keys_only=True):
            revision = revision or resp.header.revision
            out.extend([kv.key.decode() for kv in resp.kvs])
        return out, revision

    def revision(self) -> int:
        # A key inside the project's tree: an etcd user may be allowed only that tree.
        resp = self._call(lambda c: self._range(c, ROOT.encode(), None, keys_only=True))
        return int(resp.header.revision)

    def version(self) -> str:
        def status(c: _Conn) -> str:
            # The stub with the token as metadata: etcd3's own status() sends it as call
            # credentials, which gRPC refuses over a plain-text channel.
            resp = c.client.maintenancestub.Status(c.rpc.StatusRequest(), self.settings.timeout,
                                                   metadata=c.meta)
            return str(resp.version)

        return self._call(status)

    # --- writes --------------------------------------------------------------------------------

    def put(self, key: str, value: str, lease: int = 0) -> int:
        """Unconditional write; returns the new revision."""
        def op(c: _Conn) -> int:
            rq = c.rpc.PutRequest(key=key.encode(), value=value.encode(), lease=lease)
            return int(c.client.kvstub.Put(rq, self.settings.timeout,
                                           metadata=c.meta).header.revision)

        return self._call(op)

    def create(self, key: str, value: str, lease: int = 0) -> bool:
        """Create-only write: True if the key did not exist and now holds `value`."""
        return self.txn([ModRevisionIs(key, 0)], [Put(key, value, lease)])

    def create_or_raise(self, key: str, value: str, lease: int = 0) -> None:
        if not self.create(key, value, lease):
            raise AlreadyExists(f"{key} already exists")

    def cas(self, key: str, value: str, mod_revision: int, lease: int = 0) -> bool:
        """Write only if the key's mod_revision is still `mod_revision` (0: absent)."""
        return self.txn([ModRevisionIs(key, mod_revision)], [Put(key, value, lease)])

    def delete(self, key: str) -> bool:
        """Delete one key; True if it existed."""
        def op(c: _Conn) -> bool:
            rq = c.rpc.DeleteRangeRequest(key=key.encode())
            return bool(c.client.kvstub.DeleteRange(rq, self.settings.timeout,
                                                    metadata=c.meta).deleted)

        return self._call(op)

    def cas_delete(self, key: str, mod_revision: int) -> bool:
        """Delete only if the key's mod_revision is still `mod_revision`."""
        return self.txn([ModRevisionIs(key, mod_revision)], [Delete(key)])

    def delete_prefix(self, prefix: str) -> int:
        def op(c: _Conn) -> int:
            start = prefix.encode()
            rq = c.rpc.DeleteRangeRequest(key=start, range_end=_prefix_end(start))
            return int(c.client.kvstub.DeleteRange(rq, self.settings.timeout,
                                                   metadata=c.meta).deleted)

        return self._call(op)

    def txn(self, compares: Sequence[Compare], success: Sequence[Op],
            failure: Sequence[Op] = ()) -> bool:
        """An atomic multi-key transaction; True if every compare held."""
        return self.txn_result(compares, success, failure).succeeded

    def txn_result(self, compares: Sequence[Compare], success: Sequence[Op | Get],
                   failure: Sequence[Op | Get] = ()) -> TxnResult:
        """`txn` that also returns the revision and the values read by `Get` ops, so a
        caller can follow its own writes and learn why a compare-and-swap lost without
        another round trip."""

        def op(c: _Conn) -> TxnResult:
            rpc = c.rpc
            cmp = []
            for cp in compares:
                if isinstance(cp, ModRevisionIs):
                    cmp.append(rpc.Compare(key=cp.key.encode(), result=rpc.Compare.EQUAL,
                                           target=rpc.Compare.MOD,
                                           mod_revision=cp.revision))
                else:
                    cmp.append(rpc.Compare(key=cp.key.encode(), result=rpc.Compare.EQUAL,
                                           target=rpc.Compare.VALUE,
                                           value=cp.value.encode()))
            rq = rpc.TxnRequest(compare=cmp, success=self._ops(rpc, success),
                                failure=self._ops(rpc, failure))
            resp = c.client.kvstub.Txn(rq, self.settings.timeout, metadata=c.meta)
            branch = success if resp.succeeded else failure
            gets: dict[str, KV | None] = {}
            for o, r in zip(branch, resp.responses, strict=True):
                if isinstance(o, Get):
                    kvs = r.response_range.kvs
                    gets[o.key] = self._kv(kvs[0]) if kvs else None
            return TxnResult(bool(resp.succeeded), int(resp.header.revision), gets)

        return self._call(op)

    @staticmethod
    def _ops(rpc: Any, ops: Sequence[Op | Get]) -> builtins.list[Any]:
        out = []
        for o in ops:
            if isinstance(o, Get):
                out.append(rpc.RequestOp(request_range=rpc.RangeRequest(key=o.key.encode())))
            elif isinstance(o, Put):
                out.append(rpc.RequestOp(request_put=rpc.PutRequest(
                    key=o.key.encode(), value=o.value.encode(), lease=o.lease)))
            else:
                start = o.key.encode()
                rq = rpc.DeleteRangeRequest(key=start)
                if o.prefix:
                    rq.range_end = _prefix_end(start)
                out.append(rpc.RequestOp(request_delete_range=rq))
        return out

    # --- leases ------------------------------------------------------------------------------

    def grant_lease(self, ttl: int) -> Lease:
        def op(c: _Conn) -> int:
            rq = c.rpc.LeaseGrantRequest(TTL=ttl)
            return int(c.client.leasestub.LeaseGrant(rq, self.settings.timeout,
                                                     metadata=c.meta).ID)

        return Lease(self, self._call(op), ttl)

    def refresh_lease(self, lease_id: int) -> int:
        """Keep a lease alive once; returns the remaining TTL (0: it had expired)."""
        def op(c: _Conn) -> int:
            rq = c.rpc.LeaseKeepAliveRequest(ID=lease_id)
            for resp in c.client.leasestub.LeaseKeepAlive(iter([rq]), self.settings.timeout,
                                                          metadata=c.meta):
                return int(resp.TTL)
            return 0

        return self._call(op)

    def revoke_lease(self, lease_id: int) -> None:
        def op(c: _Conn) -> None:
            c.client.leasestub.LeaseRevoke(c.rpc.LeaseRevokeRequest(ID=lease_id),
                                           self.settings.timeout, metadata=c.meta)

        self._call(op)

    # --- maintenance -------------------------------------------------------------------------

    def compact(self, revision: int) -> None:
        def op(c: _Conn) -> None:
            c.client.kvstub.Compact(c.rpc.CompactionRequest(revision=revision, physical=True),
                                    self.settings.timeout, metadata=c.meta)

        self._call(op)

    # --- watches -------------------------------------------------------------------------------

    def watch(self, prefixes: Sequence[str], start_revision: int) -> WatchStream:
        """Open a watch on each prefix from `start_revision`; see `WatchStream`."""
        conn = self._current()
        try:
            return WatchStream(conn, prefixes, start_revision)
        except DatastoreError:
            raise
        except Exception as exc:
            err = translate_error(exc)
            if isinstance(err, DatastoreUnavailable):
                self._fail_over(conn)
            raise err from exc

    def fail_over_watch(self, stream: WatchStream) -> None:
        """A watch stream broke: move to the next endpoint for the next attempt."""
        self._fail_over(stream.conn)


@dataclass
class WatchStream:
    """One watch stream covering several prefixes (a gRPC stream, or one streaming
    request to the JSON gateway), read by one consumer thread.

    Iterating yields `WatchBatch`es in revision order; it raises `Compacted` if the
    start revision is gone and `DatastoreUnavailable` when the stream breaks. `cancel()`
    may be called from any thread and ends the iteration.
    """

    conn: _Conn
    prefixes: Sequence[str]
    start_revision: int
    _requests: queue.Queue[Any] = field(default_factory=queue.Queue)
    _call: Any = None
    _cancelled: bool = False
    _gateway: Any = None  # an etcdgateway.GatewayWatch (transport "http")

    def __post_init__(self) -> None:
        rpc = self.conn.rpc
        if self.conn.watchstub is None:  # the JSON gateway
            self._gateway = self.conn.client.watch([rpc.WatchCreateRequest(
                key=p.encode(), range_end=_prefix_end(p.encode()),
                start_revision=self.start_revision, progress_notify=True)
                for p in self.prefixes], metadata=self.conn.meta)
            return
        for prefix in self.prefixes:
            start = prefix.encode()
            create = rpc.WatchCreateRequest(key=start, range_end=_prefix_end(start),
                                            start_revision=self.start_revision,
                                            progress_notify=True)
            self._requests.put(rpc.WatchRequest(create_request=create))

        def requests() -> Iterator[Any]:
            while True:
                item = self._requests.get()
                if item is None:
                    return
                yield item

        self._call = self.conn.watchstub.Watch(requests(), metadata=self.conn.meta)

    def __iter__(self) -> Iterator[WatchBatch]:
        if self._gateway is not None:
            yield from self._iter_gateway()
            return
        import grpc

        try:
            for rs in self._call:
                if rs.compact_revision:
                    raise Compacted(int(rs.compact_revision))
                if rs.canceled:
                    raise _watch_cancelled(str(rs.cancel_reason))
                events = tuple(
                    WatchEvent(ev.kv.key.decode(),
                               None if ev.type == 1 else ev.kv.value.decode("utf-8", "replace"),
                               ev.kv.mod_revision)
                    for ev in rs.events)
                yield WatchBatch(int(rs.header.revision), events)
        except grpc.RpcError as exc:
            if self._cancelled:
                return
            raise translate_error(exc) from exc

    def _iter_gateway(self) -> Iterator[WatchBatch]:
        from libcalico.etcdgateway import GatewayError, decode_watch_event

        try:
            for rs in self._gateway:
                if int(rs.get("compact_revision") or 0):
                    raise Compacted(int(rs["compact_revision"]))
                if rs.get("canceled"):
                    raise _watch_cancelled(str(rs.get("cancel_reason", "")))
                events = tuple(WatchEvent(*decode_watch_event(ev))
                               for ev in rs.get("events") or ())
                yield WatchBatch(int((rs.get("header") or {}).get("revision") or 0), events)
        except GatewayError as exc:
            if self._cancelled:
                return
            raise translate_error(exc) from exc

    def cancel(self) -> None:
        self._cancelled = True
        if self._gateway is not None:
            self._gateway.cancel()
            return
        self._requests.put(None)
        if self._call is not None:
            self._call.cancel()
