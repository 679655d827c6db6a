"""Running dataplane commands (iptables-restore, ipset, sysctl ...) as subprocesses.

Owns: the one place felix starts a process: the optional `ip netns exec NS` prefix, the
xtables lock wait, feeding stdin, a timeout, and turning every failure into a single
exception type, `CommandFailed` (a `DataplaneError`), that carries the command, exit
code, stderr and input.

Leaves to others: what to run (the owners in this package) and retry policy (the
driver, and the owners' own resync after a failure); nothing here parses output.
"""

from __future__ import annotations

import logging
import math
import subprocess
from collections.abc import Sequence

from libcalico.errors import CalicoError

_log = logging.getLogger(__name__)


class DataplaneError(CalicoError):
    """Applying desired state to the kernel failed; the owner resyncs at its next apply."""


class CommandFailed(DataplaneError):
    """A dataplane command exited non-zero (or could not be started, or timed out)."""

    def __init__(self, cmd: Sequence[str], returncode: int, stderr: str,
                 input: str | None = None) -> None:  # noqa: A002 - mirrors subprocess
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr
        self.input = input
        first = stderr.strip().splitlines()[0] if stderr.strip() else "(no stderr)"
        super().__init__(f"{' '.join(self.cmd)} exited {returncode}: {first}")

    def input_line(self, number: int) -> str | None:
        """Line `number` (1-based) of the input, to show which line a restore rejected."""
        if self.input is None:
            return None
        lines = self.input.splitlines()
        return lines[number - 1] if 0 < number <= len(lines) else None


class CommandRunner:
    """Runs commands on the host (netns=None) or inside a named network namespace.

    `lock_wait` is how long iptables commands wait for the xtables lock (`-w`), shared
    with any other program that takes it.
    """

    def __init__(self, netns: str | None = None, lock_wait: float = 10.0,
                 timeout: float = 300.0) -> None:
        self.netns = netns
        self.lock_wait = lock_wait
        self.timeout = timeout

    def lock_args(self) -> list[str]:
        """`-w SECONDS` for iptables/iptables-restore (whole seconds, at least 1)."""
        return ["-w", str(max(1, math.ceil(self.lock_wait)))]

    def full_command(self, cmd: Sequence[str]) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, *cmd]

    def run(self, cmd: Sequence[str], input: str | None = None) -> str:  # noqa: A002
        """Run `cmd`, feeding `input` on stdin; return stdout or raise CommandFailed."""
        full = self.full_command(cmd)
        try:
            proc = subprocess.run(full, input=input, capture_output=True, text=True,
                                  timeout=self.timeout, check=False)
        except FileNotFoundError as exc:
            raise CommandFailed(full, 127, str(exc), input) from exc
        except subprocess.TimeoutExpired as exc:
            raise CommandFailed(full, -1, f"timed out after {self.timeout}s", input) from exc
        if proc.returncode != 0:
            err = CommandFailed(full, proc.returncode, proc.stderr, input)
            _log.warning("%s", err)
            raise err
        return proc.stdout
