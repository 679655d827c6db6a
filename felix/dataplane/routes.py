"""The owner of felix's routes and static neighbour entries.

Owns: the desired felix routes (`proto 80`, metric 0, main table): host routes to local
workloads (/32, /128 via a workload interface, scope link) and, for encapsulated pools,
routes to remote blocks via a gateway (onlink on a tunnel device, or plain) and
blackholes for local blocks; and the permanent neighbour entries (workload IP -> MAC,
remote tunnel address -> VTEP MAC on `vxlan.calico`); what it believes the kernel
holds, a dirty set and the entries waiting for their interface. `apply()`
sends every change as one pipelined netlink batch (`rtnl.sock.NetlinkSocket`):
create-or-replace for missing or wrong routes, delete for felix routes (proto 80) that
are no longer desired. It is idempotent: a delete that finds nothing is done. A route or
neighbour whose interface is missing or down is skipped and listed in `pending`; the
driver calls `on_interface_update(ifname)` (through `Owners`) when the interface
appears or comes up.
A resync (first apply, `mark_resync()`, any netlink failure including ENOBUFS) dumps
links, routes and neighbours once and marks every difference dirty. An entry whose write
failed (the kernel refused it, or the batch never got an answer) is listed with the
reason in `failures` (by interface) until a later apply writes it.

Never touched: routes with another protocol (BIRD's are protocol bird with metric 32, so
the kernel keeps a felix route and a BIRD route to one prefix side by side and neither
replaces or deletes the other), other tables, neighbour entries that are not permanent
or not on an interface with one of `iface_prefixes`.

Leaves to others: which routes exist (felix.calc), interface sysctls (interfaces.py),
watching interfaces (interfaces.InterfaceWatcher), ordering (felix.dataplane.apply).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from felix.dataplane.types import FELIX_ROUTE_PROTO, NeighbourState, RouteState
from libcalico.errors import ValidationError
from rtnl.codec import (
    Link,
    NetlinkError,
    Request,
    errno_text,
    neighbour_request,
    route_request,
)
from rtnl.consts import RT_TABLE_MAIN
from rtnl.sock import NetlinkSocket

_log = logging.getLogger(__name__)

_GONE = (errno.ESRCH, errno.ENOENT, errno.ENODEV)  # delete found nothing: done
_NO_IFACE = (errno.ENODEV, errno.ENETDOWN)  # interface vanished or went down meanwhile

NeighKey = tuple[str, str]  # (ifname, ip)


class RouteValue(NamedTuple):
    """A route as the kernel holds it: device index (0: none, or the kernel's choice for
    a plain gateway route), gateway, blackhole, onlink."""

    oif: int
    gateway: str | None = None
    blackhole: bool = False
    onlink: bool = False

    def satisfies(self, want: RouteValue) -> bool:
        """Whether this kernel route is the desired one (`want.oif` 0 on a gateway route:
        any device)."""
        any_oif = want.oif == 0 and want.gateway is not None
        return ((any_oif or self.oif == want.oif) and self.gateway == want.gateway
                and self.blackhole == want.blackhole and self.onlink == want.onlink)


def route_key(dest: str) -> str:
    """Canonical "address/prefixlen" of a route destination."""
    try:
        net = ipaddress.ip_network(dest, strict=False)
    except ValueError as exc:
        raise ValidationError("route dest", dest, str(exc)) from None
    return f"{net.network_address}/{net.prefixlen}"


class Routes:
    """Felix routes and neighbour entries in one namespace, applied in one netlink batch.

    State fields: `_routes` (key -> RouteState) and `_neighs` ((ifname, ip) -> mac) are
    desired; `_kernel_routes` (key -> RouteValue) and `_kernel_neighs` ((ifname, ip) ->
    (ifindex, mac)) are believed; `_dirty_*` are the keys the next apply looks at;
    `_pending_*` are keys skipped because their interface is missing or down;
    `_failed` are keys whose last write failed (or that a failed apply never reached),
    with the reason, until a later apply writes them.
    """

    def __init__(self, netns: str | None = None, proto: int = FELIX_ROUTE_PROTO,
                 iface_prefixes: Sequence[str] = ("cali",),
                 nl: NetlinkSocket | None = None) -> None:
        self.netns = netns
        self.proto = proto
        self.iface_prefixes = ((iface_prefixes,) if isinstance(iface_prefixes, str)
                               else tuple(iface_prefixes))
        self._nl = nl or NetlinkSocket(netns)
        self._routes: dict[str, RouteState] = {}
        self._neighs: dict[NeighKey, str] = {}
        self._kernel_routes: dict[str, RouteValue] = {}
        self._kernel_neighs: dict[NeighKey, tuple[int, str | None]] = {}
        self._dirty_routes: set[str] = set()
        self._dirty_neighs: set[NeighKey] = set()
        self._pending_routes: set[str] = set()
        self._pending_neighs: set[NeighKey] = set()
        self._failed: dict[Any, str] = {}  # route or neighbour key -> why its write failed
        self._needs_resync = True

    def close(self) -> None:
        self._nl.close()

    # ---- desired state -------------------------------------------------------------

    def set_routes(self, routes: Iterable[RouteState]) -> None:
        """Replace the whole desired set of routes."""
        wanted = {route_key(r.dest): r for r in routes}
        for key in [k for k in self._routes if k not in wanted]:
            self.remove_route(key)
        for key, route in wanted.items():
            self._set_route(key, route)

    def set_route(self, route: RouteState) -> None:
        self._set_route(route_key(route.dest), route)

    def _set_route(self, key: str, route: RouteState) -> None:
        if self._routes.get(key) != route:
            self._routes[key] = route
            self._dirty_routes.add(key)

    def remove_route(self, dest: str) -> None:
        key = route_key(dest)
        if self._routes.pop(key, None) is not None:
            self._dirty_routes.add(key)
            self._pending_routes.discard(key)
            self._failed.pop(key, None)

    def set_neighbours(self, neighbours: Iterable[NeighbourState]) -> None:
        """Replace the whole desired set of permanent neighbour entries."""
        wanted = {(n.ifname, str(ipaddress.ip_address(n.ip))): n.mac.lower()
                  for n in neighbours}
        for key in [k for k in self._neighs if k not in wanted]:
            del self._neighs[key]
            self._dirty_neighs.add(key)
            self._pending_neighs.discard(key)
            self._failed.pop(key, None)
        for key, mac in wanted.items():
            if self._neighs.get(key) != mac:
                self._neighs[key] = mac
                self._dirty_neighs.add(key)

    def on_interface_update(self, ifname: str) -> None:
        """An interface appeared, changed state or vanished: look at its entries again."""
        self._dirty_routes.update(k for k, r in self._routes.items() if r.ifname == ifname)
        self._dirty_neighs.update(k for k in self._neighs if k[0] == ifname)
        self._dirty_neighs.update(k for k in self._kernel_neighs if k[0] == ifname)

    def mark_resync(self) -> None:
        self._needs_resync = True

    @property
    def pending(self) -> frozenset[RouteState]:
        """Desired routes not programmed because their interface is missing or down."""
        return frozenset(self._routes[k] for k in self._pending_routes if k in self._routes)

    @property
    def pending_interfaces(self) -> frozenset[str]:
        names = {self._routes[k].ifname for k in self._pending_routes if k in self._routes}
        return frozenset({n for n in names if n is not None}
                         | {k[0] for k in self._pending_neighs if k in self._neighs})

    @property
    def failures(self) -> dict[str, str]:
        """Interface -> why one of its routes or neighbour entries is not programmed
        (a write failed, or a failed apply never got to it)."""
        out: dict[str, str] = {}
        for key, reason in self._failed.items():
            if isinstance(key, tuple):
                ifname = key[0] if key in self._neighs else None
            else:
                route = self._routes.get(key)
                ifname = route.ifname if route is not None else None
            if ifname is not None:
                out.setdefault(ifname, reason)
        return out

    @property
    def in_sync(self) -> bool:
        return not (self._needs_resync or self._dirty_routes or self._dirty_neighs)

    # ---- apply -----------------------------------------------------------------------

    def apply(self) -> bool:
        """Program every dirty route and neighbour in one netlink batch; True if any sent.

        Raises NetlinkError (an OSError: errno in `code`) if the kernel refused something
        unexpectedly or the conversation failed; the entries concerned are listed in
        `failures` and the next apply resyncs.
        """
        try:
            links = self.resync() if self._needs_resync else None
            if not (self._dirty_routes or self._dirty_neighs):
                return False
            if links is None:
                names = {n for k in self._dirty_routes if k in self._routes
                         and (n := self._routes[k].ifname) is not None}
                names.update(k[0] for k in self._dirty_neighs)
                links = self._nl.get_links(names, detail=False)
        except OSError as exc:  # NetlinkError included
            # Nothing dirty was written: each waits for the next apply (after a resync).
            reason = f"routes: {exc}"
            self._failed.update((k, reason) for k in self._dirty_routes if k in self._routes)
            self._failed.update((k, reason) for k in self._dirty_neighs if k in self._neighs)
            self._needs_resync = True
            raise
        try:
            return self._apply(links)
        except OSError:  # NetlinkError included
            self._needs_resync = True
            raise

    def _apply(self, links: dict[str, Link]) -> bool:
        requests: list[Request] = []
        actions: list[tuple[str, Any, Any]] = []  # (kind, key, new kernel value)
        for key in self._dirty_routes:
            want = self._routes.get(key)
            have = self._kernel_routes.get(key)
            value = self._wanted(want, links) if want is not None else None
            if want is not None and value is None:
                self._pending_routes.add(key)  # its interface is missing or down
            else:
                self._pending_routes.discard(key)
            if value is not None:
                if have is None or not have.satisfies(value):
                    requests.append(route_request(key, proto=self.proto, oif=value.oif,
                                                  gateway=value.gateway, onlink=value.onlink,
                                                  blackhole=value.blackhole))
                    actions.append(("route", key, value))
            elif have is not None:
                requests.append(route_request(key, proto=self.proto, oif=have.oif,
                                              delete=True))
                actions.append(("route", key, None))
        for nkey in self._dirty_neighs:
            ifname, ip = nkey
            mac = self._neighs.get(nkey)
            have_n = self._kernel_neighs.get(nkey)
            link = links.get(ifname)
            usable = link is not None and link.up
            if mac is not None and not usable:
                self._pending_neighs.add(nkey)
            else:
                self._pending_neighs.discard(nkey)
            if mac is not None and link is not None and usable:
                if have_n != (link.ifindex, mac):
                    requests.append(neighbour_request(ip, mac, link.ifindex))
                    actions.append(("neigh", nkey, (link.ifindex, mac)))
            elif have_n is not None:
                requests.append(neighbour_request(ip, None, have_n[0], delete=True))
                actions.append(("neigh", nkey, None))
        if self._failed:  # looked at again: failed only if it fails again below
            for key in self._dirty_routes:
                self._failed.pop(key, None)
            for nkey in self._dirty_neighs:
                self._failed.pop(nkey, None)
        self._dirty_routes.clear()
        self._dirty_neighs.clear()
        if not requests:
            return False
        try:
            results = self._nl.request_batch(requests)
        except OSError as exc:  # NetlinkError included
            reason = f"routes: {exc}"
            self._failed.update((key, reason) for _kind, key, value in actions
                                if value is not None)
            raise
        failures: list[str] = []
        codes: list[int] = []
        for (code, _replies), (kind, key, value) in zip(results, actions, strict=True):
            table: dict[Any, Any] = (self._kernel_routes if kind == "route"
                                     else self._kernel_neighs)
            if code == 0 or (value is None and code in _GONE):
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value
            elif value is not None and code in _NO_IFACE:
                (self._pending_routes if kind == "route" else self._pending_neighs).add(key)
            else:
                what = key if kind == "route" else f"{key[1]} on {key[0]}"
                failure = f"{kind} {what}: {errno_text(code)}"
                failures.append(failure)
                codes.append(code)
                if value is not None:
                    self._failed[key] = f"routes: {failure}"
        if failures:
            raise NetlinkError(codes[0], f"{len(failures)} netlink writes failed: "
                               + "; ".join(failures[:5]))
        return True

    @staticmethod
    def _wanted(want: RouteState, links: dict[str, Link]) -> RouteValue | None:
        """The kernel route `want` needs; None while its interface is missing or down."""
        if want.blackhole:
            return RouteValue(0, None, True, False)
        if want.ifname is None:
            return RouteValue(0, want.gateway, False, False)
        link = links.get(want.ifname)
        if link is None or not link.up:
            return None
        return RouteValue(link.ifindex, want.gateway, False, want.onlink)

    # ---- resync ----------------------------------------------------------------------

    def resync(self) -> dict[str, Link]:
        """Dump links, routes and neighbours; mark every difference dirty; return links."""
        links = {link.name: link for link in self._nl.dump_links(detail=False)}
        by_index = {link.ifindex: link.name for link in links.values()}
        self._kernel_routes = {r.dst: RouteValue(r.oif, r.gateway, r.blackhole, r.onlink)
                               for r in self._nl.dump_routes()
                               if r.proto == self.proto and r.table == RT_TABLE_MAIN}
        self._kernel_neighs = {}
        for n in self._nl.dump_neighbours():
            name = by_index.get(n.ifindex)
            if n.permanent and name is not None and name.startswith(self.iface_prefixes):
                self._kernel_neighs[(name, n.dst)] = (n.ifindex, n.lladdr)
        self._dirty_routes = set(self._routes) | set(self._kernel_routes)
        self._dirty_neighs = set(self._neighs) | set(self._kernel_neighs)
        self._pending_routes.clear()
        self._pending_neighs.clear()
        self._needs_resync = False
        return links
