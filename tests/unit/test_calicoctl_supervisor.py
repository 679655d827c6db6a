"""`Supervisor.wait_started`: how a node's start-up wait reads supervisord's states
(a fake that replays scripted states stands in for supervisord's socket)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from calicoctl.errors import CommandFailed
from calicoctl.supervisor import NodePaths, ProgramState, Supervisor


class ScriptedSupervisor(Supervisor):
    """A supervisord whose programs go through the given rounds of states, then stay."""

    def __init__(self, rounds: list[dict[str, str]]) -> None:
        super().__init__(NodePaths(Path("/nonexistent/run"), Path("/nonexistent/log")))
        self.rounds: Iterator[dict[str, str]] = iter(rounds)
        self.last = rounds[0]
        self.asked = 0

    def running(self) -> bool:
        return True

    def programs(self) -> list[ProgramState]:
        self.asked += 1
        self.last = next(self.rounds, self.last)
        return [ProgramState(name, state, 0, "") for name, state in sorted(self.last.items())]


def test_all_running_ends_the_wait_at_once() -> None:
    sup = ScriptedSupervisor([{"felix": "STARTING", "bird": "RUNNING"},
                              {"felix": "RUNNING", "bird": "RUNNING"}])
    states = sup.wait_started(timeout=30)
    assert {s.name: s.state for s in states} == {"felix": "RUNNING", "bird": "RUNNING"}
    assert sup.asked == 2


def test_a_program_failing_for_good_ends_the_wait() -> None:
    sup = ScriptedSupervisor([{"felix": "STARTING"}, {"felix": "FATAL"}])
    assert [s.state for s in sup.wait_started(timeout=30)] == ["FATAL"]


def test_a_crash_loop_caught_while_starting_again_is_reported_as_backoff() -> None:
    # supervisord flips a failing program between BACKOFF and STARTING; the deadline may
    # fall on either, and the report must say it keeps failing.
    sup = ScriptedSupervisor([{"felix": "STARTING"}, {"felix": "BACKOFF"},
                              {"felix": "STARTING"}])
    assert [s.state for s in sup.wait_started(timeout=0.5)] == ["BACKOFF"]


def test_a_slow_start_that_never_failed_stays_starting() -> None:
    sup = ScriptedSupervisor([{"felix": "STARTING"}])
    assert [s.state for s in sup.wait_started(timeout=0.3)] == ["STARTING"]


def test_alive_check_ends_the_wait_with_its_error() -> None:
    sup = ScriptedSupervisor([{"felix": "STARTING"}])

    def gone() -> None:
        raise CommandFailed("container calico-node stopped")

    with pytest.raises(CommandFailed, match="stopped"):
        sup.wait_started(timeout=30, alive=gone)


def test_the_client_speaks_xml_rpc_over_the_unix_socket_with_the_standard_library(
        tmp_path: Path) -> None:
    """`Supervisor` asks supervisord over its unix socket with the standard library's
    XML-RPC client (supervisor's own module would import its HTTP server too, ~40 ms per
    command). A stand-in supervisord answers on a real unix socket; one kept-alive
    connection carries several calls."""
    import socketserver
    import subprocess
    import sys
    import threading
    from xmlrpc.server import SimpleXMLRPCDispatcher, SimpleXMLRPCRequestHandler

    connections = []

    class Handler(SimpleXMLRPCRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as supervisord's server
        disable_nagle_algorithm = False  # no TCP here

        def address_string(self) -> str:
            return "unix"

    class UnixXMLRPCServer(socketserver.ThreadingUnixStreamServer, SimpleXMLRPCDispatcher):
        logRequests = False  # noqa: N815 - SimpleXMLRPCServer's name
        daemon_threads, block_on_close = True, False  # kept-alive connections stay open

        def __init__(self, path: str) -> None:
            SimpleXMLRPCDispatcher.__init__(self, allow_none=True)
            socketserver.ThreadingUnixStreamServer.__init__(self, path, Handler)

        def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
            connections.append(client_address)  # one per connection accepted
            super().process_request(request, client_address)

    class Namespace:
        @staticmethod
        def getState() -> dict:  # noqa: N802 - supervisord's name
            return {"statename": "RUNNING"}

        @staticmethod
        def getAllProcessInfo() -> list:  # noqa: N802
            return [{"name": "felix", "statename": "RUNNING", "pid": 7, "description": "up"},
                    {"name": "bird", "statename": "STARTING", "pid": 8, "description": ""}]

    paths = NodePaths(tmp_path / "run", tmp_path / "log")
    paths.run_dir.mkdir()
    server = UnixXMLRPCServer(str(paths.socket))
    server.register_function(Namespace.getState, "supervisor.getState")
    server.register_function(Namespace.getAllProcessInfo, "supervisor.getAllProcessInfo")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = Supervisor(paths, local=False)
        assert client.running()
        assert client.programs() == [ProgramState("bird", "STARTING", 8, ""),
                                     ProgramState("felix", "RUNNING", 7, "up")]
        proxy = client._proxy()
        for _ in range(3):
            assert proxy.supervisor.getState() == {"statename": "RUNNING"}
        assert len(connections) == 3  # running(), programs(), then one for the proxy's calls
    finally:
        server.shutdown()
        server.server_close()
    code = ("import sys, calicoctl.noderun, calicoctl.supervisor\n"
            "from pathlib import Path\n"
            "calicoctl.supervisor.Supervisor(calicoctl.supervisor.NodePaths(Path('/x'), "
            "Path('/y')), local=False).running()\n"
            "print('supervisor.xmlrpc' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
