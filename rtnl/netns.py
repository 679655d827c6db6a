"""Doing work inside a network namespace without starting a process.

Owns: `netns_path` (a namespace given as a name under /run/netns or as an absolute path
such as /proc/PID/ns/net) and `run_in_netns(netns, fn)`, which runs `fn` on a
short-lived thread that has joined the namespace with setns(2) (which moves only that
thread). Sockets opened there (netlink) stay bound to that namespace after the thread
ends, and /proc/sys/net files opened there are that namespace's. With netns=None `fn`
runs directly, in the process's own namespace.

Leaves to others: what the work is (netlink sockets: `rtnl.sock`; sysctl writes:
felix's interface owner).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from rtnl.consts import CLONE_NEWNET

T = TypeVar("T")


def netns_path(netns: str) -> str:
    """`/run/netns/x` for a bare name; absolute paths (e.g. /proc/PID/ns/net) as given."""
    return netns if netns.startswith("/") else f"/run/netns/{netns}"


@functools.cache
def _libc() -> Any:
    import ctypes  # only when a namespace is entered (~5 ms of a CNI call's start-up)

    return ctypes.CDLL(None, use_errno=True)


def _setns(netns: str) -> None:
    import ctypes

    fd = os.open(netns_path(netns), os.O_RDONLY)
    try:
        if _libc().setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """`fn()` run inside `netns` (None: here); its result, or its error raised here."""
    if netns is None:
        return fn()
    box: dict[str, object] = {}

    def target() -> None:
        try:
            _setns(netns)
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]
