"""calicoctl, held still between IPAM assignment and the rest of the command.

Run as `python -m tests.support.paused_calicoctl DIR ARGS...`: runs `calicoctl ARGS` (the
real command, in this process) and, right after each IPAM assignment that got addresses
(`IPAMClient.auto_assign` and `assign_ip`, after their transaction committed), writes the
addresses to DIR/assigned and blocks until a line arrives on the FIFO DIR/go (which it
creates). So a test can act while a `container add` has its address but has not yet
created its interface or written its endpoint - the window in which the address looks
leaked - and then let it finish. The wait is bounded (SIGALRM after 120 s).

Only the IPAM client is patched (the command, the workload plumbing and the endpoint write
are the shipped code), so the hook does not depend on where the plumbing lives.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

MAX_WAIT = 120


def _pause(directory: str, ips: list[str]) -> None:
    go = os.path.join(directory, "go")
    tmp = os.path.join(directory, "assigned.tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(ips) + "\n")
    os.rename(tmp, os.path.join(directory, "assigned"))  # appears complete
    signal.alarm(MAX_WAIT)
    with open(go) as f:  # blocks until the test opens the FIFO for writing
        f.readline()
    signal.alarm(0)


def _after(method: Callable[..., Any], directory: str, addresses: Callable[[Any], list[str]]
           ) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = method(*args, **kwargs)
        ips = addresses(result)
        if ips:
            _pause(directory, ips)
        return result

    return wrapper


def main(argv: list[str]) -> int:
    directory, args = argv[0], argv[1:]
    os.mkfifo(os.path.join(directory, "go"))
    from libcalico.ipam.client import IPAMClient

    IPAMClient.auto_assign = _after(  # type: ignore[method-assign]
        IPAMClient.auto_assign, directory, lambda r: [*r.ipv4s, *r.ipv6s])
    IPAMClient.assign_ip = _after(  # type: ignore[method-assign]
        IPAMClient.assign_ip, directory, lambda r: [r])
    from calicoctl.main import main as calicoctl

    sys.argv = ["calicoctl", *args]
    calicoctl()  # exits with calicoctl's own exit code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
