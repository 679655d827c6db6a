"""The plugins' HTTP side: JSON over HTTP on one unix socket per plugin name.

Owns: `PluginApp`, the WSGI application of one plugin (one socket): `Plugin.Activate`
names what that socket implements (`calico.sock` a NetworkDriver, `calico-ipam.sock` an
IpamDriver: Docker finds a plugin by its socket's name, so two names need two sockets),
every call of that protocol goes to its handler with the request's JSON, and the answer
goes back as JSON with the plugin content type. A refusal (`PluginError`, or any other
error of ours) is `{"Err": "<one sentence>"}` (IPAM answers carry it as `Error` too, the
field the IPAM protocol reads); a call this plugin does not implement gets 404 with
`{"Err": ...}`, which Docker takes as "not implemented"; a body that is not a JSON object
gets 400. Unexpected exceptions are logged with their traceback and answered in one
line. `serve` runs both applications on waitress (a production WSGI server, threads for
concurrent calls) in one loop until told to stop, and removes the sockets then.

Leaves to others: what each call does (`calico_libnetwork.network`, `.ipam`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from calico_libnetwork.api import CONTENT_TYPE, IPAM_DRIVER, PluginError
from libcalico.errors import CalicoError

_log = logging.getLogger(__name__)

Handler = Callable[[Mapping[str, Any]], dict[str, Any]]
StartResponse = Callable[..., Any]
THREADS = 8  # per socket: Docker makes calls in parallel for containers started together


def one_line(text: str) -> str:
    return " ".join(text.split())


class PluginApp:
    """The WSGI application of one plugin socket."""

    def __init__(self, implements: Iterable[str], calls: Mapping[str, Handler]) -> None:
        self.implements = list(implements)
        self.calls = dict(calls)

    def answer(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer) for a call (pure apart from the handlers)."""
        if path == "Plugin.Activate":
            return 200, {"Implements": self.implements}
        handler = self.calls.get(path)
        if handler is None:
            return 404, {"Err": f"{path} is not implemented by this plugin"}
        try:
            request = json.loads(body) if body.strip() else {}
        except ValueError:
            return 400, {"Err": f"{path}: the request is not JSON"}
        if not isinstance(request, dict):
            return 400, {"Err": f"{path}: the request is not a JSON object"}
        try:
            return 200, handler(request)
        except (PluginError, CalicoError) as exc:
            message = one_line(str(exc))
            _log.warning("%s refused: %s", path, message)
        except Exception as exc:  # noqa: BLE001 - answered in one line, logged in full
            _log.exception("%s failed", path)
            message = one_line(f"{path} failed: {type(exc).__name__}: {exc}")
        error = {"Err": message}
        if path.startswith(f"{IPAM_DRIVER}."):
            error["Error"] = message
        return 200, error

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        path = str(environ.get("PATH_INFO") or "").lstrip("/")
        if environ.get("REQUEST_METHOD") != "POST":
            status, answer = 405, {"Err": "plugin calls are POST requests"}
        else:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length > 0 else b""
            started = time.monotonic()
            status, answer = self.answer(path, body)
            _log.debug("%s %s -> %d %s (%.1f ms)", path, body[:2000], status,
                       json.dumps(answer)[:2000], (time.monotonic() - started) * 1000)
        data = json.dumps(answer).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found",
                  405: "Method Not Allowed"}[status]
        start_response(f"{status} {reason}", [("Content-Type", CONTENT_TYPE),
                                              ("Content-Length", str(len(data)))])
        return [data]


def serve(apps: Mapping[str, PluginApp], stop: threading.Event,
          ready: Callable[[], None] | None = None) -> None:
    """Serve each application on its unix socket (path -> app) until `stop` is set; the
    sockets are removed on the way out. A stale socket file is replaced."""
    from waitress import wasyncore
    from waitress.server import create_server

    socket_map: dict[int, Any] = {}
    servers = []
    try:
        for path, app in apps.items():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            servers.append(create_server(app, map=socket_map, unix_socket=path,
                                         unix_socket_perms="660", threads=THREADS,
                                         ident="calico-libnetwork", asyncore_use_poll=True,
                                         expose_tracebacks=False))
            _log.info("listening on %s", path)
        if ready is not None:
            ready()
        while not stop.is_set():
            wasyncore.loop(timeout=0.5, map=socket_map, use_poll=True, count=1)
    finally:
        for server in servers:
            server.close()
            server.task_dispatcher.shutdown(timeout=10)
        for path in apps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
