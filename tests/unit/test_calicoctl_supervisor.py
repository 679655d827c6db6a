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
