"""Felix's metrics and health endpoints.

Owns: the Prometheus metrics felix exports (endpoints programmed, apply durations,
resyncs, errors) in a registry of its own, served by prometheus-client's HTTP server
on PrometheusMetricsPort when enabled; and a tiny `http.server` in a thread answering
`GET /liveness` and `GET /readiness` (200 or 503 with a one-line reason) on HealthPort.

Leaves to others: deciding what live and ready mean (`felix.driver` reports
`Health.heartbeat()` and `Health.set_ready()`), everything else.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_log = logging.getLogger(__name__)


class Metrics:
    """The metric objects, in a private registry (tests may create several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.endpoints = Gauge("felix_endpoints_programmed",
                               "Local workload endpoints with programmed chains",
                               registry=self.registry)
        self.apply_seconds = Histogram("felix_apply_seconds",
                                       "Duration of one dataplane apply",
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                2.5, 5, 10, 30),
                                       registry=self.registry)
        self.resyncs = Counter("felix_resyncs", "Periodic dataplane refreshes",
                               registry=self.registry)
        self.errors = Counter("felix_errors", "Dataplane apply errors", ["owner"],
                              registry=self.registry)
        self.datastore_in_sync = Gauge("felix_datastore_in_sync",
                                       "1 when felix follows the datastore in sync",
                                       registry=self.registry)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - metrics port
        start_http_server(port, addr=host, registry=self.registry)
        _log.info("Prometheus metrics on %s:%d", host, port)


class Health:
    """Liveness: the driver loop has run recently. Readiness: in sync and applied."""

    def __init__(self, stale_after: float = 60.0) -> None:
        self.stale_after = stale_after
        self._last_beat = time.monotonic()
        self._ready = False
        self._reason = "starting"
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    def heartbeat(self) -> None:
        self._last_beat = time.monotonic()

    def set_ready(self, ready: bool, reason: str = "") -> None:
        with self._lock:
            self._ready, self._reason = ready, reason

    def live(self) -> tuple[bool, str]:
        age = time.monotonic() - self._last_beat
        if age > self.stale_after:
            return False, f"main loop last ran {age:.0f}s ago"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        with self._lock:
            return self._ready, ("ok" if self._ready else self._reason)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                checks = {"/liveness": health.live, "/readiness": health.ready}
                check = checks.get(self.path.split("?", 1)[0])
                if check is None:
                    self.send_error(404)
                    return
                ok, reason = check()
                body = (reason + "\n").encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                _log.debug("health: " + fmt, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="health",
                         daemon=True).start()
        _log.info("health endpoints on %s:%d", host, port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
