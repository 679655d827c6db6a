"""Per-workload-interface kernel settings, and the watcher that reports interfaces.

Owns:
- `Interfaces`: the desired settings of each workload interface (IPv4: proxy_arp=1,
  neigh proxy_delay=0, rp_filter=1, forwarding=1, route_localnet=1; IPv6: proxy_ndp=1,
  accept_ra=0, forwarding=1, and proxy NDP entries). `apply()` writes the dirty
  interfaces' /proc/sys/net files in one batch on one helper thread that has joined the
  namespace (no process per sysctl; a value already right is not rewritten), plus one
  netlink batch for proxy NDP entries. Missing interfaces are skipped and listed in
  `pending`; `on_interface_update(ifname)` makes them be looked at again. An interface
  whose settings could not be written is listed with the reason in `failures` and
  written again at the next apply.
- `InterfaceWatcher`: a thread on a netlink socket subscribed to RTMGRP_LINK that
  reports interfaces added, up, down and removed through a callback, after an initial
  dump (so the driver learns which interfaces exist and are up). On ENOBUFS (events
  lost) or a failed read it dumps again and reports the differences.

Leaves to others: which interfaces are workloads' (felix.calc), routes and neighbour
entries (routes.py), and what to do on an event (felix.driver).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import selectors
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from felix.dataplane.cmd import DataplaneError
from felix.dataplane.types import InterfaceState
from rtnl.codec import Link, Request, errno_text, neighbour_request
from rtnl.consts import RTM_DELLINK, RTMGRP_LINK
from rtnl.netns import run_in_netns
from rtnl.sock import NetlinkSocket

_log = logging.getLogger(__name__)

_IPV4_SETTINGS = (("ipv4/conf/{}/proxy_arp", "1"), ("ipv4/neigh/{}/proxy_delay", "0"),
                  ("ipv4/conf/{}/rp_filter", "1"), ("ipv4/conf/{}/forwarding", "1"),
                  ("ipv4/conf/{}/route_localnet", "1"))
_IPV6_SETTINGS = (("ipv6/conf/{}/proxy_ndp", "1"), ("ipv6/conf/{}/accept_ra", "0"),
                  ("ipv6/conf/{}/forwarding", "1"))


def interface_sysctls(state: InterfaceState) -> list[tuple[str, str]]:
    """The (/proc/sys/net/... path, value) pairs felix sets on a workload interface."""
    out: list[tuple[str, str]] = []
    if state.ipv4:
        out.extend((f"/proc/sys/net/{p.format(state.ifname)}", v) for p, v in _IPV4_SETTINGS)
    if state.ipv6:
        out.extend((f"/proc/sys/net/{p.format(state.ifname)}", v) for p, v in _IPV6_SETTINGS)
    return out


def _write_sysctls(items: list[tuple[str, list[tuple[str, str]]]]
                   ) -> tuple[set[str], dict[str, str]]:
    """Write settings per interface; return (missing interfaces, interface -> error).

    Reads first and writes only what differs. Plain os.open/os.read (no file objects):
    a refresh checks five settings of every interface, 50,000 files at 10,000 endpoints."""
    missing: set[str] = set()
    errors: dict[str, str] = {}
    for ifname, settings in items:
        for path, value in settings:
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                missing.add(ifname)
                break
            except OSError as exc:
                errors.setdefault(ifname, f"{path}={value}: {exc.strerror}")
                continue
            try:
                if os.read(fd, 64).strip() != value.encode():
                    os.pwrite(fd, value.encode(), 0)
            except OSError as exc:
                errors.setdefault(ifname, f"{path}={value}: {exc.strerror}")
            finally:
                os.close(fd)
    return missing, errors


class Interfaces:
    """Sysctls and proxy NDP entries of workload interfaces in one namespace.

    State fields: `_desired` (ifname -> InterfaceState), `_dirty` (to write next),
    `_pending` (desired but missing), `_failed` (ifname -> why its last write failed,
    until a write succeeds), `_kernel_proxies` ((ifname, ip) -> ifindex of the proxy NDP
    entries felix wrote), `_stale_proxies` (entries to remove).
    """

    def __init__(self, netns: str | None = None, nl: NetlinkSocket | None = None) -> None:
        self.netns = netns
        self._nl = nl
        self._desired: dict[str, InterfaceState] = {}
        self._dirty: set[str] = set()
        self._pending: set[str] = set()
        self._failed: dict[str, str] = {}
        self._kernel_proxies: dict[tuple[str, str], int] = {}
        self._stale_proxies: set[tuple[str, str]] = set()

    def close(self) -> None:
        if self._nl is not None:
            self._nl.close()

    def set_interfaces(self, states: Iterable[InterfaceState]) -> None:
        """Replace the whole desired set of workload interfaces."""
        wanted = {s.ifname: s for s in states}
        for name in [n for n in self._desired if n not in wanted]:
            self.remove_interface(name)
        for state in wanted.values():
            self.set_interface(state)

    def set_interface(self, state: InterfaceState) -> None:
        old = self._desired.get(state.ifname)
        if old == state:
            return
        if old is not None:
            self._stale_proxies.update((old.ifname, ip) for ip in old.proxy_ndp
                                       if ip not in state.proxy_ndp)
        self._desired[state.ifname] = state
        self._dirty.add(state.ifname)

    def remove_interface(self, ifname: str) -> None:
        """Forget an interface (its sysctls go with it; its proxy entries are removed)."""
        old = self._desired.pop(ifname, None)
        if old is not None:
            self._stale_proxies.update((ifname, ip) for ip in old.proxy_ndp)
        self._dirty.discard(ifname)
        self._pending.discard(ifname)
        self._failed.pop(ifname, None)

    def on_interface_update(self, ifname: str) -> None:
        """The interface appeared or changed: write its settings again."""
        if ifname in self._desired:
            self._dirty.add(ifname)

    def mark_resync(self) -> None:
        """Check every interface's settings at the next apply."""
        self._dirty.update(self._desired)

    @property
    def pending(self) -> frozenset[str]:
        return frozenset(self._pending)

    @property
    def failures(self) -> dict[str, str]:
        """Interface -> why its settings or proxy NDP entries failed to apply."""
        return dict(self._failed)

    @property
    def in_sync(self) -> bool:
        return not (self._dirty or self._stale_proxies)

    def apply(self) -> bool:
        """Write dirty interfaces' settings; True if anything was looked at.

        Raises DataplaneError if a write failed for another reason than a missing
        interface (the interface stays dirty and is listed in `failures`).
        """
        if not (self._dirty or self._stale_proxies):
            return False
        names = sorted(self._dirty)
        items = [(n, interface_sysctls(self._desired[n])) for n in names]
        try:
            missing, errors = run_in_netns(self.netns, lambda: _write_sysctls(items))
        except OSError as exc:  # could not even enter the namespace
            self._failed.update((n, f"interfaces: {exc}") for n in names)
            raise
        self._dirty.clear()
        self._pending = (self._pending - set(names)) | missing
        for name in names:
            self._failed.pop(name, None)
        if errors:
            self._dirty.update(errors)
            self._failed.update((n, f"interfaces: sysctl {e}") for n, e in errors.items())
        try:
            self._apply_proxies([n for n in names if n not in missing and n not in errors])
        except OSError as exc:  # rtnl's NetlinkError included
            failed = [n for n in names if self._desired[n].proxy_ndp]
            self._dirty.update(failed)
            self._failed.update((n, f"interfaces: proxy NDP: {exc}") for n in failed)
            raise
        if errors:
            raise DataplaneError(f"{len(errors)} interfaces' sysctl writes failed: "
                                 + "; ".join(list(errors.values())[:5]))
        return True

    def _apply_proxies(self, names: Sequence[str]) -> None:
        wanted = {(n, str(ipaddress.ip_address(ip))) for n in names
                  for ip in self._desired[n].proxy_ndp}
        stale = {k for k in self._stale_proxies if k in self._kernel_proxies} - wanted
        self._stale_proxies.clear()
        if not wanted and not stale:
            return
        if self._nl is None:
            self._nl = NetlinkSocket(self.netns)
        links = self._nl.get_links({k[0] for k in wanted}, detail=False)
        requests: list[Request] = []
        keys: list[tuple[tuple[str, str], int | None]] = []
        for ifname, ip in sorted(wanted):
            if ifname in links:
                requests.append(neighbour_request(ip, None, links[ifname].ifindex, proxy=True))
                keys.append(((ifname, ip), links[ifname].ifindex))
        for key in sorted(stale):
            requests.append(neighbour_request(key[1], None, self._kernel_proxies[key],
                                              delete=True, proxy=True))
            keys.append((key, None))
        for (code, _), (key, index) in zip(self._nl.request_batch(requests), keys, strict=True):
            if index is None:
                self._kernel_proxies.pop(key, None)
            elif code == 0:
                self._kernel_proxies[key] = index
            else:
                self._dirty.add(key[0])
                self._failed[key[0]] = f"interfaces: proxy NDP {key[1]}: {errno_text(code)}"
                _log.warning("proxy NDP entry %s on %s: %s", key[1], key[0], errno_text(code))


@dataclass(frozen=True)
class InterfaceEvent:
    """An interface was "added" (initial dump or new), went "up" or "down", or "removed"."""

    kind: str
    ifname: str
    index: int
    up: bool


class InterfaceWatcher:
    """Reports interface events from a netlink RTMGRP_LINK socket on its own thread.

    `start()` subscribes, dumps the existing interfaces, calls `callback` with an "added"
    event for each (in the caller's thread) and then starts the thread, which calls
    `callback` for every later change. `prefixes` limits reports to matching names.
    `interfaces` is the current view: name -> up. The callback runs on the watcher's
    thread: it must only hand the event to the driver's loop (and must not raise).
    """

    def __init__(self, callback: Callable[[InterfaceEvent], None], netns: str | None = None,
                 prefixes: Sequence[str] | None = None, rcvbuf: int = 8 * 1024 * 1024) -> None:
        self.callback = callback
        self.rcvbuf = rcvbuf
        self.netns = netns
        if isinstance(prefixes, str):
            prefixes = (prefixes,)
        self.prefixes = tuple(prefixes) if prefixes else None
        self._links: dict[int, Link] = {}
        self._events: NetlinkSocket | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self.resyncs = 0

    @property
    def interfaces(self) -> dict[str, bool]:
        links = list(self._links.values())  # one atomic copy: the watcher thread writes
        return {link.name: link.up for link in links if self._wanted(link.name)}

    def _wanted(self, name: str) -> bool:
        return self.prefixes is None or name.startswith(self.prefixes)

    def _emit(self, kind: str, link: Link) -> None:
        if not self._wanted(link.name):
            return
        self.callback(InterfaceEvent(kind, link.name, link.ifindex, link.up))

    def start(self) -> dict[str, bool]:
        self._events = NetlinkSocket(self.netns, groups=RTMGRP_LINK, rcvbuf=self.rcvbuf)
        self._wake_r, self._wake_w = os.pipe()
        self._resync(initial=True)
        self._thread = threading.Thread(target=self._run, name="interface-watcher",
                                        daemon=True)
        self._thread.start()
        return self.interfaces

    def stop(self) -> None:
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join(timeout=10)
            self._thread = None
        if self._events is not None:
            self._events.close()
            self._events = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _resync(self, initial: bool = False) -> None:
        """Dump all links (on a separate socket) and report what differs from our view."""
        dumper = NetlinkSocket(self.netns)
        try:
            fresh = {link.ifindex: link for link in dumper.dump_links(detail=False)}
        finally:
            dumper.close()
        if not initial:
            self.resyncs += 1
            for index, link in list(self._links.items()):
                if index not in fresh or fresh[index].name != link.name:
                    del self._links[index]
                    self._emit("removed", link)
        for link in fresh.values():
            self._on_new(link, force=initial)

    def _on_new(self, link: Link, force: bool = False) -> None:
        old = self._links.get(link.ifindex)
        if old is not None and old.name != link.name:
            self._emit("removed", old)
            old = None
        self._links[link.ifindex] = link
        if old is None or force:
            self._emit("added", link)
        elif old.up != link.up:
            self._emit("up" if link.up else "down", link)

    def _run(self) -> None:
        assert self._events is not None
        sel = selectors.DefaultSelector()
        sel.register(self._events.fileno(), selectors.EVENT_READ, "netlink")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while True:
                for key, _mask in sel.select():
                    if key.data == "wake":
                        return
                    self._read_events()
        finally:
            sel.close()

    def _read_events(self) -> None:
        """Handle one datagram of link events; after lost events (ENOBUFS) or a failed
        read, dump again (and keep trying at the next wake-up if that fails too)."""
        assert self._events is not None
        try:
            events = self._events.recv_link_events(detail=False)
        except OSError as exc:  # rtnl's NetlinkError included (ENOBUFS: events lost)
            _log.warning("interface events lost (%s): dumping again", exc)
            try:
                self._resync()
            except OSError as again:
                _log.error("interface dump failed (%s); the periodic refresh still "
                           "repairs the dataplane", again)
            return
        for msg_type, link in events:
            if msg_type == RTM_DELLINK:
                old = self._links.pop(link.ifindex, None)
                self._emit("removed", old or link)
            else:
                self._on_new(link)
