"""Network namespaces for tests, benchmarks and the demo: simulated hosts and workloads,
always cleaned up.

Owns: creating uniquely named namespaces (component prefix + random suffix, so engineers
running tests concurrently never collide), running commands inside them, veth pairs
between them, finding and killing the processes left in a namespace (daemonised ones
too), and removing everything created even when a test fails. Only namespaces created
through this module (or recorded by the demo) are ever deleted.

Leaves to others: what runs inside (daemons, iptables, BIRD) and any assertions.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

NETNS_DIR = Path("/run/netns")


def unique_name(prefix: str, max_len: int = 15) -> str:
    """`<prefix>-<4 hex>`, kept within `max_len` (15 = the interface-name limit)."""
    suffix = secrets.token_hex(2)
    return f"{prefix[:max_len - len(suffix) - 1]}-{suffix}"


def run(cmd: Sequence[str], input: str | None = None, check: bool = True  # noqa: A002
        ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), input=input, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


class Namespace:
    """One network namespace this test created (`name`), with loopback up."""

    def __init__(self, prefix: str) -> None:
        self.name = unique_name(prefix, max_len=40)
        run(["ip", "netns", "add", self.name])
        self.created = True
        try:
            self.ip("link", "set", "lo", "up")
        except Exception:
            self.delete()
            raise

    def exec(self, *cmd: str, input: str | None = None,  # noqa: A002
             check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace."""
        return run(["ip", "netns", "exec", self.name, *cmd], input=input, check=check)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["ip", "-n", self.name, *args], check=check)

    def ip_batch(self, lines: Sequence[str]) -> None:
        """Many `ip` commands in one process (`ip -n NS -batch -`)."""
        run(["ip", "-n", self.name, "-batch", "-"], input="\n".join(lines) + "\n")

    def delete(self) -> None:
        if self.created:
            run(["ip", "netns", "del", self.name], check=False)
            self.created = False


@contextmanager
def namespace(prefix: str) -> Iterator[Namespace]:
    """A fresh namespace, deleted (with everything inside) when the block ends."""
    ns = Namespace(prefix)
    try:
        yield ns
    finally:
        ns.delete()


def veth(ns_a: Namespace, name_a: str, ns_b: Namespace | None, name_b: str,
         up: bool = True) -> None:
    """A veth pair `name_a` in ns_a and `name_b` in ns_b (None: also in ns_a)."""
    ns_a.ip("link", "add", name_a, "type", "veth", "peer", "name", name_b)
    if ns_b is not None:
        ns_a.ip("link", "set", name_b, "netns", ns_b.name)
    if up:
        ns_a.ip("link", "set", name_a, "up")
        (ns_b or ns_a).ip("link", "set", name_b, "up")


def namespace_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def namespace_pids(name: str) -> list[int]:
    """The processes whose network namespace is `name` (`ip netns pids`)."""
    if not namespace_exists(name):
        return []
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                         check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def kill_namespace_processes(names: Iterable[str], timeout: float = 10.0) -> int:
    """TERM every process in the namespaces, KILL what is left after `timeout`; returns
    how many there were. Never signals the calling process."""
    names = list(names)
    seen: set[int] = set()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [p for n in names for p in namespace_pids(n) if p != os.getpid()]
        if not pids:
            break
        seen.update(pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(process_alive(p) for p in pids):
            time.sleep(0.05)
    return len(seen)
