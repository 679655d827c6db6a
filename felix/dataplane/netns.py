"""Doing work inside a named network namespace without starting a process.

Owns: `run_in_netns(netns, fn)`: runs `fn` on a short-lived thread that has joined the
namespace `/run/netns/<netns>` with setns(2) (which only moves that thread). Sockets
opened there (netlink) stay bound to the namespace after the thread ends, and
/proc/sys/net paths opened there are that namespace's. With netns=None `fn` runs
directly, in the process's own namespace (production felix inside its host).

Leaves to others: what the work is (netlink sockets, sysctl writes).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(netns: str) -> str:
    return netns if netns.startswith("/") else f"/run/netns/{netns}"


def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Run `fn()` inside `netns` (None: here) and return its result or raise its error."""
    if netns is None:
        return fn()
    box: dict[str, object] = {}

    def target() -> None:
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]
