"""Workload interface plumbing: the veth pair between a host and a workload namespace.

Owns: the host-side interface name (`cali` + the first 11 characters of the endpoint
id), creating the veth pair, moving its workload end into the workload's network
namespace and renaming it, the /32 and /128 addresses, the default routes via the
link-local gateways (169.254.1.1 onlink for IPv4, fe80::1 for IPv6) and a permanent
neighbour entry for each gateway pointing at the host veth's MAC (so the workload
reaches its gateway even when the host has no route to 169.254.1.1 and so never answers
ARP for it). Any failure part-way through `create_interface` deletes what it created.

Leaves to others: addresses (IPAM), the endpoint record (`libcalico.client`), host-side
routes, proxy ARP and policy (felix). Uses pyroute2, imported only here and lazily.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from libcalico.errors import AlreadyExists, CalicoError, NotFound

GATEWAY_V4 = "169.254.1.1"
GATEWAY_V6 = "fe80::1"
HOST_PREFIX = "cali"
_RTNH_F_ONLINK = 4
_NUD_PERMANENT = 0x80
_IFA_F_NODAD = 0x02


class WorkloadError(CalicoError):
    """A netlink operation on a workload interface failed."""


def host_interface_name(endpoint_id: str, prefix: str = HOST_PREFIX) -> str:
    """`cali` + the first 11 characters of the endpoint id (15 characters at most)."""
    if len(prefix) > 4:
        raise ValueError("interface prefix must be at most 4 characters")
    return f"{prefix}{endpoint_id[:11]}"


def netns_path(netns: str) -> str:
    """`/run/netns/x` for a bare name; absolute paths (e.g. /proc/PID/ns/net) as given."""
    return netns if netns.startswith("/") else f"/run/netns/{netns}"


@dataclass(frozen=True)
class WorkloadInterface:
    host_ifname: str
    ifname: str
    mac: str  # the workload side's MAC (the endpoint's `mac`)
    host_mac: str


@contextmanager
def _ipr(netns: str | None) -> Iterator[Any]:
    """An IPRoute socket in `netns` (None: this process's namespace)."""
    from pyroute2 import IPRoute

    ipr = IPRoute() if netns is None else IPRoute(netns=netns_path(netns))
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _mac(ipr: Any, index: int) -> str:
    return str(ipr.get_links(index)[0].get_attr("IFLA_ADDRESS"))


def _netlink(what: str, exc: Exception) -> CalicoError:
    code = getattr(exc, "code", None)
    if code == errno.EEXIST:
        return AlreadyExists(f"{what}: already exists")
    if code in (errno.ENODEV, errno.ENOENT):
        return NotFound(f"{what}: no such device")
    return WorkloadError(f"{what}: {exc}")


def interface_exists(ifname: str, netns: str | None = None) -> bool:
    with _ipr(netns) as ipr:
        return _index(ipr, ifname) is not None


def create_interface(netns: str, host_ifname: str, ifname: str, ips: Sequence[str],
                     host_netns: str | None = None) -> WorkloadInterface:
    """Create the veth pair, move one end into `netns` as `ifname`, configure `ips`.

    On failure everything created is removed again and the error raised.
    """
    path = netns_path(netns)
    if not os.path.exists(path):
        raise NotFound(f"network namespace {netns} does not exist")
    tmp = f"tmp{host_ifname[len(HOST_PREFIX):]}"[:15]
    with _ipr(host_netns) as host:
        try:
            host.link("add", ifname=host_ifname, kind="veth", peer=tmp)
        except Exception as exc:
            raise _netlink(f"interface {host_ifname}", exc) from None
        try:
            index = _index(host, host_ifname)
            assert index is not None
            host_mac = _mac(host, index)
            peer = _index(host, tmp)
            fd = os.open(path, os.O_RDONLY)
            try:
                host.link("set", index=peer, net_ns_fd=fd)
            finally:
                os.close(fd)
            host.link("set", index=index, state="up")
            with _ipr(netns) as ipr:
                peer = _index(ipr, tmp)
                if peer is None:
                    raise WorkloadError(f"interface {tmp} vanished while moving to {netns}")
                if _index(ipr, ifname) is not None:
                    raise AlreadyExists(f"interface {ifname} already exists in {netns}")
                try:
                    ipr.link("set", index=peer, ifname=ifname)
                    ipr.link("set", index=peer, state="up")
                except Exception as exc:
                    raise _netlink(f"interface {ifname} in {netns}", exc) from None
                mac = _mac(ipr, peer)
                _add_addresses(ipr, peer, ips, host_mac)
        except BaseException:
            with contextlib.suppress(Exception):  # the original error matters more
                host.link("del", ifname=host_ifname)
            raise
    return WorkloadInterface(host_ifname, ifname, mac, host_mac)


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _add_addresses(ipr: Any, index: int, ips: Sequence[str], host_mac: str) -> None:
    for ip in ips:
        v6 = ":" in ip
        try:
            if v6:
                ipr.addr("add", index=index, address=ip, prefixlen=128, flags=_IFA_F_NODAD)
            else:
                ipr.addr("add", index=index, address=ip, prefixlen=32)
        except Exception as exc:
            raise _netlink(f"address {ip}", exc) from None
    for v6 in sorted({":" in ip for ip in ips}):
        gateway = GATEWAY_V6 if v6 else GATEWAY_V4
        family = socket.AF_INET6 if v6 else socket.AF_INET
        try:
            ipr.neigh("replace", dst=gateway, lladdr=host_mac, ifindex=index,
                      state=_NUD_PERMANENT, family=family)
            if v6:
                ipr.route("replace", dst="::/0", gateway=gateway, oif=index, family=family)
            else:
                ipr.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=index,
                          flags=_RTNH_F_ONLINK, family=family)
        except Exception as exc:
            raise _netlink(f"gateway {gateway} route/neighbour", exc) from None


def add_addresses(netns: str, ifname: str, ips: Sequence[str], host_ifname: str,
                  host_netns: str | None = None) -> None:
    """Add addresses (with the gateway route and neighbour of their family)."""
    with _ipr(host_netns) as host:
        hidx = _index(host, host_ifname)
        if hidx is None:
            raise NotFound(f"interface {host_ifname} does not exist")
        host_mac = _mac(host, hidx)
    with _ipr(netns) as ipr:
        index = _index(ipr, ifname)
        if index is None:
            raise NotFound(f"interface {ifname} does not exist in {netns}")
        _add_addresses(ipr, index, ips, host_mac)


def remove_addresses(netns: str, ifname: str, ips: Sequence[str]) -> None:
    """Remove addresses; a family's gateway route and neighbour go with its last one."""
    with _ipr(netns) as ipr:
        index = _index(ipr, ifname)
        if index is None:
            raise NotFound(f"interface {ifname} does not exist in {netns}")
        for ip in ips:
            plen = 128 if ":" in ip else 32
            try:
                ipr.addr("del", index=index, address=ip, prefixlen=plen)
            except Exception as exc:
                if getattr(exc, "code", None) not in (errno.EADDRNOTAVAIL, errno.ENOENT):
                    raise _netlink(f"address {ip}", exc) from None
        left = {_family(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(index=index)
                if a.get("scope", 0) == 0}
        for family, gateway, default in ((socket.AF_INET, GATEWAY_V4, "0.0.0.0/0"),
                                         (socket.AF_INET6, GATEWAY_V6, "::/0")):
            if family in left or not any(_family(ip) == family for ip in ips):
                continue
            with contextlib.suppress(Exception):  # already gone is fine
                ipr.route("del", dst=default, oif=index, family=family)
            with contextlib.suppress(Exception):
                ipr.neigh("del", dst=gateway, ifindex=index, family=family)


def delete_interface(host_ifname: str, host_netns: str | None = None) -> bool:
    """Delete the veth pair by its host end; False if it did not exist."""
    with _ipr(host_netns) as host:
        try:
            host.link("del", ifname=host_ifname)
        except Exception as exc:
            if getattr(exc, "code", None) in (errno.ENODEV, errno.ENOENT):
                return False
            raise _netlink(f"interface {host_ifname}", exc) from None
    return True


def workload_addresses(netns: str, ifname: str) -> list[str]:
    """Global addresses on the workload interface (for checks and tests)."""
    with _ipr(netns) as ipr:
        index = _index(ipr, ifname)
        if index is None:
            return []
        return sorted(str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(index=index)
                      if a.get("scope", 0) == 0)
