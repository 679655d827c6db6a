"""The node's supervisord: where its configuration lives, starting it, asking it, stopping it.

Owns:
- `node_image_dir()`: the directory holding `supervisord.conf` and `programs/`, the same
  files the node container image runs (`$CALICO_NODE_IMAGE_DIR`, else the source tree's
  `node-image/`, else `<prefix>/share/calico-node`).
- `NodePaths`: the run directory (sockets, pid files, generated BIRD config) and the log
  directory of one node, and the environment supervisord's configuration reads.
- `Supervisor`: a client of one supervisord over its unix socket (XML-RPC): is it
  running, the programs' states, waiting for them to start, shutting it down. The
  standard library's XML-RPC client over the socket (`_UnixTransport`): supervisor's
  own `supervisor.xmlrpc` imports its HTTP server as well, ~40 ms of CPU per command,
  paid by each of 50 hosts' `node run` (docs/scale.md).

Leaves to others: what the programs are (node-image/programs/*.conf), the datastore
(`calicoctl.nodestart`), the command line (`calicoctl.noderun`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

DEFAULT_RUN_DIR = "/var/run/calico"
DEFAULT_LOG_DIR = "/var/log/calico"
PROGRAMS = ("bird", "confd", "felix")
# supervisord states of a program that will not come up without help.
FAILED_STATES = ("FATAL", "EXITED", "STOPPED", "UNKNOWN")


def _unix_transport(path: str) -> Any:
    """An XML-RPC transport that speaks HTTP over the unix socket at `path`."""
    import http.client
    import socket
    import xmlrpc.client

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                raise
            self.sock = sock

    class UnixTransport(xmlrpc.client.Transport):
        def make_connection(self, host: Any) -> http.client.HTTPConnection:
            known, conn = self._connection
            if conn is None or known != host:  # one kept-alive connection, as the base's
                conn = UnixConnection("localhost", timeout=30)
                self._connection = host, conn
            return conn

    return UnixTransport()


def node_image_dir() -> Path:
    """Where supervisord.conf and programs/ are."""
    candidates = []
    if os.environ.get("CALICO_NODE_IMAGE_DIR"):
        candidates.append(Path(os.environ["CALICO_NODE_IMAGE_DIR"]))
    candidates.append(Path(__file__).resolve().parent.parent / "node-image")
    candidates.append(Path(sys.prefix) / "share" / "calico-node")
    for path in candidates:
        if (path / "supervisord.conf").is_file():
            return path
    from calicoctl.errors import CommandFailed

    raise CommandFailed("cannot find the node's supervisord.conf (looked in "
                        + ", ".join(map(str, candidates)) + "); set CALICO_NODE_IMAGE_DIR")


@dataclass(frozen=True)
class NodePaths:
    run_dir: Path
    log_dir: Path

    @property
    def socket(self) -> Path:
        return self.run_dir / "supervisor.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "supervisord.pid"

    @property
    def bird_config(self) -> Path:
        return self.run_dir / "bird.cfg"

    @property
    def bird_socket(self) -> Path:
        return self.run_dir / "bird.ctl"

    def environment(self, hostname: str, backend: str, base: Mapping[str, str]
                    ) -> dict[str, str]:
        """The environment supervisord and its programs get (see supervisord.conf)."""
        env = dict(base)
        env.update(CALICO_RUN_DIR=str(self.run_dir), CALICO_LOG_DIR=str(self.log_dir),
                   CALICO_PROGRAMS="*.conf" if backend == "bird" else "felix.conf",
                   CALICO_BIN_DIR=os.path.dirname(sys.executable), HOSTNAME=hostname)
        return env


@dataclass(frozen=True)
class ProgramState:
    name: str
    state: str  # supervisord's: RUNNING, STARTING, BACKOFF, FATAL, EXITED, STOPPED...
    pid: int
    description: str


class Supervisor:
    """One node's supervisord, reached through its unix socket.

    `local=False` for a supervisord in another pid namespace (the node container): its
    pid file means nothing here, so only its socket is asked."""

    def __init__(self, paths: NodePaths, local: bool = True) -> None:
        self.paths = paths
        self.local = local

    def _proxy(self) -> Any:
        import xmlrpc.client

        return xmlrpc.client.ServerProxy("http://localhost/RPC2",
                                         transport=_unix_transport(str(self.paths.socket)))

    def pid(self) -> int | None:
        """The pid of the running supervisord, or None. A pid file left by a supervisord
        that ran elsewhere (a node container killed without cleaning up) can name an
        unrelated process here: only a supervisord counts."""
        try:
            pid = int(self.paths.pidfile.read_text().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"supervisord" not in f.read():
                    return None
        except (OSError, ValueError):
            return None
        return pid

    def running(self) -> bool:
        if self.local and self.pid() is None:
            return False
        try:
            return self._proxy().supervisor.getState()["statename"] == "RUNNING"
        except (OSError, Exception):  # noqa: BLE001 - any failure means "not answering"
            return False

    def programs(self) -> list[ProgramState]:
        infos = self._proxy().supervisor.getAllProcessInfo()
        return [ProgramState(i["name"], i["statename"], i["pid"], i["description"])
                for i in sorted(infos, key=lambda i: i["name"])]

    def stop_program(self, name: str) -> None:
        """Stop one program (its stopsignal; supervisord will not restart it)."""
        self._proxy().supervisor.stopProcess(name, True)

    def wait_started(self, timeout: float,
                     alive: Callable[[], None] | None = None) -> list[ProgramState]:
        """Wait until every program is RUNNING or has failed for good; the last states.

        supervisord reports RUNNING only once a program has lived `startsecs`. A program
        that keeps failing to start flips between BACKOFF and STARTING; one seen in
        BACKOFF during the wait and still not RUNNING at the deadline is reported as
        BACKOFF, whichever of the two it was in at that instant. `alive`, when given, is
        called on every round and raises when what hosts supervisord has gone (the
        node container), so the wait ends at once with that error.

        Polls back off from 0.1 s to 1 s: each poll costs supervisord and this process a
        few milliseconds of CPU, and 50 nodes started at once on a loaded machine wait
        long enough for fixed 0.2 s polls to cost more than the programs' own start."""
        from libcalico.retry import Backoff

        deadline = time.monotonic() + timeout
        states: list[ProgramState] = []
        backed_off: set[str] = set()
        backoff = Backoff(0.1, 1.0)
        while True:
            if alive is not None:
                alive()
            if self.running():
                states = self.programs()
                backed_off.update(s.name for s in states if s.state == "BACKOFF")
                if states and all(s.state == "RUNNING" or s.state in FAILED_STATES
                                  for s in states):
                    return states
            now = time.monotonic()
            if now >= deadline:
                break
            time.sleep(min(backoff.next(), deadline - now))
        return [replace(s, state="BACKOFF") if s.state == "STARTING" and s.name in backed_off
                else s for s in states]

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Ask supervisord to stop its programs and exit; True once its pid is gone."""
        pid = self.pid()
        if pid is None:
            return True
        try:
            self._proxy().supervisor.shutdown()
        except Exception:  # noqa: BLE001 - fall back to a signal
            import signal

            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                return True
            time.sleep(0.1)
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False
